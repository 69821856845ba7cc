"""The timer poller: turns due durable timers into ``TimerDue`` messages.

Timers live in the store. Any replica may claim a due timer; the claim hides it from other
replicas for a lease, and the step that applies ``TimerFired`` removes it. So a timer fires
once in history even if it is published twice (a replica died mid-claim, or leases overlap).

If publishing claimed timers fails (the broker is down or reconnecting), the poller keeps them
and publishes them first on its next poll: otherwise they would stay hidden, by this replica's
own claim, for the whole lease (30 s by default) after the broker came back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flowmesh.codec import Codec
from flowmesh.model import TimerDue
from flowmesh.runtime._clock import Clock, sleep_or_wake
from flowmesh.runtime._options import WorkerOptions
from flowmesh.store import TimerEntry, WorkflowStore
from flowmesh.transport import Outgoing, QueueKind, Transport


class TimerPoller:
    """Publishes due timers of one app to its own reply queue."""

    def __init__(
        self,
        app_id: str,
        *,
        store: WorkflowStore,
        transport: Transport,
        codec: Codec,
        clock: Clock,
        options: WorkerOptions,
        log: Any,
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._transport = transport
        self._codec = codec
        self._clock = clock
        self._options = options
        self._log = log
        self._wake = asyncio.Event()
        self._unpublished: list[TimerEntry] = []
        """Timers this replica claimed but failed to publish: retried before claiming more."""

    def notify(self) -> None:
        """A timer was just created here: re-check how long to sleep."""
        self._wake.set()

    async def fire_due(self) -> int:
        """Claim and publish every due timer; returns how many were published."""
        total = 0
        while True:
            # Timers claimed by an earlier, failed poll go first. Past their lease another
            # replica may publish them too: a duplicate TimerDue changes no history.
            due = self._unpublished or await self._store.claim_due_timers(
                self._clock.now(), self._options.timer_lease
            )
            if not due:
                return total
            self._unpublished = due
            await self._transport.publish(
                [
                    Outgoing(
                        self._app_id,
                        QueueKind.REPLY,
                        self._codec.encode_message(TimerDue(t.instance_id, t.seq, t.run_id)),
                        f"timer:{t.instance_id}#{t.seq}",
                    )
                    for t in due
                ]
            )
            self._unpublished = []
            total += len(due)

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            self._wake.clear()
            try:
                await self.fire_due()
                next_at = await self._store.next_timer_at()
            except Exception as exc:  # the poller must outlive any failure
                self._log.warning("timer poll failed", error=str(exc))
                next_at = None
            wait = self._options.timer_poll_interval
            if next_at is not None:
                wait = min(wait, max((next_at - self._clock.now()).total_seconds(), 0.0))
            await sleep_or_wake(self._clock, self._wake, wait)
