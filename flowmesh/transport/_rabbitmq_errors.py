"""The RabbitMQ transport's one error boundary: aio-pika, aiormq and socket errors become
flowmesh errors here, and nowhere else.

Every broker call of the transport runs inside a :class:`Translating` block, which raises the
flowmesh error ``from`` the library's, so the cause stays inspectable. Code that decides
something by what the broker said (fall back to the security plan's topology on a refusal,
read a missing queue as empty) catches the flowmesh error and asks :func:`refused`,
:func:`missing` or :func:`took_channel_down` about it, instead of catching library types::

    TimeoutError                   PublishTimeoutError  inside a publish (``timeout=`` given)
                                   TransportError       elsewhere
    aiormq PublishError            UnroutableError      a mandatory message came back
    aiormq DeliveryError           TransportError       a Basic.Nack
    ChannelAccessRefused           TransportError       ACCESS_REFUSED, naming the user
    ChannelPreconditionFailed      ConfigurationError   declaring flowmesh's topology
                                   TransportError       elsewhere
    ChannelNotFoundEntity          ConfigurationError   declaring flowmesh's topology
                                   TransportError       elsewhere
    other AMQPError, aiormq's ChannelInvalidStateError, OSError
                                   TransportError

Errors already flowmesh's pass through unchanged, so blocks nest: an inner block names the
queue that failed, an outer one catches the timeout that bounds them all.
"""

from __future__ import annotations

from types import TracebackType

import aiormq.exceptions

from flowmesh._errors import (
    ConfigurationError,
    FlowmeshError,
    PublishTimeoutError,
    TransportError,
    UnroutableError,
)
from flowmesh.transport._rabbitmq_consumer import BROKER_ERRORS, describe

FAILURES: tuple[type[Exception], ...] = (TimeoutError, *BROKER_ERRORS)
"""A broker call failed or did not finish in time: what :class:`Translating` translates."""


class Translating:
    """A context manager that raises the flowmesh error for a broker error in its block.

    ``action`` completes "cannot ...", e.g. ``"consume 'fm.orders.work'"``. ``user_id``
    (the RabbitMQ user) is named in refusals. With ``timeout`` (why a timeout matters, e.g.
    ``"no publisher confirm within 10.0s"``) the block publishes and a timeout is a
    :class:`~flowmesh.PublishTimeoutError`. With ``topology`` the block declares flowmesh's
    own exchanges or queues, so a mismatch or a missing one is a
    :class:`~flowmesh.ConfigurationError`: retrying cannot fix it.

    A class rather than a ``@contextmanager`` generator, and holding no state between uses:
    the publisher keeps one per target and enters it for every message (a generator-based
    one would cost about a microsecond per message).
    """

    __slots__ = ("_action", "_timeout", "_topology", "_user")

    def __init__(
        self, action: str, *, user_id: str | None, timeout: str = "", topology: bool = False
    ) -> None:
        self._action = action
        self._user = user_id or "?"
        self._timeout = timeout
        self._topology = topology

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, FAILURES):  # never a FlowmeshError: those pass through
            raise self.translate(exc) from exc

    def translate(self, exc: Exception) -> FlowmeshError:
        """The flowmesh error for ``exc`` (see the table in the module's docstring)."""
        cannot = f"cannot {self._action}"
        match exc:
            case TimeoutError() if self._timeout:  # an OSError too: matched before those
                return PublishTimeoutError(f"{cannot}: {self._timeout}")
            case aiormq.exceptions.PublishError():  # a DeliveryError too: matched first
                return UnroutableError(
                    f"{cannot}: RabbitMQ could not route the message, no queue is bound for "
                    "its routing key (apply the security plan, or start the app once with a "
                    "user that may declare its queues)"
                )
            case aiormq.exceptions.DeliveryError():
                return TransportError(f"{cannot}: RabbitMQ refused the message (nack)")
            case aiormq.exceptions.ChannelAccessRefused():
                return TransportError(
                    f"{cannot}: RabbitMQ user {self._user!r} lacks the permission "
                    f"(ACCESS_REFUSED): {describe(exc)}"
                )
            case aiormq.exceptions.ChannelPreconditionFailed() if self._topology:
                return ConfigurationError(
                    f"{cannot}: it exists with other settings than flowmesh's; delete or "
                    f"migrate it (PRECONDITION_FAILED): {describe(exc)}"
                )
            case aiormq.exceptions.ChannelPreconditionFailed():
                return TransportError(
                    f"{cannot}: RabbitMQ refused it (PRECONDITION_FAILED, e.g. a message whose "
                    f"user_id is not the connection's user): {describe(exc)}"
                )
            case aiormq.exceptions.ChannelNotFoundEntity() if self._topology:
                return ConfigurationError(
                    f"{cannot}: it does not exist and RabbitMQ user {self._user!r} may not "
                    f"declare it: apply the security plan first (flowmesh security apply): "
                    f"{describe(exc)}"
                )
            case aiormq.exceptions.ChannelNotFoundEntity():
                return TransportError(
                    f"{cannot}: it does not exist (NOT_FOUND) and this RabbitMQ user may not "
                    "declare it; apply the security plan (flowmesh security apply): "
                    f"{describe(exc)}"
                )
            case _:
                return TransportError(f"{cannot}: {describe(exc)}")


def refused(error: BaseException | None) -> bool:
    """Whether ``error`` came from an ACCESS_REFUSED: the user lacks the permission."""
    cause = error.__cause__ if error is not None else None
    return isinstance(cause, aiormq.exceptions.ChannelAccessRefused)


def missing(error: BaseException | None) -> bool:
    """Whether ``error`` came from a NOT_FOUND: no such queue or exchange."""
    cause = error.__cause__ if error is not None else None
    return isinstance(cause, aiormq.exceptions.ChannelNotFoundEntity)


def took_channel_down(error: BaseException | None) -> bool:
    """Whether ``error`` came from its channel closing (a refusal of any message in flight on
    it), rather than from something of its own."""
    cause = error.__cause__ if error is not None else None
    return isinstance(
        cause, aiormq.exceptions.ChannelClosed | aiormq.exceptions.ChannelInvalidStateError
    )


def connection_lost(error: BaseException | None) -> bool:
    """Whether ``error`` came from losing the connection (the node died, the network broke):
    a publish that failed so was not confirmed, and may succeed on a new connection."""
    cause = error.__cause__ if error is not None else None
    return isinstance(cause, ConnectionError)  # aiormq's AMQPConnectionError is one


__all__ = [
    "FAILURES",
    "Translating",
    "connection_lost",
    "missing",
    "refused",
    "took_channel_down",
]
