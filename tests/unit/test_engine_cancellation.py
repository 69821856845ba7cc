"""Task.cancel(): cancelled timers never fire, cancelled event waits never consume a later
event, cancelled activities and child workflows are recorded and reported to their target.

Pure engine tests: histories in, commands out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flowmesh import TaskCancelledError
from flowmesh.engine import Task, WorkflowContext, replay_step
from flowmesh.model import (
    CancelActivity,
    CancelChildWorkflow,
    RetryPolicy,
    ScheduleActivity,
    StartTimer,
    TaskCancelled,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    NO_REPLY,
    T0,
    WorkflowReplayer,
    activity_completed,
    activity_failed,
    activity_scheduled,
    child_scheduled,
    event_raised,
    resolver,
    started,
    step,
    task_cancelled,
    timer_fired,
)

S = timedelta(seconds=1)


# -- the scenario of issue 18 --------------------------------------------------------------------


async def approve_or_reject(ctx: WorkflowContext, cancel_loser: bool) -> Any:
    approve = ctx.wait_for_external_event("Approve")
    reject = ctx.wait_for_external_event("Reject")
    winner = await ctx.when_any([approve, reject])
    if cancel_loser:
        (reject if winner is approve else approve).cancel()
    try:
        second = await ctx.wait_for_external_event("Reject", timeout=timedelta(minutes=5))
    except TimeoutError:
        return "timed out"
    return ["approved" if winner is approve else "rejected", second]


def _run_approval(cancel_loser: bool) -> Any:
    replayer = WorkflowReplayer(approve_or_reject)
    replayer.raise_event("Approve", 1, at=10 * S)
    replayer.raise_event("Reject", 2, at=20 * S)
    return replayer.run(approve_or_reject, cancel_loser)


def test_a_cancelled_losing_wait_leaves_a_later_event_to_a_new_wait() -> None:
    run = _run_approval(cancel_loser=True)
    assert run.status is WorkflowStatus.COMPLETED
    assert run.output == ["approved", 2]


def test_without_cancel_the_losing_wait_consumes_the_later_event() -> None:
    """What ``when_any`` documents: its losers stay live until cancelled."""
    run = _run_approval(cancel_loser=False)
    assert run.output == "timed out"


# -- timers --------------------------------------------------------------------------------------


async def cancel_a_timer(ctx: WorkflowContext, _: Any) -> Any:
    timer = ctx.create_timer(timedelta(hours=1))
    await ctx.wait_for_external_event("go")
    first = timer.cancel()
    second = timer.cancel()
    try:
        await timer
    except TaskCancelledError:
        return [first, second, "cancelled"]
    return "fired"


def test_a_cancelled_timer_is_removed_and_a_late_firing_is_dropped() -> None:
    resolve = resolver(cancel_a_timer)
    first = replay_step(resolve, [], started("cancel_a_timer"))
    assert first.commands == (StartTimer(0, T0 + timedelta(hours=1)),)
    history = list(first.append)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("go")])
    assert outcome.cancelled_timers == (0,)
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == [True, False, "cancelled"]


async def cancel_timer_then_wait(ctx: WorkflowContext, _: Any) -> Any:
    timer = ctx.create_timer(timedelta(hours=1))
    await ctx.wait_for_external_event("go")
    timer.cancel()
    return await ctx.wait_for_external_event("done")


def test_a_cancelled_timer_never_fires_into_the_workflow() -> None:
    resolve = resolver(cancel_timer_then_wait)
    history = list(replay_step(resolve, [], started("cancel_timer_then_wait")).append)
    history += replay_step(resolve, history, [step(T0 + S), event_raised("go")]).append
    late = replay_step(resolve, history, [step(T0 + timedelta(hours=2)), timer_fired(0)])
    assert late.append == ()  # stray: nothing recorded
    assert late.dropped == (timer_fired(0),)
    run = WorkflowReplayer(cancel_timer_then_wait)
    run.raise_event("go", at=S)
    run.raise_event("done", "ok", at=timedelta(hours=3))
    result = run.run(cancel_timer_then_wait)
    assert result.output == "ok"
    assert not any(e == timer_fired(0) for e in result.history)


async def timer_cancelled_at_once(ctx: WorkflowContext, _: Any) -> Any:
    ctx.create_timer(timedelta(hours=1)).cancel()
    return await ctx.call_activity("after")


def test_a_timer_cancelled_in_the_step_that_created_it_is_never_sent() -> None:
    outcome = replay_step(resolver(timer_cancelled_at_once), [], started("timer_cancelled_at_once"))
    assert outcome.commands == (ScheduleActivity(1, "after", "app", None, 1),)
    assert outcome.cancelled_timers == ()
    assert [type(e).__name__ for e in outcome.append][-1] == "ActivityScheduled"


# -- activities and child workflows --------------------------------------------------------------


async def cancel_activity(ctx: WorkflowContext, _: Any) -> Any:
    slow = ctx.call_activity("slow", 1, app_id="svc")
    await ctx.wait_for_external_event("stop")
    slow.cancel()
    return await ctx.wait_for_external_event("done")


def test_cancelling_a_dispatched_activity_records_it_and_tells_its_app() -> None:
    resolve = resolver(cancel_activity)
    history = list(replay_step(resolve, [], started("cancel_activity")).append)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("stop")])
    assert outcome.commands == (CancelActivity(0, "slow", "svc", 1),)
    assert outcome.append[-1] == TaskCancelled(0)
    history += outcome.append
    late = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(0, "late")])
    assert late.append == ()
    assert late.commands == ()  # the replay confirms the cancellation: nothing sent again
    done = replay_step(resolve, history, [step(T0 + 3 * S), event_raised("done", 7)])
    assert done.output == 7


def test_a_recorded_cancellation_the_code_no_longer_makes_stalls_the_workflow() -> None:
    async def keeps_it(ctx: WorkflowContext, _: Any) -> Any:
        slow = ctx.call_activity("slow", 1, app_id="svc")
        await ctx.wait_for_external_event("stop")
        return await slow

    history = [
        *started("keeps_it"),
        activity_scheduled(0, "slow", "svc", 1),
        step(T0 + S),
        event_raised("stop"),
        task_cancelled(0),
    ]
    outcome = replay_step(resolver(keeps_it), history, [step(T0 + 2 * S)])
    assert outcome.status is WorkflowStatus.STALLED
    assert "seq 0" in outcome.stall_reason
    assert "cancellation" in outcome.stall_reason


async def activity_cancelled_at_once(ctx: WorkflowContext, _: Any) -> Any:
    task = ctx.call_activity("never", app_id="svc")
    assert task.cancel()
    try:
        await task
    except TaskCancelledError:
        return "cancelled"
    return "ran"


def test_an_activity_cancelled_before_it_was_dispatched_is_neither_sent_nor_recorded() -> None:
    outcome = replay_step(
        resolver(activity_cancelled_at_once), [], started("activity_cancelled_at_once")
    )
    assert outcome.commands[:-1] == ()
    assert outcome.output == "cancelled"
    assert not any(isinstance(e, TaskCancelled) for e in outcome.append)
    assert all(type(e).__name__ != "ActivityScheduled" for e in outcome.append)


async def cancel_child(ctx: WorkflowContext, _: Any) -> Any:
    child = ctx.call_child_workflow("train", 1, app_id="gpu")
    await ctx.wait_for_external_event("stop")
    child.cancel()
    return "stopped"


def test_cancelling_a_child_workflow_terminates_it() -> None:
    resolve = resolver(cancel_child)
    history = list(replay_step(resolve, [], started("cancel_child")).append)
    assert history[-1] == child_scheduled(0, "train", "gpu", "test-1:0", 1)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("stop")])
    assert outcome.commands[0] == CancelChildWorkflow(
        0, "train", "gpu", "test-1:0", "cancelled by parent test-1"
    )
    assert TaskCancelled(0) in outcome.append
    assert outcome.output == "stopped"


# -- composite tasks -----------------------------------------------------------------------------


async def cancel_when_all(ctx: WorkflowContext, _: Any) -> Any:
    a = ctx.call_activity("a", app_id="svc")
    t = ctx.create_timer(timedelta(hours=1))
    e = ctx.wait_for_external_event("x")
    both = ctx.when_all([a, t, e])
    await ctx.wait_for_external_event("stop")
    both.cancel()
    return [x.is_failed for x in (a, t, e, both)]


def test_cancelling_when_all_cancels_every_unfinished_part() -> None:
    resolve = resolver(cancel_when_all)
    history = list(replay_step(resolve, [], started("cancel_when_all")).append)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("stop")])
    assert outcome.cancelled_timers == (1,)
    assert CancelActivity(0, "a", "svc", 1) in outcome.commands
    assert outcome.output == [True, True, True, True]
    # The cancelled wait no longer waits: a later "x" is kept for the next wait.
    assert "x" not in [p.name for p in outcome.waiting_on]


async def cancel_retrying(ctx: WorkflowContext, _: Any) -> Any:
    policy = RetryPolicy(max_attempts=5, initial_interval=timedelta(minutes=1))
    task = ctx.call_activity("flaky", app_id="svc", retry=policy)
    await ctx.wait_for_external_event("stop")
    task.cancel()
    return await ctx.wait_for_external_event("done")


def test_cancelling_a_retrying_task_cancels_its_backoff_timer() -> None:
    resolve = resolver(cancel_retrying)
    history = list(replay_step(resolve, [], started("cancel_retrying")).append)
    failed = replay_step(resolve, history, [step(T0 + S), activity_failed(0, "Boom")])
    assert failed.commands == (StartTimer(1, T0 + S + timedelta(minutes=1)),)
    history += failed.append
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), event_raised("stop")])
    assert outcome.cancelled_timers == (1,)
    assert outcome.commands == ()
    history += outcome.append
    late = replay_step(resolve, history, [step(T0 + timedelta(minutes=2)), timer_fired(1)])
    assert late.append == () and late.commands == ()  # no second attempt


def test_cancelling_a_retrying_task_cancels_its_running_attempt() -> None:
    resolve = resolver(cancel_retrying)
    history = list(replay_step(resolve, [], started("cancel_retrying")).append)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("stop")])
    assert outcome.commands == (CancelActivity(0, "flaky", "svc", 1),)
    history += outcome.append
    late = replay_step(resolve, history, [step(T0 + 2 * S), activity_failed(0, "Boom")])
    assert late.append == () and late.commands == ()  # stray: no retry timer


async def cancel_timed_wait(ctx: WorkflowContext, _: Any) -> Any:
    wait = ctx.wait_for_external_event("x", timeout=timedelta(hours=1))
    await ctx.wait_for_external_event("stop")
    wait.cancel()
    return await ctx.wait_for_external_event("x")


def test_cancelling_a_wait_with_timeout_cancels_its_timer_and_its_place_in_line() -> None:
    resolve = resolver(cancel_timed_wait)
    history = list(replay_step(resolve, [], started("cancel_timed_wait")).append)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("stop")])
    assert outcome.cancelled_timers == (0,)
    history += outcome.append
    done = replay_step(resolve, history, [step(T0 + 2 * S), event_raised("x", "second")])
    assert done.output == "second"


async def cancel_timed_activity(ctx: WorkflowContext, _: Any) -> Any:
    task = ctx.call_activity("slow", app_id="svc", timeout=timedelta(minutes=5))
    await ctx.wait_for_external_event("stop")
    return task.cancel()


def test_cancelling_an_activity_with_timeout_cancels_both_parts() -> None:
    resolve = resolver(cancel_timed_activity)
    history = list(replay_step(resolve, [], started("cancel_timed_activity")).append)
    outcome = replay_step(resolve, history, [step(T0 + S), event_raised("stop")])
    assert outcome.cancelled_timers == (1,)
    assert outcome.commands[0] == CancelActivity(0, "slow", "svc", 1)
    assert outcome.output is True


def test_cancel_of_a_completed_task_returns_false() -> None:
    task: Task[int] = Task()
    task.resolve(3)
    assert task.cancel() is False
    assert task.get_result() == 3


def test_a_cancelled_task_raises_task_cancelled_error() -> None:
    task: Task[int] = Task()
    released: list[bool] = []
    task.set_canceller(lambda _task, _key: released.append(True))
    assert task.cancel() is True
    assert released == [True]
    with pytest.raises(TaskCancelledError):
        task.get_result()


def test_a_full_replay_and_a_cached_execution_agree_with_cancellations() -> None:
    for full_replay in (True, False):
        replayer = WorkflowReplayer(
            cancel_activity, activities=lambda _: NO_REPLY, full_replay=full_replay
        )
        replayer.raise_event("stop", at=S)
        replayer.raise_event("done", "end", at=2 * S)
        run = replayer.run(cancel_activity)
        assert run.output == "end"
        assert TaskCancelled(0) in run.history
