"""In-process transport for the embedded backend and fast tests.

A :class:`MemoryBroker` plays the part of RabbitMQ: it owns the queues. Each
:class:`MemoryTransport` is one connection to it, so a test can run several "replicas" (one
transport each) against one broker and close one of them to simulate a crash::

    broker = MemoryBroker()
    orders, payments = MemoryTransport(broker), MemoryTransport(broker)

``MemoryTransport()`` without a broker gets a private one. Nothing runs in the background:
publishing, settling and cancelling hand ready messages to consumers directly, and every
delivery's handler runs in its own task.

Behaviour mirrors :class:`~flowmesh.transport.rabbitmq.RabbitMQTransport` on quorum queues:
FIFO delivery, round robin between consumers of one queue, at most ``prefetch`` unsettled
deliveries per consumer, ``delivery_count`` incremented on every redelivery. ``requeue``
puts a message at the back of its queue; a delivery left unsettled by a cancelled consumer
goes back to the front.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

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
from flowmesh.transport._common import _new_inbox_address, answer_deadline, answer_is_late
from flowmesh.transport._memory_broker import MemoryBroker, MemoryQueue, Message
from flowmesh.transport._memory_consumer import MemoryDelivery, MemoryInbox, MemorySubscription

__all__ = ["MemoryBroker", "MemoryTransport"]

log = structlog.get_logger("flowmesh.transport")


class MemoryTransport:
    """A :class:`~flowmesh.transport.Transport` whose broker lives in this process.

    ``max_message_bytes`` mirrors RabbitMQ's ``max_message_size``: a larger body makes
    :meth:`publish` raise :class:`~flowmesh.TransportError` before anything is published.
    ``drain_timeout`` is how long cancelling a subscription (or closing) lets running
    handlers finish and settle before cancelling them; by default they are cancelled at once.
    ``user_id`` is stamped on every message this transport publishes, as RabbitMQ's validated
    ``user_id`` property would be (for testing sender checks in process).
    """

    def __init__(
        self,
        broker: MemoryBroker | None = None,
        *,
        max_message_bytes: int | None = None,
        drain_timeout: float = 0.0,
        user_id: str = "",
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self._user_id = user_id
        self._max_message_bytes = max_message_bytes
        self._drain_timeout = drain_timeout
        self._subscriptions: set[MemorySubscription] = set()
        self._inboxes: set[MemoryInbox] = set()
        self._closed = False

    def dead_letters(self, app_id: str) -> list[tuple[bytes, str]]:
        """``(body, reason)`` of each message waiting in ``app_id``'s dead queue, oldest first."""
        return self.broker.dead_letters(app_id)

    def is_idle(self) -> bool:
        """True when the broker has nothing in flight (see :meth:`MemoryBroker.is_idle`)."""
        return self.broker.is_idle()

    async def wait_idle(self) -> None:
        """Return once the broker is idle."""
        await self.broker.wait_idle()

    async def declare_app(self, app_id: str) -> None:
        """Create ``app_id``'s work, reply and dead queues if missing."""
        self._check_open()
        self.broker.declare(app_id)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Enqueue every message (all or none: sizes are checked first)."""
        self._check_open()
        for message in messages:
            self._check_size(message.body)
        outcomes = await self.publish_each(messages)
        failures = [outcome for outcome in outcomes if outcome is not None]
        if failures:
            raise failures[0]

    async def publish_each(self, messages: Sequence[Outgoing]) -> list[FlowmeshError | None]:
        """Enqueue every message that fits and whose app the broker does not refuse
        (:meth:`MemoryBroker.refuse`); the others get their error, the rest are delivered."""
        self._check_open()
        outcomes: list[FlowmeshError | None] = []
        touched: dict[int, MemoryQueue] = {}
        now = time.time()
        for message in messages:
            try:
                self._check_size(message.body)
                self.broker.check_refused(message.app_id, self._user_id)
            except TransportError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(None)
            queue = self.broker.queue(message.app_id, message.kind)
            queue.put(
                Message(
                    bytes(message.body),
                    message.message_id,
                    message.reply_to,
                    message.correlation_id,
                    user_id=self._user_id,
                    answer_by=answer_deadline(message.answer_within, now),
                    attempt=max(1, message.attempt),
                )
            )
            touched[id(queue)] = queue
        for queue in touched.values():
            queue.dispatch()
        return outcomes

    async def send_reply(
        self, address: str, correlation_id: str, body: bytes, *, answer_by: float = 0.0
    ) -> None:
        """Answer an inbox of this broker; dropped if it no longer exists or its sender
        stopped waiting (``answer_by``)."""
        self._check_open()
        self._check_size(body)
        if answer_is_late(answer_by, time.time()):
            log.debug("transport.late_answer_skipped", correlation_id=correlation_id)
            return
        if not self.broker.answer(address, correlation_id, bytes(body), self._user_id):
            log.debug("transport.reply_dropped", address=address)

    async def consume(
        self, app_id: str, kind: QueueKind, handler: Handler, *, prefetch: int
    ) -> Subscription:
        """Deliver ``app_id``'s ``kind`` queue to ``handler``, ``prefetch`` at a time."""
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        subscription = MemorySubscription(
            self.broker,
            queue_name(app_id, kind),
            self.broker.queue(app_id, kind),
            handler,
            prefetch=prefetch,
            drain_timeout=self._drain_timeout,
        )
        self._subscriptions.add(subscription)
        subscription.start()
        return subscription

    async def dead_letter(self, delivery: Delivery, app_id: str, reason: str) -> None:
        """Append the message to ``app_id``'s dead queue with ``reason``, then ack it."""
        self._check_open()
        if isinstance(delivery, MemoryDelivery) and not delivery.pending:
            await delivery.ack()  # raises if settled, no-op if returned: same as a plain ack
            return
        dead = self.broker.queue(app_id, QueueKind.DEAD)
        dead.put(
            Message(
                delivery.body,
                delivery.message_id,
                delivery.reply_to,
                delivery.correlation_id,
                reason=reason,
                user_id=self._user_id,
            )
        )
        await delivery.ack()
        dead.dispatch()

    async def open_inbox(self) -> Inbox:
        """Create a private inbox for answers."""
        self._check_open()
        inbox = MemoryInbox(self.broker, _new_inbox_address())
        self._inboxes.add(inbox)
        return inbox

    async def queue_stats(self, app_id: str) -> QueueStats:
        """Ready messages and consumers of ``app_id``'s queues (zeros if never declared)."""
        self._check_open()
        depth = self.broker.depth
        work, reply = depth(app_id, QueueKind.WORK), depth(app_id, QueueKind.REPLY)
        dead, quarantine = depth(app_id, QueueKind.DEAD), depth(app_id, QueueKind.QUARANTINE)
        return QueueStats(app_id, work[0], work[1], reply[0], reply[1], dead[0], quarantine[0])

    async def close(self) -> None:
        """Cancel this transport's consumers (returning unsettled deliveries) and inboxes."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(s.cancel() for s in self._subscriptions))
        for inbox in self._inboxes:
            await inbox.close()
        self._subscriptions.clear()
        self._inboxes.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the transport is closed")

    def _check_size(self, body: bytes) -> None:
        if self._max_message_bytes is not None and len(body) > self._max_message_bytes:
            raise TransportError(
                f"message of {len(body)} bytes exceeds the maximum of {self._max_message_bytes}"
            )
