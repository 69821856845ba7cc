"""RabbitMQ transport on aio-pika.

::

    transport = RabbitMQTransport(RabbitMQConfig(url="amqp://guest:guest@localhost/"))
    async with transport:            # or: await transport.connect() ... await transport.close()
        await transport.publish([Outgoing("payments", QueueKind.WORK, body, message_id="m-1")])

Two robust connections: one publishes (publisher confirms, ``mandatory``), one consumes, so
flow control that blocks a publishing connection cannot stall consumers' acks, and the
reverse. Every app's work, reply and dead queues are durable quorum queues; their
``x-delivery-count`` header gives :attr:`Delivery.delivery_count`.

Routing and least privilege (see :mod:`flowmesh.transport._rabbitmq_topology` and
``docs/security-model.md``): messages go through the topic exchange ``fm.apps`` with routing
key ``<app>.<kind>``, answers through ``fm.inbox``, never through the default exchange. With
full permissions (development) the transport declares the exchanges, the target app's queues
and their bindings itself, so work for an app that never ran waits in its queue. A restricted
user (``flowmesh security plan``) may not: where RabbitMQ refuses a declaration
(ACCESS_REFUSED) the transport relies on the topology the plan declared, and a publish for
which no queue is bound fails as unroutable instead of being lost.

Every message carries the AMQP ``user_id`` property (the URL's user name). RabbitMQ refuses a
message whose ``user_id`` is not the connection's user, so a receiver can trust it as the
sender's identity (:attr:`RabbitDelivery.user_id`).

TLS: an ``amqps://`` URL, with :class:`~flowmesh.security.TLSConfig` for the CA, the client
certificate and whether to verify (on by default; turning it off is logged as a warning).

Pitfalls of aio-pika/RabbitMQ defaults this module deals with:

* A returned (unroutable) mandatory message is *confirmed* by RabbitMQ. aio-pika raises for
  it only on a channel opened with ``on_return_raises=True``; otherwise ``publish`` returns
  the returned message as if all went well.
* aiormq matches a return to its publish by ``message_id``: every message gets one, and two
  publishes with the same ID are never in flight at once on the confirming channel.
* Publishing waits forever by default, including for a robust connection that is
  reconnecting: every broker call here runs under a timeout.
* A broker error on a channel (404 on a passive declare, PRECONDITION_FAILED) closes it, and a
  robust channel would then reopen itself: declarations and passive declares use short-lived
  plain channels.
* A message larger than the broker's ``max_message_size`` closes the publishing channel and
  fails every publish in flight on it: sizes are checked before anything is sent.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import aio_pika
import aio_pika.exceptions
import aiormq
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractRobustChannel,
    AbstractRobustConnection,
    FieldValue,
    HeadersType,
)
from aiormq import spec

from flowmesh._errors import (
    ConfigurationError,
    FlowmeshError,
    PublishTimeoutError,
    TransportError,
    UnroutableError,
)
from flowmesh._masking import mask_secrets
from flowmesh._tls import TLSConfig
from flowmesh.transport._base import (
    Delivery,
    Handler,
    Inbox,
    Outgoing,
    QueueKind,
    QueueStats,
    Subscription,
    queue_name,
)
from flowmesh.transport._common import answer_deadline, answer_is_late
from flowmesh.transport._rabbitmq_answers import (
    ANSWERS_TYPE,
    Answer,
    AnswerBatcher,
    chunks,
    pack_answers,
)
from flowmesh.transport._rabbitmq_consumer import (
    ANSWER_BY_HEADER,
    ATTEMPT_HEADER,
    BROKER_ERRORS,
    RabbitDelivery,
    RabbitSubscription,
    describe,
)
from flowmesh.transport._rabbitmq_inbox import RabbitInbox, is_inbox_address
from flowmesh.transport._rabbitmq_topology import (
    APPS_EXCHANGE,
    EXCHANGES,
    INBOX_EXCHANGE,
    LEGACY_QUEUE_ARGUMENTS,
    queue_arguments,
    redelivery_policy,
    routing_key,
)
from flowmesh.transport._rabbitmq_writes import connect_buffered

__all__ = ["RabbitMQConfig", "RabbitMQTransport"]


log = structlog.get_logger("flowmesh.transport")

CONTENT_TYPE = "application/x-msgpack"

_PERSISTENT = 2
_NOT_PERSISTENT = 1
"""AMQP ``delivery_mode`` values."""

_ANSWERS_FRAME_BYTES = 64 * 1024
"""Answers batched into one message stay under this size (a lone larger answer goes alone)."""

_FAILURES: tuple[type[Exception], ...] = (TimeoutError, *BROKER_ERRORS)
"""A broker call failed or did not finish in time."""

_MAX_REASON_CHARS = 1000
"""Dead-letter reasons travel in a header; keep it well below the frame size."""

_REFUSAL_REMEMBERED = 1.0
"""Seconds a refused target fails without being sent (each probe closes a channel)."""

_RABBITMQ_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""The broker's ``max_message_size`` flowmesh asks for (deploy/rabbitmq/flowmesh.conf): the
codec's default ``max_message_bytes``. RabbitMQ's own default is 128 MiB."""


@dataclass(frozen=True, slots=True)
class RabbitMQConfig:
    """How to reach RabbitMQ and how long to wait for it.

    ``max_message_bytes`` should match the broker's ``max_message_size`` (4 MiB in flowmesh's
    broker config, the codec's limit; ``None`` turns the client-side check off): a larger
    message would make the broker close the publishing channel, failing every publish in
    flight on it. Timeouts are in seconds.
    """

    url: str = field(repr=False)  # may carry a password
    connection_name: str = "flowmesh"
    publish_timeout: float = 10.0
    """Longest wait for the publisher confirms of one :meth:`RabbitMQTransport.publish`."""
    operation_timeout: float = 10.0
    """Longest wait for connecting, declaring, queue stats and closing."""
    reconnect_interval: float = 1.0
    max_message_bytes: int | None = _RABBITMQ_MAX_MESSAGE_SIZE
    drain_timeout: float = 0.0
    """How long cancelling a subscription (or closing) lets running handlers finish and
    settle before cancelling them; by default they are cancelled at once."""
    tls: TLSConfig | None = None
    """TLS settings for an ``amqps://`` URL. None: the URL's query parameters (``cafile``,
    ``certfile``, ``keyfile``, ``no_verify_ssl``) if any, else verify against the system's
    CAs."""
    user_id: str | None = None
    """The ``user_id`` property of published messages; None means the URL's user name
    (``guest`` without one), which RabbitMQ checks against the connection's user. Set it when
    the broker authenticates otherwise (``auth=external`` in the URL leaves it unset), or ``""``
    to send none."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(
                f"RabbitMQ URL must be amqp:// or amqps://: {mask_secrets(self.url)}"
            )
        if self.tls is not None and scheme != "amqps":
            raise ConfigurationError(
                f"TLS settings need an amqps:// URL, not {mask_secrets(self.url)}"
            )
        for name in ("publish_timeout", "operation_timeout", "reconnect_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"RabbitMQConfig.{name} must be positive")
        if self.drain_timeout < 0:
            raise ConfigurationError("RabbitMQConfig.drain_timeout must not be negative")
        if self.max_message_bytes is not None and self.max_message_bytes < 1:
            raise ConfigurationError("RabbitMQConfig.max_message_bytes must be positive or None")

    @property
    def masked_url(self) -> str:
        """The URL with its password masked, safe to log."""
        return mask_secrets(self.url)

    @property
    def effective_tls(self) -> TLSConfig | None:
        """The TLS settings in force: ``tls``, else the URL's, else defaults for amqps://."""
        if urlsplit(self.url).scheme != "amqps":
            return None
        return self.tls or TLSConfig.from_amqp_query(self.url) or TLSConfig()

    @property
    def message_user_id(self) -> str:
        """What :meth:`RabbitMQTransport.publish` puts in ``user_id`` ('' for nothing)."""
        if self.user_id is not None:
            return self.user_id
        parts = urlsplit(self.url)
        query = {k.lower(): v.lower() for k, v in parse_qsl(parts.query)}
        if query.get("auth") == "external":
            return ""  # the user name comes from the client certificate
        return unquote(parts.username) if parts.username else "guest"


@dataclass(frozen=True, slots=True)
class _Link:
    """What :meth:`RabbitMQTransport.connect` opens."""

    publish: AbstractRobustConnection
    consume: AbstractRobustConnection
    confirms: AbstractRobustChannel
    """Publisher confirms on, returned messages raise."""
    replies: AbstractRobustChannel
    """No confirms: answers to inboxes are best effort."""
    probe: AbstractRobustChannel
    """Like ``confirms``, for the first message to a target not proven yet: a refusal
    (ACCESS_REFUSED) closes the channel it came on, failing every publish in flight there."""


class RabbitMQTransport:
    """A :class:`~flowmesh.transport.Transport` on RabbitMQ quorum queues.

    The constructor does no I/O; :meth:`connect` (or ``async with``) opens the connections
    and :meth:`close` releases them.
    """

    def __init__(self, config: RabbitMQConfig) -> None:
        self._config = config
        self._link: _Link | None = None
        self._closed = False
        self._declared: set[str] = set()
        self._arguments: dict[str, dict[str, FieldValue]] = {}
        """Queue name -> the arguments it was found declared with (version 2 or legacy)."""
        self._predeclared: set[str] = set()
        """Apps whose queues this user may not declare: consumed with passive declarations."""
        self._declare_lock = asyncio.Lock()
        self._proven: set[tuple[str, QueueKind]] = set()
        """Targets this user published to with success: they share the confirming channel.
        Others are probed first, one message at a time on a channel of their own."""
        self._refused: dict[tuple[str, QueueKind], tuple[float, FlowmeshError]] = {}
        """Targets whose probe RabbitMQ refused, when, and how."""
        self._probe_lock = asyncio.Lock()
        self._probing: dict[tuple[str, QueueKind], asyncio.Future[None]] = {}
        self._ids_in_flight: dict[str, asyncio.Future[None]] = {}
        self._message_id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._message_user_id = config.message_user_id or None  # parsed once, not per message
        self._message_count = 0
        self._subscriptions: set[RabbitSubscription] = set()
        self._inboxes: set[RabbitInbox] = set()
        self._answers = AnswerBatcher(self._publish_answers)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the publishing and consuming connections (no-op if already open)."""
        if self._closed:
            raise TransportError("the transport is closed")
        if self._link is not None:
            return
        context = self._ssl_context()
        connections: list[AbstractRobustConnection] = []
        try:
            for role in ("publish", "consume"):
                # connect's own timeout, not an outer one: cancelling it half way would
                # leave its reconnect loop running in the background.
                connections.append(
                    await connect_buffered(
                        self._config.url,
                        timeout=self._config.operation_timeout,
                        connection_name=f"{self._config.connection_name} {role}",
                        reconnect_interval=self._config.reconnect_interval,
                        ssl_context=context,
                    )
                )
            publish, consume = connections
            async with asyncio.timeout(self._config.operation_timeout):
                confirms = await publish.channel(publisher_confirms=True, on_return_raises=True)
                replies = await publish.channel(publisher_confirms=False)
                probe = await publish.channel(publisher_confirms=True, on_return_raises=True)
            link = _Link(publish, consume, confirms, replies, probe)
            await self._declare_exchanges(link)
        except ConfigurationError:
            for connection in connections:
                await self._close_quietly(connection)
            raise
        except _FAILURES as exc:
            for connection in connections:
                await self._close_quietly(connection)
            raise TransportError(
                f"cannot connect to RabbitMQ at {self._config.masked_url}: {describe(exc)}"
            ) from exc
        self._link = link
        log.info("transport.connected", url=self._config.masked_url)

    async def declare_app(self, app_id: str, *, required: bool = False) -> None:
        """Declare ``app_id``'s queues and bind them to ``fm.apps`` (once per transport).

        New queues get the version-2 arguments (a delivery limit and a dead-letter target,
        :func:`~flowmesh.transport._rabbitmq_topology.queue_arguments`). A queue an older
        flowmesh declared keeps its arguments (RabbitMQ refuses to change them): it is used as
        it is, and a warning names the policy that gives it the same limit.

        A restricted user may not declare another app's queues, nor bind its own: where
        RabbitMQ refuses (ACCESS_REFUSED) the transport relies on the queues and bindings the
        security plan declared, and remembers not to try again. With ``required`` (an
        administrator applying the plan) a refusal is a :class:`ConfigurationError` instead.
        """
        link = self._require_link()
        if app_id in self._declared and not required:
            return
        async with self._declare_lock:
            if app_id in self._declared:
                return
            name = ""
            binding = False
            try:
                async with asyncio.timeout(self._config.operation_timeout):
                    for kind in QueueKind:
                        name = queue_name(app_id, kind)
                        await self._declare_queue(link, app_id, kind)
                    binding = True
                    async with self._plain_channel(link.publish) as channel:
                        for kind in QueueKind:
                            name = queue_name(app_id, kind)
                            queue = await channel.get_queue(name, ensure=False)
                            await queue.bind(APPS_EXCHANGE, routing_key(app_id, kind))
            except aiormq.exceptions.ChannelAccessRefused as exc:
                if required:
                    raise ConfigurationError(
                        f"RabbitMQ user {self._user_id or '?'!r} may not "
                        f"{'bind' if binding else 'declare'} queue {name!r}: {describe(exc)}"
                    ) from exc
                # Least privilege: the security plan declared what this user may not.
                if not binding:
                    self._predeclared.add(app_id)
                log.info(
                    "transport.declare_refused",
                    app_id=app_id,
                    action="bind" if binding else "declare",
                    queue=name,
                    detail=describe(exc),
                    relying_on="the queues and bindings the security plan declared",
                )
            except _FAILURES as exc:
                raise TransportError(f"declaring queue {name!r} failed: {describe(exc)}") from exc
            self._declared.add(app_id)

    async def _declare_queue(self, link: _Link, app_id: str, kind: QueueKind) -> None:
        """Declare one queue with the version-2 arguments, or find it declared with the
        version-1 ones (on a fresh channel: the refusal closed the first)."""
        name = queue_name(app_id, kind)
        wanted: dict[str, FieldValue] = dict(queue_arguments(app_id, kind))
        legacy: dict[str, FieldValue] = dict(LEGACY_QUEUE_ARGUMENTS)
        refusal: Exception | None = None
        for arguments in (wanted, legacy) if wanted != legacy else (wanted,):
            try:
                async with self._plain_channel(link.publish) as channel:
                    await channel.declare_queue(name, durable=True, arguments=arguments)
            except aio_pika.exceptions.ChannelPreconditionFailed as exc:
                refusal = exc
                continue
            self._arguments[name] = arguments
            if arguments is legacy and wanted != legacy:
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
        raise ConfigurationError(
            f"queue {name!r} exists with other settings than flowmesh's (durable quorum "
            f"queue, arguments {wanted} or {legacy}); delete or migrate it: "
            f"{describe(refusal or Exception())}"
        )

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistently; returns once RabbitMQ confirmed every message.

        Sizes are checked first (nothing is sent if one is too large). If any message fails,
        the first failure is raised after all have settled (the others may have been
        delivered; callers retry and receivers deduplicate). :meth:`publish_each` says
        which.
        """
        for message in messages:
            self._check_size(message.body)
        failures = [outcome for outcome in await self.publish_each(messages) if outcome]
        if failures:
            if len(failures) > 1:
                failures[0].add_note(f"{len(failures)} of {len(messages)} messages failed")
            raise failures[0]

    async def publish_each(self, messages: Sequence[Outgoing]) -> list[FlowmeshError | None]:
        """Publish persistently; one outcome per message (None: confirmed).

        A refusal (ACCESS_REFUSED: a target outside this user's permissions) closes the
        channel it came on and fails every publish in flight there, delivered or not. So the
        first message to a target this transport has not published to yet goes alone on a
        probe channel; once confirmed, the target's messages share the confirming channel,
        all in flight at once. A target refused less than a second ago fails again without
        being sent. If a proven target is refused later (permissions revoked), the
        publishes its refusal took down are probed again, each target on its own. A message
        returned unroutable for an app whose queues this transport declared (a queue
        deleted since) makes it declare them again and retry once.
        """
        link = self._require_link()
        outcomes: list[FlowmeshError | None] = [None] * len(messages)
        todo = []
        for index, message in enumerate(messages):
            try:
                self._check_size(message.body)
            except TransportError as exc:
                outcomes[index] = exc
            else:
                todo.append(index)
        for app_id in {messages[i].app_id for i in todo} - self._declared:
            try:
                await self.declare_app(app_id)
            except FlowmeshError as exc:
                for index in todo:
                    if messages[index].app_id == app_id:
                        outcomes[index] = exc
        todo = [i for i in todo if outcomes[i] is None]
        if any(_target(messages[i]) not in self._proven for i in todo):
            todo = await self._probe(link, messages, todo, outcomes)
        if len(todo) == 1:  # the common case: no gather, no task per message
            outcomes[todo[0]] = await self._publish_one(link, messages[todo[0]])
        elif todo:
            results = await asyncio.gather(*(self._publish_one(link, messages[i]) for i in todo))
            for index, result in zip(todo, results, strict=True):
                outcomes[index] = result
            taken_down = [i for i in todo if _failed_with_channel(outcomes[i])]
            if taken_down:
                self._proven.difference_update(_target(messages[i]) for i in taken_down)
                again = await self._probe(link, messages, taken_down, outcomes)
                for index in again:
                    outcomes[index] = await self._publish_one(link, messages[index])
        await self._redeclare_deleted(link, messages, outcomes)
        return outcomes

    async def _probe(
        self,
        link: _Link,
        messages: Sequence[Outgoing],
        todo: list[int],
        outcomes: list[FlowmeshError | None],
    ) -> list[int]:
        """Publish the first message of each unproven target alone on the probe channel;
        returns the messages left to publish on the confirming channel (those of proven
        targets). A refused target's other messages get its refusal without being sent."""
        by_target: dict[tuple[str, QueueKind], list[int]] = {}
        for index in todo:
            by_target.setdefault(_target(messages[index]), []).append(index)
        left = []
        for target, indexes in by_target.items():
            while (probing := self._probing.get(target)) is not None:
                await asyncio.shield(probing)  # all waiters wake in one turn, publish together
            if target in self._proven:
                left += indexes
                continue
            refused = self._refused.get(target)
            if refused is not None and time.monotonic() - refused[0] < _REFUSAL_REMEMBERED:
                for index in indexes:
                    outcomes[index] = _not_sent(refused[1])
                continue
            self._probing[target] = done = asyncio.get_running_loop().create_future()
            try:
                async with self._probe_lock:  # one probe in flight: a refusal takes no sibling
                    outcome = await self._publish_one(link, messages[indexes[0]], link.probe)
            finally:
                del self._probing[target]
                done.set_result(None)
            outcomes[indexes[0]] = outcome
            if outcome is None:
                self._proven.add(target)
                self._refused.pop(target, None)
                left += indexes[1:]
            elif isinstance(outcome.__cause__, aiormq.exceptions.ChannelAccessRefused):
                self._refused[target] = (time.monotonic(), outcome)
                for index in indexes[1:]:
                    outcomes[index] = _not_sent(outcome)
            else:
                left += indexes[1:]  # not refused (unroutable, no confirm): each tries itself
        return left

    async def _publish_one(
        self, link: _Link, outgoing: Outgoing, channel: AbstractRobustChannel | None = None
    ) -> FlowmeshError | None:
        """Publish one message; its error instead of raising it."""
        try:
            await self._publish_outgoing(outgoing, channel or link.confirms)
        except FlowmeshError as exc:
            return exc
        return None

    async def _redeclare_deleted(
        self, link: _Link, messages: Sequence[Outgoing], outcomes: list[FlowmeshError | None]
    ) -> None:
        """Declare again the queues of apps whose messages came back unroutable although this
        transport declared them (deleted since), and retry those messages once. Apps whose
        queues this user may not declare are left to the security plan."""
        returned = [
            i
            for i, outcome in enumerate(outcomes)
            if isinstance(outcome, UnroutableError)
            and messages[i].app_id in self._declared
            and messages[i].app_id not in self._predeclared
        ]
        for app_id in {messages[i].app_id for i in returned}:
            log.warning("transport.queue_redeclared", app_id=app_id, reason="unroutable")
            self._declared.discard(app_id)
            try:
                await self.declare_app(app_id)
            except FlowmeshError:
                continue  # the message keeps its own failure
        for index in returned:
            if messages[index].app_id in self._declared:
                outcomes[index] = await self._publish_one(link, messages[index])

    async def send_reply(
        self, address: str, correlation_id: str, body: bytes, *, answer_by: float = 0.0
    ) -> None:
        """Answer an inbox: not persistent, not mandatory, so dropped if the inbox is gone.

        Returns once the answer is queued: answers to one inbox in one loop turn leave as
        one message (see :mod:`flowmesh.transport._rabbitmq_answers`), and a failed send is
        logged (``transport.answers_not_sent``), as answers are best effort. An answer its
        sender stopped waiting for (``answer_by``) is not sent at all.
        """
        self._require_link()
        if not is_inbox_address(address):
            log.warning("transport.reply_address_refused", address=address[:200])
            return
        self._check_size(body)
        if answer_is_late(answer_by, time.time()):
            log.debug("transport.late_answer_skipped", correlation_id=correlation_id)
            return
        self._answers.send(address, correlation_id, body)

    async def _publish_answers(self, address: str, answers: Sequence[Answer]) -> None:
        link = self._require_link()
        limit = min(_ANSWERS_FRAME_BYTES, self._config.max_message_bytes or _ANSWERS_FRAME_BYTES)
        try:
            async with asyncio.timeout(self._config.publish_timeout):
                channel = await _open_channel(link.replies)
                for group in chunks(answers, limit):
                    if len(group) == 1:
                        correlation_id, body = group[0]
                        kind = None
                    else:
                        correlation_id, body, kind = "", pack_answers(group), ANSWERS_TYPE
                    properties = spec.Basic.Properties(
                        delivery_mode=_NOT_PERSISTENT,
                        correlation_id=correlation_id or None,
                        content_type=CONTENT_TYPE,
                        message_type=kind,
                        user_id=self._user_id,
                    )
                    await channel.basic_publish(
                        body,
                        exchange=INBOX_EXCHANGE,
                        routing_key=address,
                        properties=properties,
                        wait=False,  # see _publish_confirmed
                    )
        except TimeoutError as exc:
            raise PublishTimeoutError(
                f"reply to {address!r} not sent within {self._config.publish_timeout}s"
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise TransportError(
                f"RabbitMQ refused the reply to {address!r} (ACCESS_REFUSED): user "
                f"{self._user_id or '?'!r} may not publish to {INBOX_EXCHANGE!r}: {describe(exc)}"
            ) from exc
        except BROKER_ERRORS as exc:
            raise TransportError(f"reply to {address!r} failed: {describe(exc)}") from exc

    async def consume(
        self, app_id: str, kind: QueueKind, handler: Handler, *, prefetch: int
    ) -> Subscription:
        """Consume ``app_id``'s ``kind`` queue on a channel of its own with ``prefetch``."""
        link = self._require_link()
        if prefetch < 1:
            # 0 would mean "unlimited" to RabbitMQ.
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        await self.declare_app(app_id)
        name = queue_name(app_id, kind)
        channel: AbstractRobustChannel | None = None
        try:
            async with asyncio.timeout(self._config.operation_timeout):
                channel = await link.consume.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                # Declared through the robust channel so that aio-pika redeclares the queue
                # and restarts the consumer after a reconnect (passively where this user may
                # not declare it: the security plan did).
                if app_id in self._predeclared:
                    queue = await channel.declare_queue(name, passive=True)
                else:
                    queue = await channel.declare_queue(
                        name,
                        durable=True,
                        arguments=self._arguments.get(name) or dict(queue_arguments(app_id, kind)),
                    )
                subscription = RabbitSubscription(
                    name,
                    channel,
                    handler,
                    forget=self._subscriptions.discard,
                    close_timeout=self._config.operation_timeout,
                    drain_timeout=self._config.drain_timeout,
                )
                await subscription.start(queue)
        except _FAILURES as exc:
            if channel is not None:
                await self._close_quietly(channel)
            if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
                raise TransportError(
                    f"RabbitMQ user {self._user_id or '?'!r} may not consume {name!r} "
                    f"(ACCESS_REFUSED): {describe(exc)}"
                ) from exc
            if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                raise TransportError(
                    f"queue {name!r} does not exist and this RabbitMQ user may not declare it; "
                    f"apply the security plan (flowmesh security apply): {describe(exc)}"
                ) from exc
            raise TransportError(f"consuming {name!r} failed: {describe(exc)}") from exc
        self._subscriptions.add(subscription)
        return subscription

    async def dead_letter(self, delivery: Delivery, app_id: str, reason: str) -> None:
        """Publish the message to ``app_id``'s dead queue with ``reason``, then ack it.

        An explicit publish-then-ack rather than a dead-letter exchange: RabbitMQ's own
        dead-lettering is at most once (at least once only for quorum queues configured with
        ``dead-letter-strategy`` and ``overflow: reject-publish``), and it could not carry
        the reason.
        """
        link = self._require_link()
        headers: HeadersType = {
            "x-flowmesh-reason": _truncate(reason),
            "x-flowmesh-delivery-count": delivery.delivery_count,
        }
        sender = getattr(delivery, "user_id", "")
        if sender:
            # The copy carries this app's user_id; keep who sent the original.
            headers["x-flowmesh-original-user-id"] = sender
        if isinstance(delivery, RabbitDelivery):
            if not delivery.pending:
                raise TransportError(f"delivery {delivery.message_id!r} was already settled")
            if not delivery.channel_open:
                # The broker already took the message back and will redeliver it; a dead
                # copy now would leave it in both places.
                log.warning("transport.dead_letter_skipped", message_id=delivery.message_id)
                await delivery.ack()  # marks it settled, logs the closed channel
                return
            headers["x-flowmesh-original-queue"] = delivery.queue
        await self.declare_app(app_id)
        properties = spec.Basic.Properties(
            headers=headers,
            delivery_mode=_PERSISTENT,
            content_type=CONTENT_TYPE,
            message_id=delivery.message_id or self._new_message_id(),
            correlation_id=delivery.correlation_id or None,
            reply_to=delivery.reply_to or None,
            user_id=self._user_id,
        )
        await self._publish_confirmed(
            link.confirms, app_id, QueueKind.DEAD, delivery.body, properties
        )
        await delivery.ack()

    async def open_inbox(self) -> Inbox:
        """Create a private inbox queue on the consuming connection."""
        link = self._require_link()
        inbox = RabbitInbox(
            forget=self._inboxes.discard, close_timeout=self._config.operation_timeout
        )
        try:
            async with asyncio.timeout(self._config.operation_timeout):
                await inbox.open(link.consume)
        except _FAILURES as exc:
            await inbox.close()
            raise TransportError(f"opening an inbox failed: {describe(exc)}") from exc
        self._inboxes.add(inbox)
        return inbox

    async def queue_stats(self, app_id: str) -> QueueStats:
        """Ready messages and consumers of ``app_id``'s queues (zeros for missing queues)."""
        link = self._require_link()
        counts = dict(
            zip(
                QueueKind,
                await asyncio.gather(
                    *(self._queue_counts(link, queue_name(app_id, kind)) for kind in QueueKind)
                ),
                strict=True,
            )
        )
        (work, work_consumers), (reply, reply_consumers) = (
            counts[QueueKind.WORK],
            counts[QueueKind.REPLY],
        )
        return QueueStats(
            app_id,
            work,
            work_consumers,
            reply,
            reply_consumers,
            counts[QueueKind.DEAD][0],
            counts[QueueKind.QUARANTINE][0],
        )

    async def close(self) -> None:
        """Cancel consumers (unsettled deliveries return to their queues), close inboxes and
        connections. Every step is bounded by ``operation_timeout``."""
        if self._closed:
            return
        self._closed = True
        await self._answers.drain(self._config.operation_timeout)
        await asyncio.gather(
            *(s.cancel() for s in list(self._subscriptions)),
            *(i.close() for i in list(self._inboxes)),
            return_exceptions=True,
        )
        link, self._link = self._link, None
        if link is not None:
            await self._close_quietly(link.consume)
            await self._close_quietly(link.publish)

    # -- internals ---------------------------------------------------------------------------

    @property
    def _user_id(self) -> str | None:
        return self._message_user_id

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self._config.effective_tls
        if tls is None:
            return None
        if not tls.verify:
            log.warning(
                "transport.tls_verification_disabled",
                url=self._config.masked_url,
                detail="the broker's certificate is not checked: anyone on the path can "
                "impersonate it (development only)",
            )
        return tls.ssl_context()

    async def _declare_exchanges(self, link: _Link) -> None:
        """Declare ``fm.apps`` and ``fm.inbox``, or check they exist if this user may not."""
        name = ""
        try:
            async with (
                asyncio.timeout(self._config.operation_timeout),
                self._plain_channel(link.publish) as channel,
            ):
                for name in EXCHANGES:
                    await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            return
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"exchange {name!r} exists with other settings than flowmesh's (durable topic "
                f"exchange): {describe(exc)}"
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused:
            pass  # a restricted user: the security plan declares the exchanges
        try:
            async with (
                asyncio.timeout(self._config.operation_timeout),
                self._plain_channel(link.publish) as channel,
            ):
                for name in EXCHANGES:
                    await channel.declare_exchange(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigurationError(
                f"exchange {name!r} does not exist and RabbitMQ user {self._user_id or '?'!r} "
                "may not declare it: apply the security plan first (flowmesh security apply)"
            ) from exc

    def _require_link(self) -> _Link:
        if self._link is None:
            state = "closed" if self._closed else "not connected: call connect() first"
            raise TransportError(f"the transport is {state}")
        return self._link

    def _check_size(self, body: bytes) -> None:
        limit = self._config.max_message_bytes
        if limit is not None and len(body) > limit:
            raise TransportError(f"message of {len(body)} bytes exceeds the maximum of {limit}")

    async def _publish_outgoing(self, outgoing: Outgoing, channel: AbstractRobustChannel) -> None:
        headers: HeadersType | None = None
        if outgoing.answer_within is not None:
            # Integer milliseconds: every AMQP client reads a long; not every one a double.
            deadline = answer_deadline(outgoing.answer_within, time.time())
            headers = {ANSWER_BY_HEADER: round(deadline * 1000)}
        if outgoing.attempt > 1:
            headers = {**(headers or {}), ATTEMPT_HEADER: outgoing.attempt}
        properties = spec.Basic.Properties(
            headers=headers,
            delivery_mode=_PERSISTENT,
            content_type=CONTENT_TYPE,
            # aiormq needs an ID to match a returned message to its publish.
            message_id=outgoing.message_id or self._new_message_id(),
            reply_to=outgoing.reply_to or None,
            correlation_id=outgoing.correlation_id or None,
            user_id=self._user_id,
        )
        await self._publish_confirmed(
            channel, outgoing.app_id, outgoing.kind, outgoing.body, properties
        )

    def _new_message_id(self) -> str:
        """A message ID unique to this transport (a random prefix and a counter: cheaper than
        a UUID per message, and just as unique)."""
        self._message_count += 1
        return f"{self._message_id_prefix}{self._message_count:x}"

    async def _publish_confirmed(
        self,
        confirms: AbstractRobustChannel,
        app_id: str,
        kind: QueueKind,
        body: bytes,
        properties: spec.Basic.Properties,
    ) -> None:
        """Publish ``body`` to ``app_id``'s ``kind`` queue and wait for the confirm.

        Straight on the aiormq channel under the robust one: aio-pika's ``Message`` and
        ``Exchange.publish`` add several microseconds per message and nothing we use.
        """
        timeout = self._config.publish_timeout
        queue, key = queue_name(app_id, kind), routing_key(app_id, kind)
        # aiormq finds the publish a returned message belongs to by message ID; with two in
        # flight the return would fail the wrong one and the other would look confirmed.
        message_id = properties.message_id or ""
        while (busy := self._ids_in_flight.get(message_id)) is not None:
            await asyncio.shield(busy)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ids_in_flight[message_id] = done
        try:
            async with asyncio.timeout(timeout):
                channel = await _open_channel(confirms)
                await channel.basic_publish(
                    body,
                    exchange=APPS_EXCHANGE,
                    routing_key=key,
                    properties=properties,
                    mandatory=True,
                    # Do not hold the channel's lock until the writer has taken the frame:
                    # concurrent publishes then queue in one loop turn and leave in one
                    # socket write. The confirm is still awaited (and the frame queue is
                    # bounded, so a slow socket still pushes back).
                    wait=False,
                )
        except aio_pika.exceptions.PublishError as exc:  # a Basic.Return
            raise UnroutableError(
                f"RabbitMQ could not route the message to {queue!r}: no "
                f"queue is bound to {APPS_EXCHANGE!r} with routing key {key!r} (apply the "
                "security plan, or start the app once with a user that may declare its queues)"
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:  # a Basic.Nack
            raise TransportError(f"RabbitMQ refused the message for {queue!r}") from exc
        except TimeoutError as exc:
            raise PublishTimeoutError(
                f"no publisher confirm for {queue!r} within {timeout}s"
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise TransportError(
                f"RabbitMQ user {self._user_id or '?'!r} may not publish to "
                f"{queue!r} (routing key {key!r} on {APPS_EXCHANGE!r}; "
                f"ACCESS_REFUSED): {describe(exc)}"
            ) from exc
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TransportError(
                f"RabbitMQ refused the message for {queue!r} "
                "(PRECONDITION_FAILED, e.g. a user_id other than the connection's user): "
                f"{describe(exc)}"
            ) from exc
        except BROKER_ERRORS as exc:
            raise TransportError(f"publishing to {queue!r} failed: {describe(exc)}") from exc
        finally:
            del self._ids_in_flight[message_id]
            done.set_result(None)

    async def _queue_counts(self, link: _Link, name: str) -> tuple[int, int]:
        try:
            async with (
                asyncio.timeout(self._config.operation_timeout),
                self._plain_channel(link.publish) as channel,
            ):
                queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0, 0
        except _FAILURES as exc:
            raise TransportError(f"reading stats of {name!r} failed: {describe(exc)}") from exc
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0

    @asynccontextmanager
    async def _plain_channel(
        self, connection: AbstractRobustConnection
    ) -> AsyncIterator[AbstractChannel]:
        """A short-lived, non-robust channel for calls that may fail with a channel error.

        A broker error closes the channel; a robust one would then try to reopen itself.
        """
        await connection.ready()
        channel = aio_pika.Channel(connection, publisher_confirms=False)
        await channel.initialize()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await self._close_quietly(channel)

    async def _close_quietly(self, closable: AbstractChannel | AbstractRobustConnection) -> None:
        with suppress(*_FAILURES):
            async with asyncio.timeout(self._config.operation_timeout):
                await closable.close()


async def _open_channel(channel: AbstractRobustChannel) -> aiormq.Channel:
    """The aiormq channel under ``channel``, once it is open (its ``basic_publish`` takes
    ``wait``, which the abstract interface does not declare).

    Waits out a reconnect, or a robust channel reopening after a channel error (such as an
    oversized message), instead of failing at once. Right after the error ``ready()`` can
    still report the old, open state, so poll briefly; callers bound the wait with their
    timeout.
    """
    await channel.ready()
    while channel.is_closed:
        await asyncio.sleep(0.05)
        await channel.ready()
    return cast("aiormq.Channel", await channel.get_underlay_channel())


def _target(outgoing: Outgoing) -> tuple[str, QueueKind]:
    return outgoing.app_id, outgoing.kind


def _not_sent(refusal: FlowmeshError) -> TransportError:
    error = TransportError(f"not sent: {refusal}")
    error.__cause__ = refusal.__cause__
    return error


def _failed_with_channel(outcome: FlowmeshError | None) -> bool:
    """True for a publish failed by its channel closing (a refusal of any message in flight
    on it), rather than by something of its own."""
    cause = outcome.__cause__ if outcome is not None else None
    return isinstance(
        cause, aiormq.exceptions.ChannelClosed | aiormq.exceptions.ChannelInvalidStateError
    )


def _truncate(reason: str) -> str:
    """``reason`` cut to a header-friendly length, as valid UTF-8."""
    short = reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 1] + "…"
    return short.encode("utf-8", "replace").decode("utf-8")
