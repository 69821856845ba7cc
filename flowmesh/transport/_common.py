"""Pieces shared by the in-memory and the RabbitMQ transports: running delivery handlers,
stopping them, and buffering request/reply answers for inboxes."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


ANSWER_GRACE_S = 1.0
"""Seconds past a request's ``answer_by`` before its answer is skipped. Clocks of two
machines differ a little, and skipping an answer its sender still waits for costs the sender
its duplicate check (the request itself is unaffected)."""


def answer_deadline(within: float | None, now: float) -> float:
    """``Delivery.answer_by`` for a request published at ``now`` whose sender waits
    ``within`` seconds (0.0, no deadline, when ``within`` is None)."""
    return 0.0 if within is None else now + max(within, 0.0)


def answer_is_late(answer_by: float, now: float) -> bool:
    """Whether an answer sent at ``now`` comes after its sender stopped waiting."""
    return answer_by > 0.0 and now > answer_by + ANSWER_GRACE_S


def _new_inbox_address() -> str:
    """A fresh inbox address (the RabbitMQ transport names its inbox queues the same way)."""
    return f"fm.inbox.{uuid.uuid4().hex}"


_Answer = tuple[bytes, str]
"""An answer's body and the broker user that sent it."""

_DROPS_PER_LOG_LINE = 1000
"""An inbox logs its first dropped answer and then every 1000th (with the running total)."""


class _AnswerBuffer:
    """Answers that reached an inbox, by correlation ID, until someone receives them.

    An answer whose correlation ID is expected (see :meth:`expecting`) is kept until it is
    received or the expectation ends: a client that sends thousands of requests at once gets
    every answer, even those that arrive before the broker confirmed the request. Other
    answers (the requester timed out and left, or a notice came between two polls) are held
    up to ``limit``; the oldest is dropped first, so they cannot grow an inbox without bound.

    Each answer keeps the broker user that sent it, so a receiver that knows who must answer
    (:meth:`get`'s ``sender``) never takes an answer from anyone else.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._expected: dict[str, int] = {}
        self._claimed: dict[str, deque[_Answer]] = {}
        self._loose: dict[str, deque[_Answer]] = {}
        self._loose_count = 0
        self._dropped = 0
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._closed = False

    @contextmanager
    def expecting(self, correlation_id: str) -> Iterator[None]:
        """Keep answers carrying ``correlation_id`` beyond the limit while the block runs.

        Enter it before publishing the request; answers still unreceived at exit become
        ordinary (bounded) answers.
        """
        self._expected[correlation_id] = self._expected.get(correlation_id, 0) + 1
        try:
            yield
        finally:
            left = self._expected[correlation_id] - 1
            if left:
                self._expected[correlation_id] = left
            else:
                del self._expected[correlation_id]
                for answer in self._claimed.pop(correlation_id, ()):
                    self._put_loose(correlation_id, answer)

    def put(self, correlation_id: str, body: bytes, user_id: str = "") -> None:
        """Store an answer sent by broker user ``user_id`` and wake whoever waits for its
        correlation ID."""
        if self._closed:
            return
        answer = (body, user_id)
        if correlation_id in self._expected:
            self._claimed.setdefault(correlation_id, deque()).append(answer)
        else:
            self._put_loose(correlation_id, answer)
        self._wake(correlation_id)

    def _put_loose(self, correlation_id: str, answer: _Answer) -> None:
        if self._loose_count >= self._limit:
            oldest_id, oldest = next(iter(self._loose.items()))
            oldest.popleft()
            self._loose_count -= 1
            if not oldest:
                del self._loose[oldest_id]
            self._dropped += 1
            # One line per drop would flood the log exactly when the client is busiest.
            if self._dropped % _DROPS_PER_LOG_LINE == 1:
                log.warning(
                    "transport.inbox_full",
                    dropped_correlation_id=oldest_id,
                    dropped_total=self._dropped,
                    limit=self._limit,
                )
        self._loose.setdefault(correlation_id, deque()).append(answer)
        self._loose_count += 1

    def _take(self, correlation_id: str, sender: str) -> bytes | None:
        # Loose answers for an ID arrived before it was expected: oldest first.
        for answers in (self._loose, self._claimed):
            queued = answers.get(correlation_id)
            while queued:
                body, user_id = queued.popleft()
                if not queued:
                    del answers[correlation_id]
                if answers is self._loose:
                    self._loose_count -= 1
                if not sender or user_id == sender:
                    return body
                # Whoever may write to inboxes (any hosting app) could send this; it must
                # neither be taken for the real answer nor hide it.
                log.warning(
                    "transport.answer_refused",
                    correlation_id=correlation_id,
                    user_id=user_id,
                    expected_user_id=sender,
                )
        return None

    async def get(self, correlation_id: str, within: float, sender: str = "") -> bytes | None:
        """The next answer for ``correlation_id``, or None after ``within`` seconds.

        With ``sender``, answers from any other broker user are dropped (and logged).
        """
        body = self._take(correlation_id, sender)
        if body is not None:  # already here: no timer needed
            return body
        try:
            async with asyncio.timeout(within):
                while (body := self._take(correlation_id, sender)) is None:
                    if self._closed:
                        return None
                    await self._wait(correlation_id)
                return body
        except TimeoutError:
            return None

    def close(self) -> None:
        """Drop buffered answers; receivers return None."""
        self._closed = True
        self._claimed.clear()
        self._loose.clear()
        self._loose_count = 0
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
