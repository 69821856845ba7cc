"""The in-process broker of the memory transport: queues, inboxes, and knowing when all is
quiet. :class:`MemoryBroker` is re-exported by :mod:`flowmesh.transport.memory`.

The broker plays RabbitMQ's part; each :class:`~flowmesh.transport.memory.MemoryTransport`
is a connection to it. The broker's methods under "connection side" are what those
connections call (RabbitMQ's protocol, in miniature); tests use the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from flowmesh._errors import TransportError
from flowmesh.transport._base import QueueKind, queue_name
from flowmesh.transport._common import _AnswerBuffer


@dataclass(slots=True)
class Message:
    """A message as the broker holds it."""

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


class Consumer(Protocol):
    """What a queue and the broker need from a subscription."""

    def has_capacity(self) -> bool:
        """Whether the queue may hand this consumer another message."""

    def deliver(self, message: Message) -> None:
        """Take ``message`` (counts against the consumer's prefetch until settled)."""

    def busy(self) -> bool:
        """Whether a handler runs or a delivery is unsettled."""


class MemoryQueue:
    """Ready messages and the consumers they are handed to in turn."""

    __slots__ = ("_consumers", "_ready", "_turn")

    def __init__(self) -> None:
        self._ready: deque[Message] = deque()
        self._consumers: list[Consumer] = []
        self._turn = 0

    @property
    def ready(self) -> int:
        """Messages waiting for a consumer."""
        return len(self._ready)

    @property
    def consumers(self) -> int:
        """Consumers attached."""
        return len(self._consumers)

    def messages(self) -> Iterator[Message]:
        """The waiting messages, oldest first."""
        return iter(self._ready)

    def put(self, message: Message) -> None:
        """Append ``message`` (call :meth:`dispatch` to hand it out)."""
        self._ready.append(message)

    def put_back(self, message: Message) -> None:
        """Return ``message`` to the front, ahead of the others (its consumer went away)."""
        self._ready.appendleft(message)

    def attach(self, consumer: Consumer) -> None:
        """Hand messages to ``consumer`` too, in turn with the others."""
        self._consumers.append(consumer)

    def detach(self, consumer: Consumer) -> None:
        """Hand ``consumer`` no more messages."""
        self._consumers.remove(consumer)

    def dispatch(self) -> None:
        """Hand ready messages to consumers with spare prefetch, round robin."""
        while self._ready:
            consumer = self._next_consumer()
            if consumer is None:
                return
            consumer.deliver(self._ready.popleft())

    def _next_consumer(self) -> Consumer | None:
        count = len(self._consumers)
        for offset in range(count):
            index = (self._turn + offset) % count
            if self._consumers[index].has_capacity():
                self._turn = index + 1
                return self._consumers[index]
        return None


class MemoryBroker:
    """The queues shared by the :class:`~flowmesh.transport.memory.MemoryTransport` instances
    connected to it."""

    def __init__(self) -> None:
        self._queues: dict[str, MemoryQueue] = {}
        self._inboxes: dict[str, _AnswerBuffer] = {}
        self._consumers: set[Consumer] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._refused: dict[str, str] = {}

    def dead_letters(self, app_id: str) -> list[tuple[bytes, str]]:
        """``(body, reason)`` of each message waiting in ``app_id``'s dead queue, oldest first."""
        queue = self._queues.get(queue_name(app_id, QueueKind.DEAD))
        return [] if queue is None else [(m.body, m.reason) for m in queue.messages()]

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
        if any(consumer.busy() for consumer in self._consumers):
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

    # -- connection side: what MemoryTransport and its subscriptions call ----------------------

    def declare(self, app_id: str) -> None:
        """Create ``app_id``'s queues if missing."""
        for kind in QueueKind:
            self._queues.setdefault(queue_name(app_id, kind), MemoryQueue())

    def queue(self, app_id: str, kind: QueueKind) -> MemoryQueue:
        """``app_id``'s ``kind`` queue (its queues are declared first if missing)."""
        self.declare(app_id)
        return self._queues[queue_name(app_id, kind)]

    def depth(self, app_id: str, kind: QueueKind) -> tuple[int, int]:
        """Ready messages and consumers of ``app_id``'s ``kind`` queue (zeros if missing)."""
        queue = self._queues.get(queue_name(app_id, kind))
        return (0, 0) if queue is None else (queue.ready, queue.consumers)

    def check_refused(self, app_id: str, user_id: str) -> None:
        """Raise :class:`~flowmesh.TransportError` if messages for ``app_id`` are refused."""
        reason = self._refused.get(app_id)
        if reason is not None:
            raise TransportError(
                f"user {user_id or '?'!r} may not publish to app {app_id!r}: {reason}"
            )

    def add_inbox(self, address: str, buffer: _AnswerBuffer) -> None:
        """Route answers for ``address`` into ``buffer``."""
        self._inboxes[address] = buffer

    def remove_inbox(self, address: str) -> None:
        """Drop answers for ``address`` from now on."""
        self._inboxes.pop(address, None)

    def answer(self, address: str, correlation_id: str, body: bytes, user_id: str) -> bool:
        """Put an answer into the inbox at ``address``; False if there is none."""
        buffer = self._inboxes.get(address)
        if buffer is None:
            return False
        buffer.put(correlation_id, body, user_id)
        return True

    def track(self, consumer: Consumer) -> None:
        """Count ``consumer``'s work in :meth:`is_idle` until :meth:`untrack`."""
        self._consumers.add(consumer)

    def untrack(self, consumer: Consumer) -> None:
        """``consumer`` is cancelled and its last handler finished."""
        self._consumers.discard(consumer)

    def notify(self) -> None:
        """Something finished: wake ``wait_idle`` callers if the broker is now idle."""
        if self._idle_waiters and self.is_idle():
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()


__all__ = ["Consumer", "MemoryBroker", "MemoryQueue", "Message"]
