"""Engine primitives: each WorkflowContext operation turns into the right commands and results.

Histories are written with the builders of ``flowmesh.testing.history`` and fed to the pure
``replay_step``; no broker, store, event loop or clock is involved.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flowmesh._errors import ActivityFailedError, ChildWorkflowFailedError
from flowmesh.engine import WorkflowContext, WorkflowExecution, replay_step
from flowmesh.model import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    CompleteWorkflow,
    HistoryEvent,
    PendingTask,
    ScheduleActivity,
    ScheduleChildWorkflow,
    StartTimer,
    StepStarted,
    TimerCreated,
    WorkflowCompleted,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    T0,
    WorkflowReplayer,
    activity_completed,
    activity_failed,
    activity_scheduled,
    child_completed,
    child_failed,
    child_scheduled,
    event_raised,
    resolver,
    run_to_completion,
    started,
    step,
    timer_created,
    timer_fired,
)

S = timedelta(seconds=1)


def one(fn: Any) -> Any:
    """Resolver for a single workflow function."""
    return resolver(fn)


# -- activities ----------------------------------------------------------------------------------


async def charge_default_app(ctx: WorkflowContext, order: Any) -> Any:
    return await ctx.call_activity("charge", order)


async def charge_on_payments(ctx: WorkflowContext, order: Any) -> Any:
    return await ctx.call_activity("charge", order, app_id="payments")


def test_activity_without_app_id_targets_the_workflows_own_app() -> None:
    outcome = replay_step(
        one(charge_default_app), [], started("charge_default_app", {"id": 1}, app_id="orders")
    )
    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.commands == (ScheduleActivity(0, "charge", "orders", {"id": 1}, 1),)
    assert outcome.append[-1] == ActivityScheduled(0, "charge", "orders", {"id": 1}, 1)
    assert outcome.waiting_on == (PendingTask("activity", "charge", "orders", 0, T0),)


def test_activity_with_explicit_app_id_targets_that_app() -> None:
    outcome = replay_step(one(charge_on_payments), [], started("charge_on_payments", 5))
    assert outcome.commands == (ScheduleActivity(0, "charge", "payments", 5, 1),)


def test_activity_can_be_named_by_function() -> None:
    def reserve(ctx: object, item: object) -> None: ...

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity(reserve, "x")

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.commands == (ScheduleActivity(0, "reserve", "app", "x", 1),)


def test_activity_success_returns_its_output_to_the_workflow() -> None:
    history = [*started("charge_default_app", 1), activity_scheduled(0, "charge", input=1)]
    outcome = replay_step(
        one(charge_default_app), history, [step(T0 + S), activity_completed(0, {"ok": True})]
    )
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == {"ok": True}
    assert outcome.append == (
        step(T0 + S),
        activity_completed(0, {"ok": True}),
        WorkflowCompleted(WorkflowStatus.COMPLETED, {"ok": True}),
    )
    assert outcome.commands == (CompleteWorkflow(WorkflowStatus.COMPLETED, {"ok": True}),)


def test_activity_failure_surfaces_activity_failed_error_with_remote_type_message_stack() -> None:
    seen: dict[str, Any] = {}

    async def wf(ctx: WorkflowContext, _: Any) -> str:
        try:
            await ctx.call_activity("charge", 1, app_id="payments")
        except ActivityFailedError as error:
            seen["error"] = error
            return "handled"
        return "not reached"

    history = [*started("wf"), activity_scheduled(0, "charge", "payments", 1)]
    failed = activity_failed(0, "payments.CardDeclined", "card 4242 declined", "Traceback: ...")
    outcome = replay_step(one(wf), history, [step(T0 + S), failed])
    assert outcome.output == "handled"
    error = seen["error"]
    assert isinstance(error, ActivityFailedError)
    assert error.error_type == "payments.CardDeclined"
    assert error.remote_stack == "Traceback: ..."
    assert error.failure.message == "card 4242 declined"
    assert "card 4242 declined" in str(error)
    assert "payments.CardDeclined" in str(error)


def test_uncaught_activity_failure_fails_the_workflow_with_activity_failed_error() -> None:
    history = [*started("charge_default_app"), activity_scheduled(0, "charge")]
    outcome = replay_step(
        one(charge_default_app), history, [step(T0 + S), activity_failed(0, "ValueError", "bad")]
    )
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.error_type == "flowmesh._errors.ActivityFailedError"
    assert "ValueError: bad" in outcome.failure.message


# -- child workflows -----------------------------------------------------------------------------


async def parent_wf(ctx: WorkflowContext, _: Any) -> Any:
    first = await ctx.call_child_workflow("train", {"epochs": 1}, app_id="gpu-trainer")
    second = await ctx.call_child_workflow("report", first, instance_id="report-1")
    return [first, second]


def test_child_workflow_default_instance_id_is_parent_colon_seq_on_given_app() -> None:
    outcome = replay_step(one(parent_wf), [], started("parent_wf", instance_id="order-42"))
    assert outcome.commands == (
        ScheduleChildWorkflow(0, "train", "gpu-trainer", "order-42:0", {"epochs": 1}),
    )
    assert outcome.append[-1] == ChildWorkflowScheduled(
        0, "train", "gpu-trainer", "order-42:0", {"epochs": 1}
    )
    assert outcome.waiting_on[0].kind == "child_workflow"
    assert outcome.waiting_on[0].detail == "order-42:0"


def test_child_workflow_success_and_explicit_instance_id_on_default_app() -> None:
    history = [
        *started("parent_wf", instance_id="order-42"),
        child_scheduled(0, "train", "gpu-trainer", "order-42:0", {"epochs": 1}),
    ]
    outcome = replay_step(one(parent_wf), history, [step(T0 + S), child_completed(0, "model")])
    assert outcome.commands == (ScheduleChildWorkflow(1, "report", "app", "report-1", "model"),)
    history += outcome.append
    outcome = replay_step(one(parent_wf), history, [step(T0 + 2 * S), child_completed(1, "pdf")])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == ["model", "pdf"]


def test_child_workflow_failure_raises_child_workflow_failed_error() -> None:
    seen: dict[str, Any] = {}

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        try:
            return await ctx.call_child_workflow("train", None, app_id="gpu")
        except ChildWorkflowFailedError as error:
            seen["error"] = error
            raise

    history = [*started("wf"), child_scheduled(0, "train", "gpu")]
    failed = child_failed(0, "trainer.OutOfMemory", "CUDA OOM", "stack here")
    outcome = replay_step(one(wf), history, [step(T0 + S), failed])
    error = seen["error"]
    assert isinstance(error, ChildWorkflowFailedError)
    assert (error.error_type, error.remote_stack) == ("trainer.OutOfMemory", "stack here")
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.error_type == "flowmesh._errors.ChildWorkflowFailedError"
    assert "CUDA OOM" in outcome.failure.message


# -- timers --------------------------------------------------------------------------------------


def test_timer_with_timedelta_fires_relative_to_the_current_step_time() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> str:
        await ctx.create_timer(timedelta(minutes=5))
        return ctx.current_utc_datetime.isoformat()

    t1 = T0 + timedelta(hours=1)
    outcome = replay_step(one(wf), [], started("wf", at=t1))
    assert outcome.commands == (StartTimer(0, t1 + timedelta(minutes=5)),)
    assert outcome.append[-1] == TimerCreated(0, t1 + timedelta(minutes=5))
    history = list(outcome.append)
    fired_at = t1 + timedelta(minutes=5, seconds=2)
    outcome = replay_step(one(wf), history, [step(fired_at), timer_fired(0)])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == fired_at.isoformat()


def test_timer_with_absolute_datetime_fires_at_that_time() -> None:
    deadline = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

    async def wf(ctx: WorkflowContext, _: Any) -> None:
        await ctx.create_timer(deadline)

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.commands == (StartTimer(0, deadline),)
    outcome = replay_step(one(wf), [*outcome.append], [step(deadline), timer_fired(0)])
    assert outcome.status is WorkflowStatus.COMPLETED


def test_timer_with_naive_datetime_fails_the_workflow() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> None:
        await ctx.create_timer(datetime(2030, 1, 1))

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert "timezone-aware" in outcome.failure.message


# -- external events -----------------------------------------------------------------------------


async def approval_wf(ctx: WorkflowContext, _: Any) -> Any:
    return await ctx.wait_for_external_event("approval")


def test_external_event_resolves_a_waiting_workflow() -> None:
    outcome = replay_step(one(approval_wf), [], started("approval_wf"))
    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.commands == ()
    assert outcome.waiting_on == (PendingTask("event", "approval"),)
    outcome = replay_step(
        one(approval_wf), [*outcome.append], [step(T0 + S), event_raised("approval", {"ok": 1})]
    )
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == {"ok": 1}


def test_external_event_names_are_case_insensitive() -> None:
    history = started("approval_wf")
    outcome = replay_step(one(approval_wf), history, [step(T0 + S), event_raised("APPROVAL", 7)])
    assert outcome.output == 7


def test_events_raised_before_the_wait_are_buffered_and_delivered_in_order() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.create_timer(timedelta(seconds=10))
        first = await ctx.wait_for_external_event("a")
        second = await ctx.wait_for_external_event("A")
        return [first, second]

    history = [*started("wf"), timer_created(0, T0 + 10 * S)]
    outcome = replay_step(
        one(wf), history, [step(T0 + S), event_raised("a", 1), event_raised("a", 2)]
    )
    assert outcome.status is WorkflowStatus.RUNNING  # still on the timer; events buffered
    assert outcome.append == (step(T0 + S), event_raised("a", 1), event_raised("a", 2))
    history += outcome.append
    outcome = replay_step(one(wf), history, [step(T0 + 10 * S), timer_fired(0)])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == [1, 2]


def test_event_timeout_raises_a_catchable_timeout_error_in_the_workflow() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        try:
            return await ctx.wait_for_external_event("approval", timeout=timedelta(hours=1))
        except TimeoutError as error:
            return f"timed out: {error}"

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.commands == (StartTimer(0, T0 + timedelta(hours=1)),)
    history = list(outcome.append)
    outcome = replay_step(one(wf), history, [step(T0 + timedelta(hours=1)), timer_fired(0)])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert isinstance(outcome.output, str)
    assert outcome.output.startswith("timed out: ")
    assert "approval" in outcome.output


def test_event_arriving_before_timeout_cancels_the_timeout_timer() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.wait_for_external_event("approval", timeout=timedelta(hours=1))

    history = [*started("wf"), timer_created(0, T0 + timedelta(hours=1))]
    outcome = replay_step(one(wf), history, [step(T0 + S), event_raised("approval", True)])
    assert outcome.output is True
    assert outcome.cancelled_timers == (0,)


# -- composition ---------------------------------------------------------------------------------


async def fan_wf(ctx: WorkflowContext, items: list[int]) -> Any:
    return await ctx.when_all([ctx.call_activity("double", i) for i in items])


def test_when_all_schedules_everything_in_one_step_and_returns_results_in_order() -> None:
    outcome = replay_step(one(fan_wf), [], started("fan_wf", [1, 2, 3]))
    assert outcome.commands == tuple(
        ScheduleActivity(i, "double", "app", i + 1, 1) for i in range(3)
    )
    history = list(outcome.append)
    # Results arrive in reverse order; the output keeps the order of the tasks.
    outcome = replay_step(
        one(fan_wf),
        history,
        [
            step(T0 + S),
            activity_completed(2, 6),
            activity_completed(0, 2),
            activity_completed(1, 4),
        ],
    )
    assert outcome.output == [2, 4, 6]


def test_when_all_of_nothing_completes_at_once() -> None:
    outcome = replay_step(one(fan_wf), [], started("fan_wf", []))
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == []


def test_when_all_fails_with_the_first_failure() -> None:
    history = [*started("fan_wf", [1, 2])]
    history += [activity_scheduled(0, "double", input=1), activity_scheduled(1, "double", input=2)]
    outcome = replay_step(
        one(fan_wf), history, [step(T0 + S), activity_failed(1, "KeyError", "nope")]
    )
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert "KeyError: nope" in outcome.failure.message


def test_when_any_returns_the_first_task_to_finish() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        fast = ctx.call_activity("fast")
        timer = ctx.create_timer(timedelta(seconds=30))
        winner = await ctx.when_any([fast, timer])
        return "activity" if winner is fast else "timer"

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.commands == (
        ScheduleActivity(0, "fast", "app", None, 1),
        StartTimer(1, T0 + 30 * S),
    )
    history = list(outcome.append)
    won = replay_step(one(wf), history, [step(T0 + S), activity_completed(0, "x")])
    assert won.output == "activity"
    lost = replay_step(one(wf), history, [step(T0 + 30 * S), timer_fired(1)])
    assert lost.output == "timer"


def test_when_any_of_nothing_fails_the_workflow() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.when_any([])

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.error_type == "ValueError"


# -- state and determinism helpers ---------------------------------------------------------------


def test_custom_status_is_reported_in_the_outcome() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> None:
        ctx.set_custom_status({"stage": "charging"})
        await ctx.call_activity("charge")
        ctx.set_custom_status({"stage": "done"})

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.custom_status == {"stage": "charging"}
    outcome = replay_step(one(wf), [*outcome.append], [step(T0 + S), activity_completed(0)])
    assert outcome.custom_status == {"stage": "done"}


def test_unserialisable_custom_status_fails_the_workflow() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> None:
        ctx.set_custom_status({1, 2})

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert "custom status" in outcome.failure.message


def test_current_utc_datetime_follows_the_step_started_events() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        times = [ctx.current_utc_datetime.isoformat()]
        await ctx.call_activity("a")
        times.append(ctx.current_utc_datetime.isoformat())
        await ctx.call_activity("b")
        times.append(ctx.current_utc_datetime.isoformat())
        return times

    t1, t2, t3 = T0 + S, T0 + timedelta(minutes=7), T0 + timedelta(days=2)
    history = [*started("wf", at=t1), activity_scheduled(0, "a")]
    history += [step(t2), activity_completed(0), activity_scheduled(1, "b")]
    outcome = replay_step(one(wf), history, [step(t3), activity_completed(1)])
    assert outcome.output == [t1.isoformat(), t2.isoformat(), t3.isoformat()]


def test_new_uuid_is_identical_across_replays_and_differs_per_call() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        ids = [ctx.new_uuid(), ctx.new_uuid()]
        await ctx.call_activity("a")
        ids.append(ctx.new_uuid())
        return ids

    history = [*started("wf", instance_id="u-1"), activity_scheduled(0, "a")]
    new: list[HistoryEvent] = [step(T0 + S), activity_completed(0)]
    first = replay_step(one(wf), history, new)
    second = replay_step(one(wf), history, new)
    assert isinstance(first.output, list)
    assert first.output == second.output
    assert len(set(first.output)) == 3
    assert all(uuid.UUID(value) for value in first.output)
    other_instance = replay_step(
        one(wf), [*started("wf", instance_id="u-2"), activity_scheduled(0, "a")], new
    )
    assert isinstance(other_instance.output, list)
    assert set(other_instance.output).isdisjoint(first.output)


def test_workflow_context_exposes_instance_app_and_name() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return [ctx.instance_id, ctx.app_id, ctx.name, ctx.is_replaying]

    outcome = replay_step(one(wf), [], started("wf", instance_id="i-9", app_id="orders"))
    assert outcome.output == ["i-9", "orders", "wf", False]


# -- replay-safe logger --------------------------------------------------------------------------


async def logging_wf(ctx: WorkflowContext, _: Any) -> None:
    ctx.logger.info("starting %s", ctx.instance_id)
    await ctx.call_activity("a")
    ctx.logger.warning("after a")
    await ctx.call_activity("b")
    ctx.logger.error("after b")


def test_replay_safe_logger_logs_each_line_once_with_full_replays(list_logger: Any) -> None:
    replayer = WorkflowReplayer(
        logging_wf, activities=lambda _: None, logger=list_logger, full_replay=True
    )
    result = replayer.run("logging_wf")
    assert result.status is WorkflowStatus.COMPLETED
    assert list_logger.lines == [
        ("info", "starting test-1"),
        ("warning", "after a"),
        ("error", "after b"),
    ]
    # Replaying the whole history again logs nothing.
    replay_step(one(logging_wf), result.history, [], logger=list_logger)
    assert len(list_logger.lines) == 3


def test_replay_safe_logger_with_a_cached_execution(list_logger: Any) -> None:
    execution = WorkflowExecution(one(logging_wf), logger=list_logger)
    execution.step(started("logging_wf"))
    assert list_logger.messages == ["starting test-1"]
    execution.step([step(T0 + S), activity_completed(0)])
    assert list_logger.messages == ["starting test-1", "after a"]
    # A fresh execution replaying the history logs only for the new events.
    fresh_logger = type(list_logger)()
    history = [*started("logging_wf"), activity_scheduled(0, "a")]
    history += [step(T0 + S), activity_completed(0), activity_scheduled(1, "b")]
    replay_step(
        one(logging_wf), history, [step(T0 + 2 * S), activity_completed(1)], logger=fresh_logger
    )
    assert fresh_logger.lines == [("error", "after b")]


def test_is_replaying_is_true_only_for_code_recorded_in_history() -> None:
    flags: list[bool] = []

    async def wf(ctx: WorkflowContext, _: Any) -> None:
        flags.append(ctx.is_replaying)
        await ctx.call_activity("a")
        flags.append(ctx.is_replaying)

    history = [*started("wf"), activity_scheduled(0, "a")]
    replay_step(one(wf), history, [step(T0 + S), activity_completed(0)])
    assert flags == [True, False]


# -- run_to_completion smoke test ----------------------------------------------------------------


def test_a_workflow_using_every_primitive_runs_to_completion() -> None:
    async def order(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
        charged = await ctx.call_activity("charge", order, app_id="payments")
        model = await ctx.call_child_workflow("train", order, app_id="gpu-trainer")
        ok = await ctx.wait_for_external_event("approval", timeout=timedelta(hours=1))
        await ctx.create_timer(timedelta(minutes=5))
        parts = await ctx.when_all([ctx.call_activity("reserve", i) for i in order["items"]])
        ctx.set_custom_status({"stage": "done"})
        return {"charged": charged, "model": model, "ok": ok, "parts": parts}

    result = run_to_completion(
        order,
        "order",
        {"items": [1, 2]},
        activities=lambda cmd: f"{cmd.app_id}/{cmd.name}",
        children=lambda cmd: f"trained on {cmd.app_id}",
        events=[(timedelta(minutes=10), event_raised("approval", True))],
    )
    assert result.status is WorkflowStatus.COMPLETED
    assert result.output == {
        "charged": "payments/charge",
        "model": "trained on gpu-trainer",
        "ok": True,
        "parts": ["app/reserve", "app/reserve"],
    }
    assert result.outcome.custom_status == {"stage": "done"}
    step_times = [e.timestamp for e in result.history if isinstance(e, StepStarted)]
    assert step_times == sorted(step_times)
    assert step_times[-1] == T0 + timedelta(minutes=15)


@pytest.mark.parametrize("bad_input", [{1, 2}, object(), {"k": {("tuple", "key"): 1}}])
def test_unserialisable_activity_input_fails_the_workflow_at_the_call_site(
    bad_input: object,
) -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("charge", bad_input)

    outcome = replay_step(one(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.commands == (CompleteWorkflow(WorkflowStatus.FAILED, None, outcome.failure),)
    assert outcome.failure is not None
    assert outcome.failure.error_type == "flowmesh._errors.SerializationError"
    assert "input of activity 'charge'" in outcome.failure.message
