"""Declaring the broker topology the RabbitMQ transport uses (names and arguments in
:mod:`flowmesh.transport._rabbitmq_topology`).

With full permissions (development) the transport declares the exchanges, the target app's
queues and their bindings itself, so work for an app that never ran waits in its queue. A
restricted user (``flowmesh security plan``) may not: where RabbitMQ refuses a declaration
(ACCESS_REFUSED) the transport relies on the topology the plan declared.
"""

from __future__ import annotations

import asyncio
import re
from typing import NamedTuple

import aio_pika
import structlog
from aio_pika.abc import FieldValue

from flowmesh._errors import ConfigurationError, TransportError
from flowmesh.transport._base import QueueKind, queue_name
from flowmesh.transport._rabbitmq_config import RabbitMQConfig
from flowmesh.transport._rabbitmq_consumer import describe
from flowmesh.transport._rabbitmq_errors import Translating, missing, refused
from flowmesh.transport._rabbitmq_link import Link, plain_channel
from flowmesh.transport._rabbitmq_topology import (
    APPS_EXCHANGE,
    EXCHANGES,
    LEGACY_QUEUE_ARGUMENTS,
    queue_arguments,
    redelivery_policy,
    routing_key,
)

log = structlog.get_logger("flowmesh.transport")

_EXCHANGES = " and ".join(repr(name) for name in EXCHANGES)

GROUP_SIZE = "x-quorum-initial-group-size"

_CURRENT_SIZE = re.compile(
    r"inequivalent arg 'x-quorum-initial-group-size'.*\bcurrent is "
    r"(?:none\b|(?:the value )?'(?P<size>\d+)')"
)


class ExistingSize(NamedTuple):
    """The group size an existing queue was created with (None: none given)."""

    size: int | None


def with_group_size(arguments: dict[str, FieldValue], size: int | None) -> dict[str, FieldValue]:
    """``arguments`` with ``x-quorum-initial-group-size`` set to ``size`` (left out for None)."""
    result = {k: v for k, v in arguments.items() if k != GROUP_SIZE}
    if size is not None:
        result[GROUP_SIZE] = size
    return result


def existing_group_size(error: BaseException) -> ExistingSize | None:
    """The group size of the existing queue, if ``error`` is RabbitMQ refusing a declaration
    only because it names another ``x-quorum-initial-group-size`` (PRECONDITION_FAILED:
    "inequivalent arg 'x-quorum-initial-group-size' ... current is '2'" or "... current is
    none"); None for any other error.

    Reading the refusal is the only way AMQP offers to learn a queue's arguments. A misread
    is harmless: the declaration with the size read back must still match exactly.
    """
    match = _CURRENT_SIZE.search(describe(error.__cause__ or error))
    if match is None:
        return None
    return ExistingSize(int(match["size"]) if match["size"] else None)


class Declarations:
    """What one transport declared, found declared, or may not declare.

    The constructor does no I/O; every method takes the open :class:`Link`.
    """

    def __init__(self, config: RabbitMQConfig, user_id: str | None) -> None:
        self._timeout = config.operation_timeout
        self._group_size = config.group_size
        self._user_id = user_id
        self._declared: set[str] = set()
        self._arguments: dict[str, dict[str, FieldValue]] = {}
        """Queue name -> the arguments it was found declared with (version 2 or legacy)."""
        self._predeclared: set[str] = set()
        """Apps whose queues this user may not declare: consumed with passive declarations."""
        self._lock = asyncio.Lock()

    def declared(self, app_id: str) -> bool:
        """Whether ``app_id``'s queues were declared (or found declared by the plan)."""
        return app_id in self._declared

    def redeclarable(self, app_id: str) -> bool:
        """Whether this transport declared ``app_id``'s queues itself, so that it may declare
        them again if they were deleted (apps the security plan declared are left to it)."""
        return app_id in self._declared and app_id not in self._predeclared

    def forget(self, app_id: str) -> None:
        """Declare ``app_id``'s queues again on the next :meth:`app` (they were deleted)."""
        self._declared.discard(app_id)

    def consume_arguments(self, app_id: str, kind: QueueKind) -> dict[str, FieldValue] | None:
        """The arguments to declare ``app_id``'s ``kind`` queue with before consuming it, or
        None where this user may not declare it (declare it passively: the plan did)."""
        if app_id in self._predeclared:
            return None
        name = queue_name(app_id, kind)
        return self._arguments.get(name) or with_group_size(
            dict(queue_arguments(app_id, kind)), self._group_size
        )

    async def exchanges(self, link: Link) -> None:
        """Declare ``fm.apps`` and ``fm.inbox``, or check they exist if this user may not."""
        try:
            with self._translating(
                f"declare the exchanges {_EXCHANGES} (durable topic exchanges)", topology=True
            ):
                async with (
                    asyncio.timeout(self._timeout),
                    plain_channel(link.publish, self._timeout) as channel,
                ):
                    for name in EXCHANGES:
                        await channel.declare_exchange(
                            name, aio_pika.ExchangeType.TOPIC, durable=True
                        )
            return
        except TransportError as exc:
            if not refused(exc):
                raise
            # A restricted user: the security plan declares the exchanges.
        with self._translating(f"find the exchanges {_EXCHANGES}", topology=True):
            async with (
                asyncio.timeout(self._timeout),
                plain_channel(link.publish, self._timeout) as channel,
            ):
                for name in EXCHANGES:
                    await channel.declare_exchange(name, passive=True)

    async def app(self, link: Link, app_id: str, *, required: bool = False) -> None:
        """Declare ``app_id``'s queues and bind them to ``fm.apps`` (once per transport);
        see :meth:`~flowmesh.transport.rabbitmq.RabbitMQTransport.declare_app`."""
        if app_id in self._declared and not required:
            return
        async with self._lock:
            if app_id in self._declared:
                return
            name, binding = "", False
            try:
                with self._translating(f"declare the queues of app {app_id!r}"):
                    async with asyncio.timeout(self._timeout):
                        for kind in QueueKind:
                            name = queue_name(app_id, kind)
                            await self._declare_queue(link, app_id, kind)
                        binding = True
                        async with plain_channel(link.publish, self._timeout) as channel:
                            for kind in QueueKind:
                                name = queue_name(app_id, kind)
                                with self._translating(f"bind queue {name!r}"):
                                    queue = await channel.get_queue(name, ensure=False)
                                    await queue.bind(APPS_EXCHANGE, routing_key(app_id, kind))
            except TransportError as exc:
                if not refused(exc):
                    raise
                self._rely_on_plan(app_id, name, binding=binding, required=required, error=exc)
            self._declared.add(app_id)

    def _rely_on_plan(
        self, app_id: str, name: str, *, binding: bool, required: bool, error: TransportError
    ) -> None:
        """RabbitMQ refused to declare or bind ``name``: rely on the security plan, or fail
        for an administrator applying the plan (``required``)."""
        action, cause = ("bind" if binding else "declare"), error.__cause__ or error
        if required:
            raise ConfigurationError(
                f"RabbitMQ user {self._user_id or '?'!r} may not {action} queue {name!r}: "
                f"{describe(cause)}"
            ) from cause
        # Least privilege: the security plan declared what this user may not.
        if not binding:
            self._predeclared.add(app_id)
        log.info(
            "transport.declare_refused",
            app_id=app_id,
            action=action,
            queue=name,
            detail=describe(cause),
            relying_on="the queues and bindings the security plan declared",
        )

    async def _declare_queue(self, link: Link, app_id: str, kind: QueueKind) -> None:
        """Declare one queue with the version-2 arguments, or find it declared with the
        version-1 ones (on a fresh channel: the refusal closed the first).

        New queues get the configured replication factor (``x-quorum-initial-group-size``).
        RabbitMQ compares it on every declaration although it only matters at creation, so a
        queue created with another size (or none) is declared again with the size it has,
        which the refusal names (:func:`existing_group_size`).
        """
        name = queue_name(app_id, kind)
        wanted: dict[str, FieldValue] = dict(queue_arguments(app_id, kind))
        legacy: dict[str, FieldValue] = dict(LEGACY_QUEUE_ARGUMENTS)
        candidates = (wanted, legacy) if wanted != legacy else (wanted,)
        action = f"declare queue {name!r} as a durable quorum queue with arguments " + " or ".join(
            str(arguments) for arguments in candidates
        )
        for base in candidates:
            try:
                arguments = await self._declare_sized(link, name, base, action)
            except ConfigurationError:
                if base is candidates[-1]:
                    raise  # declared with arguments of neither version
                continue
            self._arguments[name] = arguments
            if base is legacy and wanted != legacy:
                policy = redelivery_policy(app_id)
                log.warning(
                    "transport.queue_without_delivery_limit",
                    queue=name,
                    detail="declared by an older flowmesh without a delivery limit and "
                    "dead-letter target; it is used as it is. Give it the same limit with "
                    "the policy (flowmesh security apply sets it):",
                    policy=f"rabbitmqctl {' '.join(policy.rabbitmqctl('<vhost>'))}",
                )
            return

    async def _declare_sized(
        self, link: Link, name: str, base: dict[str, FieldValue], action: str
    ) -> dict[str, FieldValue]:
        """Declare ``name`` with ``base`` and this transport's group size; if the queue exists
        with another group size (or none), with ``base`` and that one. Returns the arguments
        RabbitMQ accepted."""
        arguments = with_group_size(base, self._group_size)
        try:
            await self._declare_plain(link, name, arguments, action)
        except ConfigurationError as exc:
            existing = existing_group_size(exc)
            if existing is None:
                raise
            arguments = with_group_size(base, existing.size)
            await self._declare_plain(link, name, arguments, action)
            log.info(
                "transport.queue_group_size_kept",
                queue=name,
                group_size=existing.size or "broker default",
                configured=self._group_size or "broker default",
                detail="x-quorum-initial-group-size only applies when a queue is created",
            )
        return arguments

    async def _declare_plain(
        self, link: Link, name: str, arguments: dict[str, FieldValue], action: str
    ) -> None:
        with self._translating(action, topology=True):
            async with plain_channel(link.publish, self._timeout) as channel:
                await channel.declare_queue(name, durable=True, arguments=arguments)

    async def queue_counts(self, link: Link, name: str) -> tuple[int, int]:
        """Ready messages and consumers of queue ``name`` (zeros if it does not exist)."""
        try:
            with self._translating(f"read the stats of {name!r}"):
                async with (
                    asyncio.timeout(self._timeout),
                    plain_channel(link.publish, self._timeout) as channel,
                ):
                    queue = await channel.declare_queue(name, passive=True)
        except TransportError as exc:
            if missing(exc):
                return 0, 0
            raise
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0

    def _translating(self, action: str, *, topology: bool = False) -> Translating:
        return Translating(action, user_id=self._user_id, topology=topology)


__all__ = ["GROUP_SIZE", "Declarations", "existing_group_size", "with_group_size"]
