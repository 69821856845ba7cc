"""Pieces shared by the in-memory and the RabbitMQ transports: running delivery handlers,
stopping them, and buffering request/reply answers for inboxes."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Protocol

import structlog

from flowmesh.transport._base import Delivery, Handler

log = structlog.get_logger("flowmesh.transport")

_UNWIND_GRACE = 5.0
"""Seconds a cancelled handler gets to unwind before its consumer gives up on it."""


class _TrackedDelivery(Delivery, Protocol):
    """A delivery that knows whether it was settled yet."""

    @property
    def pending(self) -> bool:
        """Neither settled nor given back yet."""

    async def requeue(self) -> None:
        """Give the message back to the queue for another attempt."""


async def _run_handler(handler: Handler, delivery: _TrackedDelivery, queue: str) -> None:
    """Run ``handler`` on ``delivery`` so that nothing escapes and nothing stays unsettled.

    A handler that raises or returns without settling gets its delivery requeued: an
    unsettled delivery would hold a prefetch slot for good. (Shared with the RabbitMQ
    transport.)
    """
    try:
        await handler(delivery)
    except Exception:
        log.exception("transport.handler_failed", queue=queue, message_id=delivery.message_id)
    else:
        if delivery.pending:
            log.warning(
                "transport.handler_left_unsettled", queue=queue, message_id=delivery.message_id
            )
    if delivery.pending:
        await delivery.requeue()


async def _stop_handlers(tasks: Iterable[asyncio.Task[None]], drain_timeout: float) -> None:
    """Let running handlers finish for up to ``drain_timeout`` seconds, then cancel the rest.

    Skips the calling task: a handler may cancel its own subscription and must not wait for
    itself. (Shared with the RabbitMQ transport.)
    """
    running = [task for task in tasks if task is not asyncio.current_task()]
    if running and drain_timeout > 0:
        await asyncio.wait(running, timeout=drain_timeout)
    late = [task for task in running if not task.done()]
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=_UNWIND_GRACE)


def _new_inbox_address() -> str:
    """A fresh inbox address (the RabbitMQ transport names its inbox queues the same way)."""
    return f"fm.inbox.{uuid.uuid4().hex}"


class _AnswerBuffer:
    """Answers that reached an inbox, by correlation ID, until someone receives them.

    Holds at most ``limit`` answers: the oldest is dropped first, so answers nobody asks for
    (the requester timed out and left) cannot grow an inbox without bound.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._answers: dict[str, deque[bytes]] = {}
        self._count = 0
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._closed = False

    def put(self, correlation_id: str, body: bytes) -> None:
        """Store an answer and wake whoever waits for its correlation ID."""
        if self._closed:
            return
        if self._count >= self._limit:
            oldest_id, oldest = next(iter(self._answers.items()))
            oldest.popleft()
            self._count -= 1
            if not oldest:
                del self._answers[oldest_id]
            log.warning("transport.inbox_full", dropped_correlation_id=oldest_id)
        self._answers.setdefault(correlation_id, deque()).append(body)
        self._count += 1
        self._wake(correlation_id)

    async def get(self, correlation_id: str, within: float) -> bytes | None:
        """The next answer for ``correlation_id``, or None after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while True:
                    queued = self._answers.get(correlation_id)
                    if queued:
                        self._count -= 1
                        body = queued.popleft()
                        if not queued:
                            del self._answers[correlation_id]
                        return body
                    if self._closed:
                        return None
                    await self._wait(correlation_id)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Drop buffered answers; receivers return None."""
        self._closed = True
        self._answers.clear()
        self._count = 0
        for correlation_id in list(self._waiters):
            self._wake(correlation_id)

    async def _wait(self, correlation_id: str) -> None:
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(correlation_id, [])
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(correlation_id, None)

    def _wake(self, correlation_id: str) -> None:
        for waiter in self._waiters.get(correlation_id, ()):
            if not waiter.done():
                waiter.set_result(None)
