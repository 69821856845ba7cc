"""The fault ledger itself, without servers: it must fail when a step is applied twice and
count (not fail on) an activity that ran twice.

Histories come from running the real fault workflow ``chain`` in the in-memory replayer; runs
are written to a real side-effect log through ``record_run``, as the activities do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowmesh import ActivityContext, WorkflowStatus
from flowmesh.model import ActivityCompleted, ActivityScheduled, HistoryEvent, WorkflowState
from flowmesh.store import Commit, InstanceRecord
from flowmesh.store.memory import MemoryStore
from flowmesh.testing.history import run_to_completion, split_steps
from tests.faults.apps import chain_result, host
from tests.harness.effects import EFFECTS_ENV, read_runs, record_run
from tests.harness.ledger import Ledger, LedgerReport, audit
from tests.harness.processes import Services, WorkerProcesses, completion_counts

HOST = "fault-host"
STEPS = 3  # chain(3): double(0), a timer, double(1), double(2)


def chain_history(instance_id: str) -> list[HistoryEvent]:
    """The history ``chain(STEPS)`` commits when nothing goes wrong."""
    result = run_to_completion(
        host.workflows,
        "chain",
        STEPS,
        activities={"double": lambda value: 2 * value},
        instance_id=instance_id,
        app_id=HOST,
    )
    assert result.status is WorkflowStatus.COMPLETED
    return list(result.history)


def run_tasks(history: list[HistoryEvent], instance_id: str, times: int = 1) -> None:
    """Record ``times`` runs of every activity task ``history`` scheduled, as fault-act's
    activities would (``EFFECTS_ENV`` must name the log)."""
    for event in history:
        if isinstance(event, ActivityScheduled):
            ctx = ActivityContext(
                instance_id=instance_id,
                seq=event.seq,
                attempt=event.attempt,
                name=event.name,
                app_id=event.app_id,
                host_app_id=HOST,
            )
            for _ in range(times):
                record_run(ctx)


async def verify(
    tmp_path: Path, histories: dict[str, list[HistoryEvent]], expected: dict[str, object]
) -> LedgerReport:
    """Store ``histories`` as completed instances and verify ``expected`` against them."""
    store = MemoryStore(HOST)
    for instance_id, history in histories.items():
        state = WorkflowState(
            instance_id, HOST, "chain", WorkflowStatus.COMPLETED, STEPS, chain_result(STEPS),
            history_length=len(history), version=1,
        )  # fmt: skip
        await store.commit(Commit(instance_id, 0, state, append=tuple(history)))
    ledger = Ledger(HOST, WorkerProcesses(Services("", "", "", ""), tmp_path))
    ledger.expected.update(expected)
    report = await ledger.verify(store)
    print(f"ledger: {report}")
    return report


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The side-effect log the ledger reads, named in the environment as for a worker."""
    path = WorkerProcesses(Services("", "", "", ""), tmp_path).effects_path
    monkeypatch.setenv(EFFECTS_ENV, str(path))
    return path


async def test_a_clean_run_is_all_completed_nothing_twice_nothing_reexecuted(
    tmp_path: Path, effects: Path
) -> None:
    """Two chains, each task run once: the one-line summary shows exactly that."""
    histories = {i: chain_history(i) for i in ("a", "b")}
    for instance_id, history in histories.items():
        run_tasks(history, instance_id)
    report = await verify(tmp_path, histories, dict.fromkeys(histories, chain_result(STEPS)))
    assert report.ok, report.explain()
    assert str(report) == (
        "started=2 completed=2 lost=0 applied_twice=0 reexecuted=0 (activity runs 6 for 6 tasks)"
    )
    first = read_runs(effects)[0][0]
    assert (first.host_app_id, first.instance_id, first.seq, first.attempt) == (HOST, "a", 0, 1)
    assert (first.activity, first.app_id, first.run_id) == ("double", "fault-act", "")


async def test_a_completed_step_committed_twice_fails_verify(tmp_path: Path, effects: Path) -> None:
    """The step that applied ``double(1)``'s result (and scheduled ``double(2)``) is in
    history twice: verify is not ok and names the result applied twice and the task
    scheduled twice, even though every activity ran once."""
    history = chain_history("twice")
    steps = split_steps(history)
    k = next(
        n
        for n, events in enumerate(steps)
        if any(isinstance(e, ActivityCompleted) and e.seq == 2 for e in events)
    )
    doubled = [e for s in (*steps[: k + 1], steps[k], *steps[k + 1 :]) for e in s]
    run_tasks(history, "twice")
    report = await verify(tmp_path, {"twice": doubled}, {"twice": chain_result(STEPS)})
    assert not report.ok
    assert report.lost == [] and report.reexecuted == 0
    assert report.applied_twice == [
        "twice: result for seq 2 applied 2 times; seq 3 scheduled 2 times"
    ]
    assert "applied_twice=1" in str(report) and "applied twice: ['twice:" in report.explain()


async def test_a_completion_committed_twice_fails_verify(tmp_path: Path, effects: Path) -> None:
    """Twice completed: in history (two WorkflowCompleted), or by two hosting replicas that
    each logged "workflow completed" after their commit."""
    history = chain_history("done-twice")
    run_tasks(history, "done-twice")
    report = await verify(
        tmp_path, {"done-twice": [*history, history[-1]]}, {"done-twice": chain_result(STEPS)}
    )
    assert report.applied_twice == ["done-twice: completed 2 times in history"]

    logs = tmp_path / "host-0.log"
    done = {"event": "workflow completed", "instance_id": "logged-twice", "level": "info"}
    logs.write_text(json.dumps(done) + "\nnot json\n" + json.dumps(done) + '\n{"event": "wor')
    completions = completion_counts([logs])
    assert completions == {"logged-twice": 2}
    record = InstanceRecord(
        WorkflowState("logged-twice", HOST, "chain", WorkflowStatus.COMPLETED, output=0), ()
    )
    report = audit(HOST, {"logged-twice": 0}, {"logged-twice": record}, [], completions)
    assert report.applied_twice == ["logged-twice: completion committed 2 times (log)"]
    assert not report.ok


async def test_an_activity_run_twice_is_counted_as_a_reexecution_and_allowed(
    tmp_path: Path, effects: Path
) -> None:
    """A redelivered task runs its activity again: that is at-least-once, not a failure. The
    ledger counts it per activity, and the summary line shows runs against tasks."""
    history = chain_history("again")
    run_tasks(history, "again")
    first = next(e for e in history if isinstance(e, ActivityScheduled))
    record_run(ActivityContext(
        instance_id="again", seq=first.seq, attempt=1, name="double", app_id="fault-act",
        host_app_id=HOST,
    ))  # fmt: skip
    report = await verify(tmp_path, {"again": history}, {"again": chain_result(STEPS)})
    assert report.ok, report.explain()
    assert (report.tasks, report.runs, report.reexecuted) == (3, 4, 1)
    assert report.reexecuted_by_activity == {"double": 1}
    assert str(report) == (
        "started=1 completed=1 lost=0 applied_twice=0 reexecuted=1 "
        "(activity runs 4 for 3 tasks; again: double 1)"
    )


async def test_lost_wrong_output_and_unscheduled_runs_fail_verify(
    tmp_path: Path, effects: Path
) -> None:
    """An instance never stored and one with the wrong output are lost; a run of a task that
    no history scheduled is a side effect of a step that never committed."""
    history = chain_history("wrong")
    run_tasks(history, "wrong")
    record_run(ActivityContext(
        instance_id="wrong", seq=99, attempt=1, name="double", app_id="fault-act",
        host_app_id=HOST,
    ))  # fmt: skip
    with effects.open("a") as log:
        log.write('{"host": "fault-host", "inst')  # a torn line is counted, not fatal
    report = await verify(tmp_path, {"wrong": history}, {"wrong": -1, "missing": 0})
    assert report.lost == ["missing: missing", f"wrong: output {chain_result(STEPS)} != -1"]
    assert report.unexplained == ["('fault-host', 'wrong', 99, 1): ran 1x, never scheduled"]
    assert report.torn_lines == 1 and len(read_runs(effects)[0]) == 4
    assert not report.ok
