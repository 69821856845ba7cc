"""Consuming from the in-process broker: deliveries, their settlement, subscriptions and
inboxes of :class:`~flowmesh.transport.memory.MemoryTransport`."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from contextlib import AbstractContextManager

import structlog

from flowmesh._errors import TransportError
from flowmesh.transport._base import Handler
from flowmesh.transport._common import _AnswerBuffer, _run_handler, _stop_handlers
from flowmesh.transport._memory_broker import MemoryBroker, MemoryQueue, Message

log = structlog.get_logger("flowmesh.transport")


class _State(enum.Enum):
    PENDING = enum.auto()
    SETTLED = enum.auto()
    RETURNED = enum.auto()
    """Given back to the queue by the transport (consumer cancelled); later settles are no-ops."""


class MemoryDelivery:
    """A message handed to one consumer, settled through it."""

    __slots__ = ("_delivery_count", "_message", "_state", "_subscription")

    def __init__(self, message: Message, subscription: MemorySubscription) -> None:
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
            self._subscription.requeue(self._message)

    def give_back(self) -> Message:
        """Mark the unsettled message returned (its consumer went away) and return it, to go
        back to the front of its queue."""
        self._state = _State.RETURNED
        self._message.delivery_count += 1
        return self._message

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


class MemorySubscription:
    """One consumer: at most ``prefetch`` unsettled deliveries, one handler task each.

    The queue calls :meth:`has_capacity` and :meth:`deliver`, the broker :meth:`busy`, and
    its deliveries :meth:`settled` and :meth:`requeue`; nothing reaches into its state.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        name: str,
        queue: MemoryQueue,
        handler: Handler,
        *,
        prefetch: int,
        drain_timeout: float,
    ) -> None:
        self._broker = broker
        self._name = name
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._drain_timeout = drain_timeout
        self._unsettled: dict[MemoryDelivery, None] = {}  # insertion-ordered set
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = True

    def start(self) -> None:
        """Attach to the queue and take what is ready."""
        self._queue.attach(self)
        self._broker.track(self)
        self._queue.dispatch()

    def has_capacity(self) -> bool:
        """Whether the queue may hand this consumer another message."""
        return self._active and len(self._unsettled) < self._prefetch

    def busy(self) -> bool:
        """Whether a handler runs or a delivery is unsettled."""
        return bool(self._tasks or self._unsettled)

    def deliver(self, message: Message) -> None:
        """Start a handler task for ``message``."""
        delivery = MemoryDelivery(message, self)
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

    def settled(self, delivery: MemoryDelivery) -> None:
        """``delivery`` was acked or requeued: its prefetch slot is free again."""
        self._unsettled.pop(delivery, None)
        self._queue.dispatch()

    def requeue(self, message: Message) -> None:
        """Put ``message`` (of a delivery just settled) at the back of the queue."""
        self._queue.put(message)
        self._queue.dispatch()

    async def cancel(self) -> None:
        """Stop receiving, let handlers finish for the drain timeout, cancel the rest and
        return their unsettled deliveries to the front of the queue."""
        if not self._active:
            return
        self._active = False
        self._queue.detach(self)
        await _stop_handlers(self._tasks, self._drain_timeout)
        for delivery in reversed(self._unsettled):
            self._queue.put_back(delivery.give_back())
        self._unsettled.clear()
        self._queue.dispatch()
        if not self._tasks:
            self._broker.untrack(self)
        self._broker.notify()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._active and not self._tasks:
            self._broker.untrack(self)
        self._broker.notify()


class MemoryInbox:
    """A private answer queue registered with the broker under its address."""

    def __init__(self, broker: MemoryBroker, address: str) -> None:
        self._broker = broker
        self._address = address
        self._buffer = _AnswerBuffer()
        broker.add_inbox(address, self._buffer)

    @property
    def address(self) -> str:
        """Pass as ``reply_to`` so receivers can answer here."""
        return self._address

    def expecting(self, correlation_id: str) -> AbstractContextManager[None]:
        """Within the block, answers carrying ``correlation_id`` are kept until received."""
        return self._buffer.expecting(correlation_id)

    async def receive(
        self, correlation_id: str, timeout: float, *, sender: str = ""
    ) -> bytes | None:
        """The next answer carrying ``correlation_id`` (sent by broker user ``sender``, if
        given), or None after ``timeout`` seconds."""
        return await self._buffer.get(correlation_id, timeout, sender)

    async def close(self) -> None:
        """Delete the inbox; later answers to it are dropped."""
        self._broker.remove_inbox(self._address)
        self._buffer.close()


__all__ = ["MemoryDelivery", "MemoryInbox", "MemorySubscription"]
