"""Retries with durable backoff timers, non-retryable errors and activity timeouts."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import pytest

from flowmesh._errors import ActivityFailedError, NonRetryableError
from flowmesh.engine import WorkflowContext, replay_step
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    RetryPolicy,
    ScheduleActivity,
    ScheduleChildWorkflow,
    StartTimer,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    NO_REPLY,
    T0,
    Reply,
    WorkflowReplayer,
    activity_completed,
    activity_failed,
    activity_scheduled,
    resolver,
    started,
    step,
    timer_created,
    timer_fired,
)

S = timedelta(seconds=1)

CAPPED = RetryPolicy(
    max_attempts=5,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2,
    max_interval=timedelta(seconds=3),
)


async def flaky_wf(ctx: WorkflowContext, _: Any) -> Any:
    return await ctx.call_activity("flaky", "in", app_id="svc", retry=CAPPED)


def test_retries_use_capped_exponential_backoff_then_fail_after_max_attempts() -> None:
    """Backoff timers fire +1s, +2s, +3s, +3s after each failure; attempt 5 failing is final."""
    resolve = resolver(flaky_wf)
    outcome = replay_step(resolve, [], started("flaky_wf"))
    assert outcome.commands == (ScheduleActivity(0, "flaky", "svc", "in", 1),)
    history = list(outcome.append)
    now = T0
    delays: list[timedelta] = []
    attempts = [1]
    seq = 0
    for _ in range(4):
        now += timedelta(seconds=10)  # the failure arrives some time later
        outcome = replay_step(
            resolve, history, [step(now), activity_failed(seq, "IOError", "flaky", "stack")]
        )
        assert outcome.status is WorkflowStatus.RUNNING
        (timer,) = outcome.commands
        assert isinstance(timer, StartTimer)
        assert timer.seq == seq + 1
        delays.append(timer.fire_at - now)
        history += outcome.append
        now = timer.fire_at
        outcome = replay_step(resolve, history, [step(now), timer_fired(timer.seq)])
        (retry,) = outcome.commands
        assert isinstance(retry, ScheduleActivity)
        assert (retry.name, retry.app_id, retry.input) == ("flaky", "svc", "in")
        assert retry.seq == timer.seq + 1
        attempts.append(retry.attempt)
        history += outcome.append
        seq = retry.seq
    assert delays == [1 * S, 2 * S, 3 * S, 3 * S]
    assert attempts == [1, 2, 3, 4, 5]
    outcome = replay_step(
        resolve, history, [step(now + S), activity_failed(seq, "IOError", "still flaky")]
    )
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert "still flaky" in outcome.failure.message
    assert not any(isinstance(c, ScheduleActivity | StartTimer) for c in outcome.commands)


def test_retry_succeeds_on_a_later_attempt() -> None:
    calls: list[int] = []

    def responder(cmd: ScheduleActivity) -> Any:
        calls.append(cmd.attempt)
        if cmd.attempt < 3:
            raise ConnectionError("try again")
        return f"ok on attempt {cmd.attempt}"

    result = WorkflowReplayer(flaky_wf, activities=responder).run("flaky_wf")
    assert result.status is WorkflowStatus.COMPLETED
    assert result.output == "ok on attempt 3"
    assert calls == [1, 2, 3]


def test_error_listed_as_non_retryable_in_the_policy_is_not_retried() -> None:
    policy = RetryPolicy(max_attempts=5, non_retryable_errors=("ValueError",))

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("validate", retry=policy)

    history = [*started("wf"), activity_scheduled(0, "validate")]
    outcome = replay_step(
        resolver(wf), history, [step(T0 + S), activity_failed(0, "builtins.ValueError", "bad")]
    )
    assert outcome.status is WorkflowStatus.FAILED
    assert not any(isinstance(c, StartTimer | ScheduleActivity) for c in outcome.commands)
    # An error not listed is retried.
    outcome = replay_step(
        resolver(wf), history, [step(T0 + S), activity_failed(0, "KeyError", "retry me")]
    )
    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.commands == (StartTimer(1, T0 + 2 * S),)


def test_failure_marked_non_retryable_is_not_retried() -> None:
    history = [*started("flaky_wf"), activity_scheduled(0, "flaky", "svc", "in")]
    failed = activity_failed(0, "payments.Declined", "no", non_retryable=True)
    outcome = replay_step(resolver(flaky_wf), history, [step(T0 + S), failed])
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert "payments.Declined" in outcome.failure.message


def test_activity_raising_non_retryable_error_stops_retries_in_the_driver() -> None:
    attempts: list[int] = []

    def responder(cmd: ScheduleActivity) -> Any:
        attempts.append(cmd.attempt)
        raise NonRetryableError("card stolen")

    result = WorkflowReplayer(flaky_wf, activities=responder).run("flaky_wf")
    assert result.status is WorkflowStatus.FAILED
    assert attempts == [1]


def test_child_workflow_retry_uses_a_new_instance_id_per_attempt() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_child_workflow(
            "job", instance_id="job-1", retry=RetryPolicy(max_attempts=2)
        )

    result = WorkflowReplayer(
        wf, children=lambda cmd: Reply.error("Boom") if cmd.instance_id == "job-1" else "done"
    ).run("wf")
    children = [c for c in result.commands if isinstance(c, ScheduleChildWorkflow)]
    assert [c.instance_id for c in children] == ["job-1", "job-1-2"]
    assert result.output == "done"


# -- activity timeouts ---------------------------------------------------------------------------


async def timed_wf(ctx: WorkflowContext, _: Any) -> Any:
    try:
        return await ctx.call_activity("slow", timeout=timedelta(seconds=30))
    except ActivityFailedError as error:
        return {"error_type": error.error_type, "message": str(error)}


def test_activity_timeout_schedules_a_timer_next_to_the_activity() -> None:
    outcome = replay_step(resolver(timed_wf), [], started("timed_wf"))
    assert outcome.commands == (
        ScheduleActivity(0, "slow", "app", None, 1),
        StartTimer(1, T0 + 30 * S),
    )


def test_activity_timeout_when_the_timer_wins_fails_with_timeout_error_and_drops_late_result() -> (
    None
):
    history = [*started("timed_wf"), activity_scheduled(0, "slow"), timer_created(1, T0 + 30 * S)]
    outcome = replay_step(resolver(timed_wf), history, [step(T0 + 30 * S), timer_fired(1)])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert isinstance(outcome.output, dict)
    assert outcome.output["error_type"] == "TimeoutError"
    assert "'slow'" in outcome.output["message"]
    history += outcome.append
    late = replay_step(resolver(timed_wf), history, [step(T0 + 31 * S), activity_completed(0, 1)])
    assert late.append == ()
    assert late.dropped == (ActivityCompleted(0, 1),)
    assert late.commands == ()


def test_late_activity_result_after_timeout_is_dropped_while_workflow_still_runs() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        with contextlib.suppress(ActivityFailedError):
            await ctx.call_activity("slow", timeout=timedelta(seconds=30))
        return await ctx.wait_for_external_event("never")

    history = [*started("wf"), activity_scheduled(0, "slow"), timer_created(1, T0 + 30 * S)]
    history += [step(T0 + 30 * S), timer_fired(1)]
    outcome = replay_step(resolver(wf), history, [step(T0 + 40 * S), activity_completed(0, "x")])
    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.append == ()
    assert outcome.dropped == (ActivityCompleted(0, "x"),)


def test_activity_timeout_when_the_activity_wins_cancels_the_timer() -> None:
    history = [*started("timed_wf"), activity_scheduled(0, "slow"), timer_created(1, T0 + 30 * S)]
    outcome = replay_step(resolver(timed_wf), history, [step(T0 + S), activity_completed(0, "r")])
    assert outcome.output == "r"
    assert outcome.cancelled_timers == (1,)
    history += outcome.append
    late_timer = replay_step(resolver(timed_wf), history, [step(T0 + 30 * S), timer_fired(1)])
    assert late_timer.append == ()
    assert late_timer.commands == ()


def test_activity_timeout_with_retry_retries_the_timed_out_attempt() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity(
            "slow", timeout=timedelta(seconds=5), retry=RetryPolicy(max_attempts=2)
        )

    def responder(cmd: ScheduleActivity) -> Any:
        return NO_REPLY if cmd.attempt == 1 else "second try"

    result = WorkflowReplayer(wf, activities=responder).run("wf")
    assert result.status is WorkflowStatus.COMPLETED
    assert result.output == "second try"
    attempts = [c.attempt for c in result.commands if isinstance(c, ScheduleActivity)]
    assert attempts == [1, 2]
    assert not any(isinstance(e, ActivityFailed) for e in result.history)


# -- retry budget (RetryPolicy.retry_timeout) ----------------------------------------------------

BUDGET = RetryPolicy(
    max_attempts=100,
    initial_interval=timedelta(seconds=10),
    backoff_coefficient=1,
    retry_timeout=timedelta(seconds=35),
)


async def budget_wf(ctx: WorkflowContext, _: Any) -> Any:
    return await ctx.call_activity("flaky", app_id="svc", retry=BUDGET)


def test_retry_timeout_stops_retries_once_the_next_attempt_would_start_too_late() -> None:
    """Attempts start at 0s, 10s, 20s, 30s; the next would start at 40s > 35s: give up."""
    replayer = WorkflowReplayer(budget_wf, activities=lambda _: Reply.error("Boom"))
    run = replayer.run(budget_wf)
    assert run.status is WorkflowStatus.FAILED
    attempts = [c for c in run.commands if isinstance(c, ScheduleActivity)]
    assert [c.attempt for c in attempts] == [1, 2, 3, 4]
    assert replayer.now == T0 + timedelta(seconds=30)


def test_retry_timeout_counts_from_the_first_attempt_in_workflow_time() -> None:
    """A slow failure uses up the budget too: the first attempt fails after 30s, so the
    retry (at 40s) would start after the 35s budget."""
    replayer = WorkflowReplayer(
        budget_wf, activities=lambda _: Reply.error("Boom", after=timedelta(seconds=30))
    )
    run = replayer.run(budget_wf)
    assert run.status is WorkflowStatus.FAILED
    assert [c.attempt for c in run.commands if isinstance(c, ScheduleActivity)] == [1]


def test_retry_timeout_is_validated_like_the_other_durations() -> None:
    with pytest.raises(ValueError, match="retry_timeout"):
        RetryPolicy(retry_timeout=timedelta(0))
    with pytest.raises(ValueError, match="retry_timeout"):
        RetryPolicy(retry_timeout=timedelta(days=40_000))
