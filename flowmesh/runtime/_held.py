"""Dead-lettering messages held too long for an instance that never appeared.

An event or control message for an instance that does not exist yet is held in the store
(``WorkflowStore.hold``): it may have overtaken the start, since work and reply queues are
independent. The step that creates the instance applies what is held. What is still held
after ``WorkerOptions.hold_unknown_for`` (an instance that was never started, or was purged)
goes to the app's dead-letter queue with the reason, so an operator can find it, and is then
forgotten. Dead-lettering is at least once: a replica dying between the publish and the drop
leaves a duplicate in the dead-letter queue, never a loss.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from flowmesh.runtime._clock import Clock, sleep_or_wake
from flowmesh.store import HeldMessage, WorkflowStore
from flowmesh.transport import Transport


class HeldSweeper:
    """Moves messages held past their bound to the dead-letter queue; safe in every replica."""

    def __init__(
        self,
        app_id: str,
        store: WorkflowStore,
        transport: Transport,
        clock: Clock,
        *,
        hold_for: float,
        interval: float,
        log: Any,
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._transport = transport
        self._clock = clock
        self._hold_for = timedelta(seconds=hold_for)
        self._interval = interval
        self._log = log
        self._due: datetime | None = None  # earliest bound of a message held by this replica
        self._wake = asyncio.Event()

    def notify(self, held_at: datetime) -> None:
        """This replica just held a message: sweep no later than its bound (besides the
        regular ``interval``), so the bound holds under a virtual clock too."""
        due = held_at + self._hold_for
        if self._due is None or due < self._due:
            self._due = due
            self._wake.set()

    async def sweep(self) -> int:
        """Dead-letter every message held longer than the bound; returns how many."""
        # Held at least hold_for ago (the store lists arrivals strictly before ``before``).
        before = self._clock.now() - self._hold_for + timedelta(milliseconds=1)
        total = 0
        for instance_id, held in await self._store.expired_held(before):
            expired = [m for m in held if m.held_at < before]
            for message in expired:
                reason = (
                    f"held for instance {instance_id!r} of app {self._app_id!r} since "
                    f"{message.held_at.isoformat()}, but the instance did not exist within "
                    f"{self._hold_for.total_seconds():.0f} s"
                )
                await self._transport.dead_letter(_HeldDelivery(message), self._app_id, reason)
                self._log.warning(
                    "held message dead-lettered",
                    instance_id=instance_id,
                    message_id=message.message_id,
                    reason=reason,
                )
            await self._store.drop_held(instance_id, before)
            total += len(expired)
        return total

    async def run(self) -> None:
        """Sweep forever (cancel to stop)."""
        while True:
            self._wake.clear()
            wait = self._interval
            if self._due is not None:
                wait = min(wait, max((self._due - self._clock.now()).total_seconds(), 0.0))
            if await sleep_or_wake(self._clock, self._wake, wait):
                continue  # a nearer bound was noted: recompute the wait
            if self._due is not None and self._due <= self._clock.now():
                self._due = None
            try:
                await self.sweep()
            except Exception as exc:  # a sweeper must outlive any failure
                self._log.warning("held-message sweep failed", error=str(exc))


class _HeldDelivery:
    """A held message seen as a delivery, so the transport's dead-lettering (reason header,
    original sender) applies to it as to any other; settling it does nothing (its broker
    delivery was acked when it was held)."""

    def __init__(self, held: HeldMessage) -> None:
        self._held = held

    @property
    def body(self) -> bytes:
        return self._held.body

    @property
    def message_id(self) -> str:
        return self._held.message_id

    @property
    def reply_to(self) -> str:
        return ""

    @property
    def correlation_id(self) -> str:
        return ""

    @property
    def answer_by(self) -> float:
        return 0.0

    @property
    def delivery_count(self) -> int:
        return 1

    @property
    def attempt(self) -> int:
        return 1

    @property
    def user_id(self) -> str:
        return self._held.user_id

    async def ack(self) -> None:
        return None

    async def requeue(self) -> None:
        return None
