"""A Jepsen-style ledger: what was started, what it must return, what history proves and what
the activities say they did.

Drive N workflows through a :class:`Ledger`, inject faults, wait for quiescence, then
:meth:`Ledger.verify` every instance against three kinds of evidence:

* the hosting app's store: each instance completed with the expected output, every step's
  events are in its history once, no outbox entry or timer is left;
* the side-effect log (:mod:`tests.harness.effects`): how often each activity task *actually
  ran*. Activities run at least once, so runs beyond one per task are re-executions: counted
  and reported, not a failure. A run of a task that no history scheduled is a failure (a side
  effect of a step that was never committed);
* the hosting workers' logs: the "workflow completed" line a replica writes after committing
  an instance's completion. Two such lines mean the completion was applied twice.

:func:`audit` is the pure part (evidence in, :class:`LedgerReport` out), tested without servers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flowmesh import Client, WorkflowNotFoundError, WorkflowStatus
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    TimerCreated,
    TimerFired,
    WorkflowCompleted,
)
from flowmesh.store import InstanceRecord, WorkflowStore
from tests.harness.effects import ActivityRun, TaskKey, read_runs
from tests.harness.processes import WorkerProcesses

_RESULTS = (
    ActivityCompleted,
    ActivityFailed,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    TimerFired,
)
_REQUESTS = (ActivityScheduled, ChildWorkflowScheduled, TimerCreated)


@dataclass
class LedgerReport:
    """What a fault test proved: nothing lost, nothing applied twice, and how many activity
    runs it took (re-executions are allowed: activities are at least once)."""

    started: int = 0
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    """Instances not completed, or completed with the wrong output."""
    applied_twice: list[str] = field(default_factory=list)
    """Instances with a step's effect in history twice, or a completion committed twice."""
    unexplained: list[str] = field(default_factory=list)
    """Activity runs of tasks no history scheduled (side effects of uncommitted steps)."""
    leftovers: list[str] = field(default_factory=list)
    """Outbox entries or timers still in the store after quiescence."""
    tasks: int = 0
    """Activity tasks the instances' histories scheduled (one per attempt)."""
    runs: int = 0
    """Times those tasks actually ran, according to the side-effect log."""
    reexecuted: int = 0
    """Runs beyond the first of each task."""
    reexecuted_by_activity: Counter[str] = field(default_factory=Counter)
    never_ran: int = 0
    """Scheduled tasks with no run (normal for a poison task's last delivery or a timeout)."""
    torn_lines: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was lost, applied twice, unexplained or left over."""
        return not (self.lost or self.applied_twice or self.unexplained or self.leftovers)

    def __str__(self) -> str:
        """The one-line summary every fault test prints."""
        line = (
            f"started={self.started} completed={self.completed} lost={len(self.lost)} "
            f"applied_twice={len(self.applied_twice)} reexecuted={self.reexecuted} "
            f"(activity runs {self.runs} for {self.tasks} tasks"
        )
        if self.reexecuted_by_activity:
            line += "; again: " + ", ".join(
                f"{name} {n}" for name, n in sorted(self.reexecuted_by_activity.items())
            )
        line += ")"
        extras = {
            "never_ran": self.never_ran,
            "unexplained": len(self.unexplained),
            "leftovers": len(self.leftovers),
            "torn_lines": self.torn_lines,
        }
        return line + "".join(f" {name}={n}" for name, n in extras.items() if n)

    def explain(self) -> str:
        """The summary and up to ten examples of each problem: the assertion message."""
        parts = [str(self)]
        for title, items in (
            ("lost", self.lost),
            ("applied twice", self.applied_twice),
            ("unexplained runs", self.unexplained),
            ("leftovers", self.leftovers),
        ):
            if items:
                parts.append(f"{title}: {items[:10]}")
        return "\n".join(parts)


def audit(
    app_id: str,
    expected: Mapping[str, object],
    records: Mapping[str, InstanceRecord | None],
    runs: Iterable[ActivityRun],
    completions: Mapping[str, int],
) -> LedgerReport:
    """Check the instances of ``expected`` (hosted by ``app_id``) against their stored
    ``records``, the activity ``runs`` of the side-effect log and the number of "workflow
    completed" lines the hosting replicas logged per instance (``completions``)."""
    report = LedgerReport(started=len(expected))
    scheduled: dict[TaskKey, str] = {}
    for instance_id, want in sorted(expected.items()):
        record = records.get(instance_id)
        if record is None:
            report.lost.append(f"{instance_id}: missing")
            continue
        history = record.history
        for event in history:
            if isinstance(event, ActivityScheduled):
                scheduled[(app_id, instance_id, event.seq, event.attempt)] = event.name
        twice = _twice_in_history(record)
        if completions.get(instance_id, 0) > 1:
            twice.append(f"completion committed {completions[instance_id]} times (log)")
        if twice:
            report.applied_twice.append(f"{instance_id}: {'; '.join(twice)}")
        if record.state.status is not WorkflowStatus.COMPLETED:
            report.lost.append(f"{instance_id}: {record.state.status.value}")
            continue
        report.completed += 1
        if record.state.output != want:
            report.lost.append(f"{instance_id}: output {record.state.output!r} != {want!r}")

    per_task = Counter(
        run.task for run in runs if run.host_app_id == app_id and run.instance_id in expected
    )
    report.tasks = len(scheduled)
    for task, count in sorted(per_task.items()):
        name = scheduled.get(task)
        if name is None:
            report.unexplained.append(f"{task}: ran {count}x, never scheduled")
            continue
        report.runs += count
        if count > 1:
            report.reexecuted += count - 1
            report.reexecuted_by_activity[name] += count - 1
    report.never_ran = sum(1 for task in scheduled if task not in per_task)
    return report


def _twice_in_history(record: InstanceRecord) -> list[str]:
    """What in one history shows a step applied twice."""
    history = record.history
    problems = []
    results = Counter(e.seq for e in history if isinstance(e, _RESULTS))
    requests = Counter(e.seq for e in history if isinstance(e, _REQUESTS))
    problems += [f"result for seq {seq} applied {n} times" for seq, n in results.items() if n > 1]
    problems += [f"seq {seq} scheduled {n} times" for seq, n in requests.items() if n > 1]
    ends = [i for i, e in enumerate(history) if isinstance(e, WorkflowCompleted)]
    if len(ends) > 1:
        problems.append(f"completed {len(ends)} times in history")
    if ends and ends[-1] != len(history) - 1:
        problems.append(f"{len(history) - 1 - ends[-1]} events after completion")
    return problems


@dataclass
class Ledger:
    """Workflows started on one hosting app and the output each must produce.

    ``workers`` are the test's worker processes: the ledger reads their side-effect log and
    the hosting replicas' logs when it verifies.
    """

    app_id: str
    workers: WorkerProcesses
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

    async def wait_quiet(self, store: WorkflowStore, timeout: float = 30.0) -> None:
        """Wait (bounded) until no outbox entry or timer is left: crash leftovers are swept
        by the outbox relay within two sweep intervals."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outbox = await store.list_outbox(limit=10_000)
            if not outbox and await store.next_timer_at() is None:
                return
            await asyncio.sleep(0.5)

    async def verify(self, store: WorkflowStore) -> LedgerReport:
        """Check every started instance against its stored history, the side-effect log and
        the hosting replicas' logs (after ``wait_quiet``)."""
        await self.wait_quiet(store)
        records = {i: await store.load(i) for i in sorted(self.expected)}
        runs, torn = read_runs(self.workers.effects_path)
        report = audit(
            self.app_id, self.expected, records, runs, self.workers.completions(self.app_id)
        )
        report.torn_lines = torn
        outbox = await store.list_outbox(limit=10_000)
        report.leftovers += [
            f"outbox {e.instance_id}/{e.entry_id}" for e in outbox if e.instance_id in self.expected
        ]
        next_timer = await store.next_timer_at()
        if next_timer is not None:
            report.leftovers.append(f"a timer is still pending (due {next_timer.isoformat()})")
        return report
