"""Fan-out/fan-in at scale and when_any over failures."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any, cast

from flowmesh._errors import ActivityFailedError
from flowmesh.engine import Task, WorkflowContext, replay_step
from flowmesh.model import (
    ActivityCompleted,
    ActivityScheduled,
    HistoryEvent,
    ScheduleActivity,
    StepStarted,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    T0,
    Reply,
    WorkflowReplayer,
    activity_completed,
    activity_failed,
    resolver,
    started,
    step,
    verify_replay,
)

S = timedelta(seconds=1)
N = 1_000


async def fan_out(ctx: WorkflowContext, n: int) -> Any:
    tasks = [ctx.call_activity("square", i, app_id="math" if i % 2 else None) for i in range(n)]
    results = await ctx.when_all(tasks)
    return {"sum": sum(results), "first": results[:3], "last": results[-1]}


def expected(n: int) -> dict[str, Any]:
    squares = [i * i for i in range(n)]
    return {"sum": sum(squares), "first": squares[:3], "last": squares[-1]}


def test_fan_out_of_1000_activities_is_scheduled_in_one_step() -> None:
    outcome = replay_step(resolver(fan_out), [], started("fan_out", N))
    assert len(outcome.commands) == N
    assert all(isinstance(c, ScheduleActivity) for c in outcome.commands)
    assert [c.seq for c in outcome.commands] == list(range(N))  # type: ignore[union-attr]
    assert {c.app_id for c in outcome.commands} == {"app", "math"}  # type: ignore[union-attr]
    assert sum(isinstance(e, ActivityScheduled) for e in outcome.append) == N


def test_fan_in_of_1000_results_in_shuffled_batches_with_full_replays() -> None:
    """Results arrive in four shuffled batches; each step replays the whole history."""
    resolve = resolver(fan_out)
    first = replay_step(resolve, [], started("fan_out", N))
    history: list[HistoryEvent] = list(first.append)
    results = [activity_completed(i, i * i) for i in range(N)]
    random.Random(1234).shuffle(results)
    batches = [results[:100], results[100:450], results[450:999], results[999:]]
    for index, batch in enumerate(batches, start=1):
        outcome = replay_step(resolve, history, [step(T0 + index * S), *batch])
        history += outcome.append
        if index < len(batches):
            assert outcome.status is WorkflowStatus.RUNNING
            assert outcome.commands == ()
            still_open = N - sum(len(b) for b in batches[:index])
            # The state lists up to 20 oldest open tasks and counts the rest in one entry.
            listed = [t for t in outcome.waiting_on if t.kind == "activity"]
            more = [t.name for t in outcome.waiting_on if t.kind == "more"]
            assert len(listed) == min(still_open, 20)
            assert more == ([f"{still_open - 20} more tasks"] if still_open > 20 else [])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == expected(N)
    verify_replay(resolve, history)


def test_fan_in_of_1000_with_the_driver_shuffling_and_duplicating() -> None:
    """The driver delivers in shuffled batches of 300; re-delivered results are dropped."""
    rng = random.Random(99)

    def shuffled(events: list[HistoryEvent]) -> list[HistoryEvent]:
        events = list(events)
        rng.shuffle(events)
        return events

    for full_replay in (True, False):
        replayer = WorkflowReplayer(
            fan_out,
            activities=lambda cmd: Reply.ok(cast("int", cmd.input) ** 2, after=(cmd.seq % 3) * S),
            max_batch=300,
            order=shuffled,
            full_replay=full_replay,
        )
        replayer.start("fan_out", N)
        # Outbox re-publish: a few results are delivered twice.
        for seq in (5, 500, 999):
            replayer.inject(ActivityCompleted(seq, seq * seq), at=2 * S)
        result = replayer.drive()
        assert result.status is WorkflowStatus.COMPLETED
        assert result.output == expected(N)
        assert sum(isinstance(e, ActivityCompleted) for e in result.history) == N
        assert sum(len(o.dropped) for o in result.outcomes) == 3
        assert sum(isinstance(e, StepStarted) for e in result.history) >= 5
        verify_replay(fan_out, result.history)


def test_when_any_where_the_first_to_finish_failed_returns_the_failed_task() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        primary = ctx.call_activity("primary")
        backup = ctx.call_activity("backup")
        first: Task[Any] = await ctx.when_any([primary, backup])
        report: dict[str, Any] = {"first": "primary" if first is primary else "backup"}
        report["failed"] = first.is_failed
        error = first.get_exception()
        report["error"] = error.error_type if isinstance(error, ActivityFailedError) else None
        try:
            first.get_result()
        except ActivityFailedError:
            report["raised"] = True
        report["other"] = await backup if first is primary else await primary
        return report

    resolve = resolver(wf)
    history = list(replay_step(resolve, [], started("wf")).append)
    outcome = replay_step(resolve, history, [step(T0 + S), activity_failed(0, "Boom", "down")])
    assert outcome.status is WorkflowStatus.RUNNING  # the workflow goes on to await "backup"
    history += outcome.append
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(1, "ok")])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == {
        "first": "primary",
        "failed": True,
        "error": "Boom",
        "raised": True,
        "other": "ok",
    }


def test_when_any_results_of_the_losers_are_still_applied_later() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        tasks = [ctx.call_activity("probe", i) for i in range(3)]
        winner = await ctx.when_any(tasks)
        rest = await ctx.when_all([t for t in tasks if t is not winner])
        return [winner.get_result(), rest]

    resolve = resolver(wf)
    history = list(replay_step(resolve, [], started("wf")).append)
    outcome = replay_step(
        resolve,
        history,
        [step(T0 + S), activity_completed(2, "c"), activity_completed(0, "a")],
    )
    history += outcome.append
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(1, "b")])
    assert outcome.output == ["c", ["a", "b"]]
