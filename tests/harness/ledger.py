"""A Jepsen-style ledger: what was started, what it must return, and what history proves.

Drive N workflows through a :class:`Ledger`, inject faults, wait for quiescence, then
:meth:`Ledger.verify` every instance against the hosting app's store: completed exactly once
with the expected output, every task result applied once, no outbox entry or timer left.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from flowmesh import Client, WorkflowNotFoundError, WorkflowStatus
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    TimerCreated,
    TimerFired,
    WorkflowCompleted,
)
from flowmesh.store.redis import RedisStore


@dataclass
class LedgerReport:
    """Figures for the closing note: driven, completed, lost, duplicated, problems."""

    started: int = 0
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong_output: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every workflow completed exactly once with the right output."""
        return not (self.lost or self.duplicated or self.wrong_output or self.leftovers)

    def __str__(self) -> str:
        return (
            f"started={self.started} completed={self.completed} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} wrong_output={len(self.wrong_output)} "
            f"leftovers={len(self.leftovers)}"
            + (f"\nlost: {self.lost[:10]}" if self.lost else "")
            + (f"\nduplicated: {self.duplicated[:10]}" if self.duplicated else "")
            + (f"\nwrong output: {self.wrong_output[:10]}" if self.wrong_output else "")
            + (f"\nleftovers: {self.leftovers[:10]}" if self.leftovers else "")
        )


@dataclass
class Ledger:
    """Workflows started on one hosting app and the output each must produce."""

    app_id: str
    expected: dict[str, object] = field(default_factory=dict)

    async def start(
        self, client: Client, workflow: str, value: object, expected: object, *, instance_id: str
    ) -> None:
        """Start one workflow and remember what it must return."""
        await client.start_workflow(workflow, value, app_id=self.app_id, instance_id=instance_id)
        self.expected[instance_id] = expected

    async def wait_all(self, client: Client, timeout: float) -> dict[str, WorkflowStatus]:
        """Poll until every instance is finished or ``timeout`` (seconds) passes."""
        deadline = time.monotonic() + timeout
        pending = set(self.expected)
        statuses: dict[str, WorkflowStatus] = {}
        while pending and time.monotonic() < deadline:
            for instance_id in sorted(pending):
                try:
                    state = await client.get_workflow(instance_id, app_id=self.app_id).describe()
                except (WorkflowNotFoundError, TimeoutError):
                    continue
                if state.status.is_terminal or state.status is WorkflowStatus.STALLED:
                    statuses[instance_id] = state.status
                    pending.discard(instance_id)
            if pending:
                await asyncio.sleep(0.5)
        return statuses

    async def wait_quiet(self, store: RedisStore, timeout: float = 30.0) -> None:
        """Wait (bounded) until no outbox entry or timer is left: crash leftovers are swept
        by the outbox relay within two sweep intervals."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outbox = await store.list_outbox(limit=10_000)
            if not outbox and await store.next_timer_at() is None:
                return
            await asyncio.sleep(0.5)

    async def verify(self, store: RedisStore) -> LedgerReport:
        """Check every started instance against its stored history (after ``wait_quiet``)."""
        await self.wait_quiet(store)
        report = LedgerReport(started=len(self.expected))
        for instance_id, expected in sorted(self.expected.items()):
            record = await store.load(instance_id)
            if record is None or record.state.status is not WorkflowStatus.COMPLETED:
                report.lost.append(f"{instance_id}: {record.state.status if record else 'missing'}")
                continue
            report.completed += 1
            history = record.history
            kinds = Counter(type(e).__name__ for e in history)
            result_seqs = [
                e.seq
                for e in history
                if isinstance(
                    e,
                    ActivityCompleted
                    | ActivityFailed
                    | ChildWorkflowCompleted
                    | ChildWorkflowFailed
                    | TimerFired,
                )
            ]
            scheduled = [e.seq for e in history if isinstance(e, ActivityScheduled | TimerCreated)]
            if (
                kinds["WorkflowCompleted"] != 1
                or len(result_seqs) != len(set(result_seqs))
                or len(scheduled) != len(set(scheduled))
                or not isinstance(history[-1], WorkflowCompleted)
            ):
                report.duplicated.append(instance_id)
            if record.state.output != expected:
                report.wrong_output.append(
                    f"{instance_id}: {record.state.output!r} != {expected!r}"
                )
        outbox = await store.list_outbox(limit=10_000)
        report.leftovers += [
            f"outbox {e.instance_id}/{e.entry_id}" for e in outbox if e.instance_id in self.expected
        ]
        next_timer = await store.next_timer_at()
        if next_timer is not None:
            report.leftovers.append(f"a timer is still pending (due {next_timer.isoformat()})")
        return report
