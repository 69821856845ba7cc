"""Clocks: the runtime's only source of time (the engine reads time from history)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall time and sleeping, injectable so tests can skip time."""

    def now(self) -> datetime:
        """Current UTC time (timezone-aware)."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Current UTC time."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """Sleep in real time."""
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """A clock that only moves when told to: :meth:`advance_to` wakes due sleepers.

    Used by the embedded test environment's time skipping: when nothing is running, it
    jumps straight to the next sleeper's deadline, so a 30-day timer fires in milliseconds.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> datetime:
        """Current virtual time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time has advanced by ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self._now + timedelta(seconds=seconds)
        heapq.heappush(self._sleepers, (deadline, next(self._counter), future))
        await future

    def next_deadline(self) -> datetime | None:
        """The earliest deadline of a live sleeper, or None."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def advance_to(self, moment: datetime) -> None:
        """Move time forward to ``moment`` and wake every sleeper due by then."""
        self._now = max(self._now, moment)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


async def sleep_or_wake(clock: Clock, wake: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` on ``clock`` unless ``wake`` is set first; True if woken early.

    For the background loops (timers, held messages) that poll at an interval but must react
    at once when this replica creates something due sooner.
    """
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        done, _ = await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
    return waker in done and sleeper not in done
