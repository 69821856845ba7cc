"""The transport interface: how flowmesh moves messages between app IDs.

Implementations: :mod:`flowmesh.transport.memory` (in process, for the embedded backend and
fast tests) and :mod:`flowmesh.transport.rabbitmq` (aio-pika). Both pass the same contract
suite in ``tests/contract``.

Topology per app ID (names from :func:`queue_name`):

* ``fm.<app>.work``  - tasks for the app: workflow starts and activity tasks.
* ``fm.<app>.reply`` - everything that advances or inspects workflows the app hosts.
* ``fm.<app>.dead``  - messages that could not be decoded or processed, with the reason.

Messages are durable; a delivery is settled exactly once with ``ack``, ``requeue`` or
``dead_letter``; a delivery left unsettled when its consumer goes away is redelivered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from flowmesh._errors import FlowmeshError


class QueueKind(StrEnum):
    """The queues every app ID owns."""

    WORK = "work"
    REPLY = "reply"
    DEAD = "dead"
    QUARANTINE = "quarantine"
    """Activity tasks that were in flight when a worker died, run one at a time per replica
    so a poison task cannot take innocent tasks down with it."""


def queue_name(app_id: str, kind: QueueKind) -> str:
    """The broker queue name for ``app_id``'s ``kind`` queue, e.g. ``fm.payments.work``."""
    return f"fm.{app_id}.{kind.value}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish durably to ``app_id``'s ``kind`` queue.

    ``reply_to``/``correlation_id`` ask the receiver to answer on an :class:`Inbox`;
    ``answer_within`` says how many seconds the sender waits for that answer, so a receiver
    that gets to the message later does not send an answer nobody reads. ``attempt`` counts
    how often flowmesh has tried to process this message (a receiver republishing a message
    it could not process yet sends it on with ``delivery.attempt + 1``; see
    :attr:`Delivery.attempt`). The transport adds the sender's identity (``user_id``) itself.
    """

    app_id: str
    kind: QueueKind
    body: bytes
    message_id: str = ""
    reply_to: str = ""
    correlation_id: str = ""
    answer_within: float | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Depth and consumers (replicas) of one app's queues."""

    app_id: str
    work_messages: int
    work_consumers: int
    reply_messages: int
    reply_consumers: int
    dead_messages: int
    quarantine_messages: int = 0


class Delivery(Protocol):
    """One received message. Settle it exactly once."""

    @property
    def body(self) -> bytes:
        """The raw message bytes."""

    @property
    def message_id(self) -> str:
        """The publisher's message ID ('' if none)."""

    @property
    def reply_to(self) -> str:
        """Inbox address to answer on ('' if none)."""

    @property
    def correlation_id(self) -> str:
        """Correlation ID to answer with ('' if none)."""

    @property
    def answer_by(self) -> float:
        """Wall-clock time (epoch seconds) after which the sender no longer waits for an
        answer, or 0.0 if it did not say. Pass it to :meth:`Transport.send_reply`."""

    @property
    def delivery_count(self) -> int:
        """1 on first delivery, incremented on each redelivery (poison-message detection)."""

    @property
    def attempt(self) -> int:
        """1 + how often flowmesh republished this message because it could not process it
        yet (the ``x-flowmesh-attempt`` header; 1 without it).

        Unlike :attr:`delivery_count`, which the broker keeps and which starts again at 1 for
        a republished message, this survives the republishing that replaces requeue loops,
        so retry delays can grow with it.
        """

    @property
    def user_id(self) -> str:
        """The sender's broker user, verified by the broker ('' if the message has none).

        RabbitMQ refuses a message whose ``user_id`` differs from the publishing
        connection's user, so this identifies the sender (see ``docs/security-model.md``).
        """

    async def ack(self) -> None:
        """The message's effect is durable: remove it from the queue."""

    async def requeue(self) -> None:
        """Give the message back to the queue for another attempt."""


Handler = Callable[[Delivery], Awaitable[None]]
"""Called once per delivery; must settle it (ack, requeue or dead_letter)."""


class Subscription(Protocol):
    """A running consumer."""

    async def cancel(self) -> None:
        """Stop receiving; deliveries not yet settled are returned to the queue."""


class Inbox(Protocol):
    """A private, non-durable queue for request/reply (client answers)."""

    @property
    def address(self) -> str:
        """Pass as ``reply_to`` so receivers can answer here."""

    def expecting(self, correlation_id: str) -> AbstractContextManager[None]:
        """Within the block, answers carrying ``correlation_id`` are kept until received.

        Enter it before publishing a request: its answer may arrive before the publish is
        confirmed. Other answers are kept only up to a bound, oldest dropped first.
        """

    async def receive(
        self, correlation_id: str, timeout: float, *, sender: str = ""
    ) -> bytes | None:
        """The next answer carrying ``correlation_id``, or None after ``timeout`` seconds.

        With ``sender`` (a broker user name), answers that another user sent are dropped:
        every hosting app may write to every inbox, so only the user of the app that was
        asked may answer (see ``docs/security-model.md``).
        """

    async def close(self) -> None:
        """Delete the inbox."""


class Transport(Protocol):
    """Durable per-app queues with confirmed publishing."""

    async def declare_app(self, app_id: str) -> None:
        """Create ``app_id``'s work, reply and dead queues if missing (idempotent)."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistently and return once the broker confirmed every message.

        Declares target queues first, so work for an app that is not deployed yet waits in
        its queue. Raises :class:`~flowmesh.PublishTimeoutError` or
        :class:`~flowmesh.UnroutableError`; a message may then have been delivered or not,
        so callers retry and receivers deduplicate.
        """

    async def publish_each(self, messages: Sequence[Outgoing]) -> list[FlowmeshError | None]:
        """Publish like :meth:`publish`, but give every message its own outcome.

        Returns one entry per message, in order: None once the broker confirmed it, else why
        it failed (too large, a target the broker refuses or cannot route, no confirm in
        time). One failing message never fails its siblings, so a caller can forget what
        was confirmed and retry only the rest. Raises only for cancellation or a transport
        that is not connected.
        """

    async def send_reply(
        self, address: str, correlation_id: str, body: bytes, *, answer_by: float = 0.0
    ) -> None:
        """Best-effort answer to an :class:`Inbox`; silently dropped if it no longer exists,
        or if ``answer_by`` (a request's :attr:`Delivery.answer_by`) has passed: the sender
        stopped waiting, and under a backlog those late answers would only add load."""

    async def consume(
        self, app_id: str, kind: QueueKind, handler: Handler, *, prefetch: int
    ) -> Subscription:
        """Deliver messages from ``app_id``'s ``kind`` queue to ``handler``.

        At most ``prefetch`` deliveries are unsettled at once. Consumers are restored by the
        transport after a connection loss.
        """

    async def dead_letter(self, delivery: Delivery, app_id: str, reason: str) -> None:
        """Move ``delivery`` to ``app_id``'s dead queue with ``reason``, then settle it."""

    async def open_inbox(self) -> Inbox:
        """Create a private inbox for answers."""

    async def queue_stats(self, app_id: str) -> QueueStats:
        """Depth and consumer counts of ``app_id``'s queues (zeros if not declared)."""

    async def close(self) -> None:
        """Close connections; unsettled deliveries are returned to their queues."""
