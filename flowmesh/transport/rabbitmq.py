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

Errors: every broker call runs inside one boundary
(:class:`~flowmesh.transport._rabbitmq_errors.Translating`), which turns aio-pika, aiormq and
socket errors into :class:`~flowmesh.TransportError` and its subclasses
(:class:`~flowmesh.PublishTimeoutError`, :class:`~flowmesh.UnroutableError`), or into a
:class:`~flowmesh.ConfigurationError` where flowmesh's own topology is missing or declared
otherwise.

The pieces: :mod:`~flowmesh.transport._rabbitmq_link` (connections and channels),
:mod:`~flowmesh.transport._rabbitmq_declare` (exchanges, queues, bindings),
:mod:`~flowmesh.transport._rabbitmq_publish` (confirms, probes, answers),
:mod:`~flowmesh.transport._rabbitmq_consumer` and :mod:`~flowmesh.transport._rabbitmq_inbox`
(receiving). Pitfalls of aio-pika/RabbitMQ defaults they deal with:

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
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import structlog
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, HeadersType
from aiormq import spec

from flowmesh._errors import FlowmeshError, TransportError
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
from flowmesh.transport._common import answer_is_late
from flowmesh.transport._rabbitmq_answers import Answer, AnswerBatcher
from flowmesh.transport._rabbitmq_config import CONTENT_TYPE, PERSISTENT, RabbitMQConfig
from flowmesh.transport._rabbitmq_consumer import RabbitDelivery, RabbitSubscription
from flowmesh.transport._rabbitmq_declare import Declarations
from flowmesh.transport._rabbitmq_errors import Translating
from flowmesh.transport._rabbitmq_inbox import RabbitInbox, is_inbox_address
from flowmesh.transport._rabbitmq_link import (
    Link,
    close_quietly,
    node_of,
    open_connections,
    open_link,
)
from flowmesh.transport._rabbitmq_publish import Publisher

__all__ = ["RabbitMQConfig", "RabbitMQTransport"]


log = structlog.get_logger("flowmesh.transport")

_MAX_REASON_CHARS = 1000
"""Dead-letter reasons travel in a header; keep it well below the frame size."""


class RabbitMQTransport:
    """A :class:`~flowmesh.transport.Transport` on RabbitMQ quorum queues.

    The constructor does no I/O; :meth:`connect` (or ``async with``) opens the connections
    and :meth:`close` releases them.
    """

    def __init__(self, config: RabbitMQConfig) -> None:
        self._config = config
        self._link: Link | None = None
        self._closed = False
        self._user_id = config.message_user_id or None  # parsed once, not per message
        self._declarations = Declarations(config, self._user_id)
        self._publisher = Publisher(config, self._declarations, self._user_id)
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
        connections: list[AbstractRobustConnection] = []
        try:
            with self._translating(f"connect to RabbitMQ at {self._config.masked_url}"):
                await open_connections(self._config, connections)
                async with asyncio.timeout(self._config.operation_timeout):
                    link = await open_link(*connections)
            await self._declarations.exchanges(link)
        except FlowmeshError:
            for connection in connections:
                await close_quietly(connection, self._config.operation_timeout)
            raise
        self._link = link
        log.info("transport.connected", url=self._config.masked_url, node=node_of(link.publish))

    @property
    def nodes(self) -> tuple[str, str]:
        """``host:port`` of the node the publishing and the consuming connection use (or
        reconnect to next); see :mod:`flowmesh.transport._rabbitmq_failover`."""
        link = self._require_link()
        return node_of(link.publish), node_of(link.consume)

    async def declare_app(self, app_id: str, *, required: bool = False) -> None:
        """Declare ``app_id``'s queues and bind them to ``fm.apps`` (once per transport).

        New queues get the version-2 arguments (a delivery limit and a dead-letter target,
        :func:`~flowmesh.transport.queue_arguments`). A queue an older flowmesh declared
        keeps its arguments (RabbitMQ refuses to change them): it is used as it is, and a
        warning names the policy that gives it the same limit.

        A restricted user may not declare another app's queues, nor bind its own: where
        RabbitMQ refuses (ACCESS_REFUSED) the transport relies on the queues and bindings the
        security plan declared, and remembers not to try again. With ``required`` (an
        administrator applying the plan) a refusal is a :class:`ConfigurationError` instead.
        """
        await self._declarations.app(self._require_link(), app_id, required=required)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistently; returns once RabbitMQ confirmed every message.

        Sizes are checked first (nothing is sent if one is too large). If any message fails,
        the first failure is raised after all have settled (the others may have been
        delivered; callers retry and receivers deduplicate). :meth:`publish_each` says
        which.
        """
        for message in messages:
            self._publisher.check_size(message.body)
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
        return await self._publisher.publish_each(self._require_link(), messages)

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
        self._publisher.check_size(body)
        if answer_is_late(answer_by, time.time()):
            log.debug("transport.late_answer_skipped", correlation_id=correlation_id)
            return
        self._answers.send(address, correlation_id, body)

    async def _publish_answers(self, address: str, answers: Sequence[Answer]) -> None:
        await self._publisher.publish_answers(self._require_link(), address, answers)

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
        arguments = self._declarations.consume_arguments(app_id, kind)
        channel: AbstractRobustChannel | None = None
        try:
            with self._translating(f"consume {name!r}"):
                async with asyncio.timeout(self._config.operation_timeout):
                    channel = await link.consume.channel(publisher_confirms=False)
                    await channel.set_qos(prefetch_count=prefetch)
                    # Declared through the robust channel so that aio-pika redeclares the
                    # queue and restarts the consumer after a reconnect (passively where this
                    # user may not declare it: the security plan did).
                    if arguments is None:
                        queue = await channel.declare_queue(name, passive=True)
                    else:
                        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
                    subscription = RabbitSubscription(
                        name,
                        channel,
                        handler,
                        forget=self._subscriptions.discard,
                        close_timeout=self._config.operation_timeout,
                        drain_timeout=self._config.drain_timeout,
                    )
                    await subscription.start(queue)
        except TransportError:
            if channel is not None:
                await close_quietly(channel, self._config.operation_timeout)
            raise
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
            delivery_mode=PERSISTENT,
            content_type=CONTENT_TYPE,
            message_id=delivery.message_id or self._publisher.new_message_id(),
            correlation_id=delivery.correlation_id or None,
            reply_to=delivery.reply_to or None,
            user_id=self._user_id,
        )
        await self._publisher.publish_confirmed(
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
            with self._translating("open an inbox"):
                async with asyncio.timeout(self._config.operation_timeout):
                    await inbox.open(link.consume)
        except TransportError:
            await inbox.close()
            raise
        self._inboxes.add(inbox)
        return inbox

    async def queue_stats(self, app_id: str) -> QueueStats:
        """Ready messages and consumers of ``app_id``'s queues (zeros for missing queues)."""
        link = self._require_link()
        counts = dict(
            zip(
                QueueKind,
                await asyncio.gather(
                    *(
                        self._declarations.queue_counts(link, queue_name(app_id, kind))
                        for kind in QueueKind
                    )
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
            await close_quietly(link.consume, self._config.operation_timeout)
            await close_quietly(link.publish, self._config.operation_timeout)

    # -- internals ---------------------------------------------------------------------------

    def _require_link(self) -> Link:
        if self._link is None:
            state = "closed" if self._closed else "not connected: call connect() first"
            raise TransportError(f"the transport is {state}")
        return self._link

    def _translating(self, action: str) -> Translating:
        """The error boundary of a broker call (:mod:`flowmesh.transport._rabbitmq_errors`):
        aio-pika, aiormq and socket errors become flowmesh errors naming ``action``."""
        return Translating(action, user_id=self._user_id)


def _truncate(reason: str) -> str:
    """``reason`` cut to a header-friendly length, as valid UTF-8."""
    short = reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 1] + "…"
    return short.encode("utf-8", "replace").decode("utf-8")
