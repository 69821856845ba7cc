"""Non-determinism is detected with both sides reported; patching keeps old histories valid."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flowmesh.engine import WorkflowContext, replay_step
from flowmesh.model import (
    ActivityCompleted,
    HistoryEvent,
    PatchRecorded,
    ScheduleActivity,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    T0,
    activity_completed,
    activity_scheduled,
    child_scheduled,
    event_raised,
    patch_recorded,
    resolver,
    started,
    step,
    timer_created,
    timer_fired,
)

S = timedelta(seconds=1)


def assert_stalled(outcome: Any, *fragments: str) -> None:
    """STALLED, nothing scheduled, and every fragment (both sides) named in the reason."""
    assert outcome.status is WorkflowStatus.STALLED
    assert outcome.commands == ()
    for fragment in fragments:
        assert fragment in outcome.stall_reason, (fragment, outcome.stall_reason)


def test_wrong_activity_name_stalls_naming_both_sides() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("refund")

    history = [*started("wf"), activity_scheduled(0, "charge")]
    outcome = replay_step(resolver(wf), history, [step(T0 + S), activity_completed(0)])
    assert_stalled(outcome, "seq 0", "'charge'", "'refund'")


def test_wrong_kind_history_timer_code_activity_stalls() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("charge")

    history = [*started("wf"), timer_created(0, T0 + S)]
    outcome = replay_step(resolver(wf), history, [step(T0 + S), timer_fired(0)])
    assert_stalled(outcome, "durable timer", "activity 'charge'")


def test_wrong_kind_history_activity_code_child_stalls() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_child_workflow("charge")

    history = [*started("wf"), activity_scheduled(0, "charge")]
    outcome = replay_step(resolver(wf), history, [])
    assert_stalled(outcome, "activity 'charge'", "child workflow 'charge'")


def test_wrong_app_id_stalls_naming_both_apps() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("charge", app_id="payments-v2")

    history = [*started("wf"), activity_scheduled(0, "charge", "payments")]
    outcome = replay_step(resolver(wf), history, [step(T0 + S), activity_completed(0)])
    assert_stalled(outcome, "'payments'", "'payments-v2'")


def test_wrong_child_instance_id_stalls() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_child_workflow("job", instance_id="job-new")

    history = [*started("wf"), child_scheduled(0, "job", instance_id="job-old")]
    outcome = replay_step(resolver(wf), history, [])
    assert outcome.status is WorkflowStatus.STALLED
    assert outcome.commands == ()


def test_missing_action_history_schedules_an_activity_the_code_no_longer_does() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("a")  # used to call "b" afterwards

    history = [*started("wf"), activity_scheduled(0, "a")]
    history += [step(T0 + S), activity_completed(0, 1), activity_scheduled(1, "b")]
    outcome = replay_step(resolver(wf), history, [step(T0 + 2 * S), activity_completed(1, 2)])
    assert_stalled(outcome, "seq 1", "activity 'b'", "did not schedule it")
    assert ActivityCompleted(1, 2) in outcome.append


def test_reordered_actions_stall() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.when_all([ctx.call_activity("b"), ctx.call_activity("a")])

    history = [*started("wf"), activity_scheduled(0, "a"), activity_scheduled(1, "b")]
    outcome = replay_step(resolver(wf), history, [])
    assert_stalled(outcome, "seq 0", "'a'", "'b'")


def test_stalled_workflow_keeps_the_new_events_in_append() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("refund")

    history = [*started("wf"), activity_scheduled(0, "charge")]
    new: list[HistoryEvent] = [step(T0 + S), activity_completed(0, "r"), event_raised("late", 1)]
    outcome = replay_step(resolver(wf), history, new)
    assert outcome.status is WorkflowStatus.STALLED
    assert ActivityCompleted(0, "r") in outcome.append
    assert event_raised("late", 1) in outcome.append
    assert outcome.dropped == ()


def test_stalled_workflow_with_only_a_step_marker_has_nothing_to_commit() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("refund")

    history = [*started("wf"), activity_scheduled(0, "charge")]
    outcome = replay_step(resolver(wf), history, [step(T0 + S)])
    assert outcome.status is WorkflowStatus.STALLED
    assert outcome.append == ()


def test_fixed_code_replays_the_history_a_stalled_step_kept() -> None:
    async def broken(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("refund")

    async def fixed(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("charge")

    history = [*started("wf"), activity_scheduled(0, "charge")]
    stalled = replay_step({"wf": broken}.get, history, [step(T0 + S), activity_completed(0, 9)])
    history += stalled.append
    outcome = replay_step({"wf": fixed}.get, history, [step(T0 + 2 * S)])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == 9


def test_unregistered_workflow_name_stalls_with_a_reason() -> None:
    outcome = replay_step(resolver({}), [], started("ghost", app_id="orders"))
    assert_stalled(outcome, "'ghost'", "not registered", "'orders'")
    assert outcome.append == tuple(started("ghost", app_id="orders"))


def test_sync_workflow_function_stalls_with_a_reason() -> None:
    def not_async(ctx: WorkflowContext, _: Any) -> int:
        return 1

    outcome = replay_step(lambda _: not_async, [], started("not_async"))  # type: ignore[arg-type,return-value]
    assert_stalled(outcome, "async def")


# -- patching ------------------------------------------------------------------------------------


async def patched_wf(ctx: WorkflowContext, _: Any) -> Any:
    first = await ctx.call_activity("a")
    if ctx.is_patched("use-b2"):
        second = await ctx.call_activity("b2")
    else:
        second = await ctx.call_activity("b")
    return [first, second, ctx.is_patched("use-b2")]


def test_new_execution_takes_the_patched_path_and_records_it() -> None:
    history = [*started("patched_wf"), activity_scheduled(0, "a")]
    outcome = replay_step(resolver(patched_wf), history, [step(T0 + S), activity_completed(0, 1)])
    assert outcome.commands == (ScheduleActivity(1, "b2", "app", None, 1),)
    assert outcome.append == (
        step(T0 + S),
        activity_completed(0, 1),
        PatchRecorded("use-b2"),
        activity_scheduled(1, "b2"),
    )
    history += outcome.append
    outcome = replay_step(
        resolver(patched_wf), history, [step(T0 + 2 * S), activity_completed(1, 2)]
    )
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == [1, 2, True]
    assert not any(isinstance(e, PatchRecorded) for e in outcome.append)


def test_history_recorded_before_the_patch_keeps_the_old_path_without_stalling() -> None:
    history = [*started("patched_wf"), activity_scheduled(0, "a")]
    history += [step(T0 + S), activity_completed(0, 1), activity_scheduled(1, "b")]
    outcome = replay_step(
        resolver(patched_wf), history, [step(T0 + 2 * S), activity_completed(1, 2)]
    )
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == [1, 2, False]
    assert not any(isinstance(e, PatchRecorded) for e in outcome.append)


def test_recorded_patch_is_honoured_on_replay() -> None:
    history = [*started("patched_wf"), activity_scheduled(0, "a")]
    history += [
        step(T0 + S),
        activity_completed(0, 1),
        patch_recorded("use-b2"),
        activity_scheduled(1, "b2"),
    ]
    outcome = replay_step(resolver(patched_wf), history, [])
    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.append == ()
    assert outcome.commands == ()
