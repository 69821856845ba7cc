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
import contextvars
import enum
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

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
from flowmesh.transport._common import (
    _AnswerBuffer,
    _new_inbox_address,
    _run_handler,
    _stop_handlers,
    answer_deadline,
    answer_is_late,
)

__all__ = ["MemoryBroker", "MemoryTransport"]

log = structlog.get_logger("flowmesh.transport")


@dataclass(slots=True)
class _Message:
    body: bytes
    message_id: str = ""
    reply_to: str = ""
    correlation_id: str = ""
    delivery_count: int = 1
    """Count the next delivery of this message will carry."""
    reason: str = ""
    """Why the message was dead-lettered (dead queues only)."""
    user_id: str = ""
    """The publishing transport's ``user_id`` (like RabbitMQ's validated property)."""
    answer_by: float = 0.0
    attempt: int = 1
    """Like RabbitMQ's ``x-flowmesh-attempt`` header: set by the publisher, never by the
    broker (a requeue counts in ``delivery_count`` only)."""


class _Queue:
    """Ready messages and the consumers they are handed to in turn."""

    __slots__ = ("_turn", "consumers", "ready")

    def __init__(self) -> None:
        self.ready: deque[_Message] = deque()
        self.consumers: list[_MemorySubscription] = []
        self._turn = 0

    def dispatch(self) -> None:
        """Hand ready messages to consumers with spare prefetch, round robin."""
        while self.ready:
            consumer = self._next_consumer()
            if consumer is None:
                return
            consumer.deliver(self.ready.popleft())

    def _next_consumer(self) -> _MemorySubscription | None:
        count = len(self.consumers)
        for offset in range(count):
            index = (self._turn + offset) % count
            if self.consumers[index].has_capacity():
                self._turn = index + 1
                return self.consumers[index]
        return None


class MemoryBroker:
    """The queues shared by the :class:`MemoryTransport` instances connected to it."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._inboxes: dict[str, _MemoryInbox] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._refused: dict[str, str] = {}

    def dead_letters(self, app_id: str) -> list[tuple[bytes, str]]:
        """``(body, reason)`` of each message waiting in ``app_id``'s dead queue, oldest first."""
        queue = self._queues.get(queue_name(app_id, QueueKind.DEAD))
        return [] if queue is None else [(m.body, m.reason) for m in queue.ready]

    def refuse(self, app_id: str, reason: str | None = "access refused") -> None:
        """Refuse messages for ``app_id`` from now on with ``reason`` (None: accept them
        again), as RabbitMQ refuses a target outside a user's permissions: for testing how
        publishers cope with a target that fails while its siblings do not."""
        if reason is None:
            self._refused.pop(app_id, None)
        else:
            self._refused[app_id] = reason

    def is_idle(self) -> bool:
        """True when no handler runs, no delivery is unsettled and no consumer has work waiting.

        Messages in queues nobody consumes (an app not started) do not count: they wait.
        """
        if any(s.busy() for s in self._subscriptions):
            return False
        return not any(queue.ready and queue.consumers for queue in self._queues.values())

    async def wait_idle(self) -> None:
        """Return once :meth:`is_idle` holds (wrap in ``asyncio.timeout`` to bound it)."""
        while not self.is_idle():
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._idle_waiters:
                    self._idle_waiters.remove(waiter)

    def _queue(self, app_id: str, kind: QueueKind) -> _Queue:
        self._declare(app_id)
        return self._queues[queue_name(app_id, kind)]

    def _check_refused(self, app_id: str, user_id: str) -> None:
        reason = self._refused.get(app_id)
        if reason is not None:
            raise TransportError(
                f"user {user_id or '?'!r} may not publish to app {app_id!r}: {reason}"
            )

    def _declare(self, app_id: str) -> None:
        for kind in QueueKind:
            self._queues.setdefault(queue_name(app_id, kind), _Queue())

    def _notify(self) -> None:
        """Something finished: wake ``wait_idle`` callers if the broker is now idle."""
        if self._idle_waiters and self.is_idle():
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()


class _State(enum.Enum):
    PENDING = enum.auto()
    SETTLED = enum.auto()
    RETURNED = enum.auto()
    """Given back to the queue by the transport (consumer cancelled); later settles are no-ops."""


class _MemoryDelivery:
    """A message handed to one consumer, settled through it."""

    __slots__ = ("_delivery_count", "_message", "_state", "_subscription")

    def __init__(self, message: _Message, subscription: _MemorySubscription) -> None:
        self._message = message
        self._subscription = subscription
        self._delivery_count = message.delivery_count
        self._state = _State.PENDING

    @property
    def body(self) -> bytes:
        """The raw message bytes."""
        return self._message.body

    @property
    def message_id(self) -> str:
        """The publisher's message ID ('' if none)."""
        return self._message.message_id

    @property
    def reply_to(self) -> str:
        """Inbox address to answer on ('' if none)."""
        return self._message.reply_to

    @property
    def correlation_id(self) -> str:
        """Correlation ID to answer with ('' if none)."""
        return self._message.correlation_id

    @property
    def answer_by(self) -> float:
        """When the sender stops waiting for an answer (epoch seconds; 0.0: not said)."""
        return self._message.answer_by

    @property
    def delivery_count(self) -> int:
        """1 on first delivery, incremented on each redelivery."""
        return self._delivery_count

    @property
    def attempt(self) -> int:
        """The attempt its publisher gave the message (1 if it gave none)."""
        return self._message.attempt

    @property
    def user_id(self) -> str:
        """The ``user_id`` of the transport that published the message ('' if none)."""
        return self._message.user_id

    @property
    def pending(self) -> bool:
        """Neither settled nor given back yet."""
        return self._state is _State.PENDING

    async def ack(self) -> None:
        """Remove the message from the queue."""
        self._settle()

    async def requeue(self) -> None:
        """Put the message at the back of its queue for another attempt."""
        if self._settle():
            self._message.delivery_count += 1
            self._subscription.queue.ready.append(self._message)
            self._subscription.queue.dispatch()

    def give_back(self) -> None:
        """Return the unsettled message to the front of its queue (its consumer went away)."""
        self._state = _State.RETURNED
        self._message.delivery_count += 1
        self._subscription.queue.ready.appendleft(self._message)

    def _settle(self) -> bool:
        if self._state is _State.SETTLED:
            raise TransportError(f"delivery {self.message_id!r} was already settled")
        if self._state is _State.RETURNED:
            # Like an ack on a closed channel: the broker has already taken it back.
            log.info("transport.settle_after_return", message_id=self.message_id)
            return False
        self._state = _State.SETTLED
        self._subscription.settled(self)
        return True


class _MemorySubscription:
    """One consumer: at most ``prefetch`` unsettled deliveries, one handler task each."""

    def __init__(
        self,
        broker: MemoryBroker,
        name: str,
        queue: _Queue,
        handler: Handler,
        *,
        prefetch: int,
        drain_timeout: float,
    ) -> None:
        self._broker = broker
        self._name = name
        self.queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._drain_timeout = drain_timeout
        self._unsettled: dict[_MemoryDelivery, None] = {}  # insertion-ordered set
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = True

    def has_capacity(self) -> bool:
        """Whether the queue may hand this consumer another message."""
        return self._active and len(self._unsettled) < self._prefetch

    def busy(self) -> bool:
        """Whether a handler runs or a delivery is unsettled."""
        return bool(self._tasks or self._unsettled)

    def deliver(self, message: _Message) -> None:
        """Start a handler task for ``message``."""
        delivery = _MemoryDelivery(message, self)
        self._unsettled[delivery] = None
        # A fresh context, as with a real broker: the handler must not inherit the publisher's
        # log bindings (an activity's task and attempt on the host's log lines).
        task = asyncio.create_task(
            _run_handler(self._handler, delivery, self._name),
            name=f"flowmesh-consume-{self._name}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def settled(self, delivery: _MemoryDelivery) -> None:
        """``delivery`` was acked or requeued: its prefetch slot is free again."""
        self._unsettled.pop(delivery, None)
        self.queue.dispatch()

    async def cancel(self) -> None:
        """Stop receiving, let handlers finish for the drain timeout, cancel the rest and
        return their unsettled deliveries to the front of the queue."""
        if not self._active:
            return
        self._active = False
        self.queue.consumers.remove(self)
        await _stop_handlers(self._tasks, self._drain_timeout)
        for delivery in reversed(self._unsettled):
            delivery.give_back()
        self._unsettled.clear()
        self.queue.dispatch()
        if not self._tasks:
            self._broker._subscriptions.discard(self)
        self._broker._notify()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._active and not self._tasks:
            self._broker._subscriptions.discard(self)
        self._broker._notify()


class _MemoryInbox:
    """A private answer queue registered with the broker under its address."""

    def __init__(self, broker: MemoryBroker, address: str) -> None:
        self._broker = broker
        self._address = address
        self.buffer = _AnswerBuffer()

    @property
    def address(self) -> str:
        """Pass as ``reply_to`` so receivers can answer here."""
        return self._address

    def expecting(self, correlation_id: str) -> AbstractContextManager[None]:
        """Within the block, answers carrying ``correlation_id`` are kept until received."""
        return self.buffer.expecting(correlation_id)

    async def receive(
        self, correlation_id: str, timeout: float, *, sender: str = ""
    ) -> bytes | None:
        """The next answer carrying ``correlation_id`` (sent by broker user ``sender``, if
        given), or None after ``timeout`` seconds."""
        return await self.buffer.get(correlation_id, timeout, sender)

    async def close(self) -> None:
        """Delete the inbox; later answers to it are dropped."""
        self._broker._inboxes.pop(self._address, None)
        self.buffer.close()


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
        self._subscriptions: set[_MemorySubscription] = set()
        self._inboxes: set[_MemoryInbox] = set()
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
        self.broker._declare(app_id)

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
        touched: dict[int, _Queue] = {}
        now = time.time()
        for message in messages:
            try:
                self._check_size(message.body)
                self.broker._check_refused(message.app_id, self._user_id)
            except TransportError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(None)
            queue = self.broker._queue(message.app_id, message.kind)
            queue.ready.append(
                _Message(
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
        inbox = self.broker._inboxes.get(address)
        if inbox is None:
            log.debug("transport.reply_dropped", address=address)
            return
        inbox.buffer.put(correlation_id, bytes(body), self._user_id)

    async def consume(
        self, app_id: str, kind: QueueKind, handler: Handler, *, prefetch: int
    ) -> Subscription:
        """Deliver ``app_id``'s ``kind`` queue to ``handler``, ``prefetch`` at a time."""
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        queue = self.broker._queue(app_id, kind)
        subscription = _MemorySubscription(
            self.broker,
            queue_name(app_id, kind),
            queue,
            handler,
            prefetch=prefetch,
            drain_timeout=self._drain_timeout,
        )
        queue.consumers.append(subscription)
        self.broker._subscriptions.add(subscription)
        self._subscriptions.add(subscription)
        queue.dispatch()
        return subscription

    async def dead_letter(self, delivery: Delivery, app_id: str, reason: str) -> None:
        """Append the message to ``app_id``'s dead queue with ``reason``, then ack it."""
        self._check_open()
        if isinstance(delivery, _MemoryDelivery) and not delivery.pending:
            await delivery.ack()  # raises if settled, no-op if returned: same as a plain ack
            return
        dead = self.broker._queue(app_id, QueueKind.DEAD)
        dead.ready.append(
            _Message(
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
        inbox = _MemoryInbox(self.broker, _new_inbox_address())
        self.broker._inboxes[inbox.address] = inbox
        self._inboxes.add(inbox)
        return inbox

    async def queue_stats(self, app_id: str) -> QueueStats:
        """Ready messages and consumers of ``app_id``'s queues (zeros if never declared)."""
        self._check_open()

        def depth(kind: QueueKind) -> tuple[int, int]:
            queue = self.broker._queues.get(queue_name(app_id, kind))
            return (0, 0) if queue is None else (len(queue.ready), len(queue.consumers))

        work, reply, dead = depth(QueueKind.WORK), depth(QueueKind.REPLY), depth(QueueKind.DEAD)
        quarantine = depth(QueueKind.QUARANTINE)
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
