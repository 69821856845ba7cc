"""Only dispatched tasks complete; runs keep their identity; duplicates stay dropped across
continue-as-new; start admission rules (issue 15)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flowmesh import ChildWorkflowFailedError, WorkflowAlreadyExistsError
from flowmesh.codec import Codec
from flowmesh.engine import WorkflowContext, WorkflowExecution, replay_step
from flowmesh.model import (
    ActivityCompleted,
    ChildResult,
    ChildWorkflowFailed,
    EventRaised,
    FailureDetails,
    ParentRef,
    StartAck,
    StartWorkflow,
    StepStarted,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
)
from flowmesh.runtime._admission import ALREADY_EXISTS, Existing, decide_start
from flowmesh.testing.history import T0, activity_scheduled, resolver, started, step

S = timedelta(seconds=1)
CODEC = Codec()


async def go_then_ship(ctx: WorkflowContext, amount: int) -> Any:
    await ctx.wait_for_external_event("go")
    return await ctx.call_activity("ship", amount)


def test_a_result_batched_into_the_step_that_allocates_its_task_is_refused() -> None:
    """The event makes the code allocate seq 0 and the forged result for seq 0 rides in the
    same step: it must not complete a task that was never dispatched."""
    history = started("go_then_ship", 5)
    outcome = replay_step(
        resolver(go_then_ship),
        history,
        [step(T0 + S), EventRaised("go", None, "e1"), ActivityCompleted(0, "forged")],
    )
    assert outcome.status is WorkflowStatus.RUNNING
    assert [reason for _, reason in outcome.refused] == [
        "result for activity 'ship' on app 'app' (seq 0) that was never dispatched"
    ]
    assert outcome.refused[0][0] == ActivityCompleted(0, "forged")
    assert ActivityCompleted(0, "forged") not in outcome.append
    # In the next step the task is dispatched, and its real result completes it.
    history += outcome.append
    outcome = replay_step(
        resolver(go_then_ship), history, [step(T0 + 2 * S), ActivityCompleted(0, "ok")]
    )
    assert outcome.status is WorkflowStatus.COMPLETED and outcome.output == "ok"
    assert outcome.refused == ()


def test_a_cached_execution_accepts_the_result_of_a_task_dispatched_by_its_last_step() -> None:
    execution = WorkflowExecution(resolver(go_then_ship))
    execution.replay(started("go_then_ship", 5))
    first = execution.step([step(T0 + S), EventRaised("go", None, "e1")])
    assert [type(c).__name__ for c in first.commands] == ["ScheduleActivity"]
    second = execution.step([step(T0 + 2 * S), ActivityCompleted(0, "ok")])
    assert second.output == "ok" and second.refused == ()


def test_the_run_id_of_the_start_is_the_executions_and_the_contexts() -> None:
    seen: list[str] = []

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        seen.append(ctx.run_id)
        return ctx.run_id

    execution = WorkflowExecution(resolver(wf))
    outcome = execution.step([StepStarted(T0), WorkflowStarted("wf", "i", "app", run_id="r-1")])
    assert outcome.output == "r-1" and execution.run_id == "r-1" and seen == ["r-1"]


def test_event_ids_seen_by_an_earlier_run_are_still_dropped_after_continue_as_new() -> None:
    """A redelivered event recorded by the previous run is not recorded again by the next."""

    async def wf(ctx: WorkflowContext, count: int) -> Any:
        await ctx.wait_for_external_event("tick")
        if count == 0:
            ctx.continue_as_new(1)
        return count

    first = WorkflowExecution(resolver(wf))
    first.replay(started("wf", 0))
    outcome = first.step([step(T0 + S), EventRaised("tick", None, "event-1")])
    assert outcome.status is WorkflowStatus.CONTINUED_AS_NEW
    assert first.recent_event_ids == ("event-1",)

    second = WorkflowExecution(resolver(wf))
    second.replay(
        [StepStarted(T0), WorkflowStarted("wf", "i", "app", 1, seen_event_ids=("event-1",))]
    )
    redelivered = second.step([step(T0 + 2 * S), EventRaised("tick", None, "event-1")])
    assert redelivered.dropped == (EventRaised("tick", None, "event-1"),)
    assert redelivered.status is WorkflowStatus.RUNNING
    fresh = second.step([step(T0 + 3 * S), EventRaised("tick", None, "event-2")])
    assert fresh.output == 1


def test_a_child_id_taken_fails_the_parent_with_workflow_already_exists_as_cause() -> None:
    async def parent(ctx: WorkflowContext, _: Any) -> Any:
        try:
            await ctx.call_child_workflow("kid", None, app_id="kids", instance_id="report")
        except ChildWorkflowFailedError as exc:
            return [
                type(exc.__cause__).__name__,
                isinstance(exc.__cause__, WorkflowAlreadyExistsError),
            ]
        return "no error"

    history = [*started("parent"), *_child_scheduled()]
    failure = FailureDetails(ALREADY_EXISTS, "workflow instance 'report' already exists")
    outcome = replay_step(
        resolver(parent), history, [step(T0 + S), ChildWorkflowFailed(0, failure)]
    )
    assert outcome.output == ["WorkflowAlreadyExistsError", True]


def _child_scheduled() -> list[Any]:
    from flowmesh.testing.history import child_scheduled

    return [child_scheduled(0, "kid", "kids", "report")]


PARENT = ParentRef("p-1", "host", 3, "run-p")


def decide(message: StartWorkflow, existing: Existing | None, **kw: Any) -> Any:
    return decide_start(
        message,
        app_id="kids",
        existing=existing,
        terminated_early=kw.get("terminated_early"),
        run_id="run-new",
        encode=CODEC.encode_message,
    )


def test_a_redelivered_child_start_from_its_parent_changes_nothing_and_resends_a_final_result() -> (
    None
):
    start = StartWorkflow("report", "kid", "kids", None, PARENT)
    created = WorkflowStarted("kid", "report", "kids", None, PARENT, run_id="run-c")
    running = WorkflowState("report", "kids", "kid", WorkflowStatus.RUNNING, parent=PARENT)
    decision = decide(start, Existing(running, created))
    assert decision.started is None and decision.send is None and not decision.refused
    done = WorkflowState(
        "report",
        "kids",
        "kid",
        WorkflowStatus.COMPLETED,
        output="ok",
        parent=PARENT,
        run_id="run-c",
    )
    decision = decide(start, Existing(done, created))
    assert decision.send is not None and decision.send.app_id == "host"
    assert CODEC.decode_message(decision.send.body) == ChildResult(
        "p-1", 3, "report", "ok", None, "run-p"
    )


def test_a_child_start_from_another_parent_is_answered_with_already_exists() -> None:
    other = ParentRef("p-2", "host", 0, "run-q")
    running = WorkflowState("report", "kids", "kid", WorkflowStatus.RUNNING, parent=PARENT)
    decision = decide(StartWorkflow("report", "kid", "kids", None, other), Existing(running, None))
    assert decision.started is None and "already exists" in decision.refused
    assert decision.send is not None
    result = CODEC.decode_message(decision.send.body)
    assert isinstance(result, ChildResult) and result.instance_id == "p-2"
    assert result.failure is not None and result.failure.error_type == ALREADY_EXISTS


def test_a_start_after_a_held_terminate_is_refused() -> None:
    from flowmesh.model import Control, ControlAction

    tombstone = Control("doomed", ControlAction.TERMINATE, "cancelled")
    decision = decide(
        StartWorkflow("doomed", "kid", "kids", request_id="r"), None, terminated_early=tombstone
    )
    assert decision.started is None
    assert decision.reply == StartAck(
        "doomed",
        False,
        "workflow instance 'doomed' was terminated before it started: cancelled",
        "terminated",
    )


def test_a_new_start_gets_a_run_and_is_acknowledged() -> None:
    decision = decide(StartWorkflow("fresh", "kid", "kids", 7, request_id="r"), None)
    assert decision.started == WorkflowStarted(
        "kid", "fresh", "kids", 7, None, "r", run_id="run-new"
    )
    assert decision.reply == StartAck("fresh", True)


def test_scheduled_activities_are_unaffected_by_history_order() -> None:
    """A fresh replay of a history marks tasks dispatched when their scheduling replays."""
    history = [
        *started("go_then_ship", 5),
        step(T0 + S),
        EventRaised("go", None, "e"),
        activity_scheduled(0, "ship", input=5),
    ]
    outcome = replay_step(
        resolver(go_then_ship), history, [step(T0 + 2 * S), ActivityCompleted(0, "x")]
    )
    assert outcome.output == "x"
