"""``flowmesh.testing.history``: the builders and the WorkflowReplayer driver users test with."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flowmesh._errors import NonDeterminismError
from flowmesh.engine import WorkflowContext
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    EventRaised,
    FailureDetails,
    ParentRef,
    PatchRecorded,
    ScheduleActivity,
    StepStarted,
    TimerCreated,
    TimerFired,
    WorkflowCompleted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
)
from flowmesh.testing.history import (
    NO_REPLY,
    T0,
    Reply,
    WorkflowReplayer,
    activity_completed,
    activity_failed,
    activity_scheduled,
    child_completed,
    child_failed,
    child_scheduled,
    event_raised,
    failure,
    patch_recorded,
    replay_history,
    resolver,
    resumed,
    run_to_completion,
    split_steps,
    started,
    step,
    suspended,
    terminated,
    timer_created,
    timer_fired,
    verify_replay,
    workflow_completed,
)

S = timedelta(seconds=1)


def test_builders_produce_the_model_events() -> None:
    assert started("wf", 1) == [
        StepStarted(T0),
        WorkflowStarted("wf", "test-1", "app", 1, None),
    ]
    parent = ParentRef("p", "orders", 3)
    assert started("wf", instance_id="i", app_id="a", at=T0 + S, parent=parent) == [
        StepStarted(T0 + S),
        WorkflowStarted("wf", "i", "a", None, parent),
    ]
    assert step(T0) == StepStarted(T0)
    assert activity_scheduled(0, "a", "svc", {"x": 1}, 2) == ActivityScheduled(
        0, "a", "svc", {"x": 1}, 2
    )
    assert activity_completed(0, 5) == ActivityCompleted(0, 5)
    assert activity_failed(0, "E", "m", "st", True) == ActivityFailed(
        0, FailureDetails("E", "m", "st", True)
    )
    assert child_scheduled(4, "c") == ChildWorkflowScheduled(4, "c", "app", "test-1:4", None)
    assert child_scheduled(4, "c", "gpu", parent_instance_id="p") == ChildWorkflowScheduled(
        4, "c", "gpu", "p:4", None
    )
    assert child_scheduled(4, "c", instance_id="x") == ChildWorkflowScheduled(4, "c", "app", "x")
    assert child_completed(4, 1) == ChildWorkflowCompleted(4, 1)
    assert child_failed(4, "E", "m") == ChildWorkflowFailed(4, FailureDetails("E", "m"))
    assert timer_created(1, T0) == TimerCreated(1, T0)
    assert timer_fired(1) == TimerFired(1)
    assert event_raised("e", 2) == EventRaised("e", 2)
    assert patch_recorded("p") == PatchRecorded("p")
    assert suspended("r") == WorkflowSuspended("r")
    assert resumed() == WorkflowResumed()
    assert terminated("r", recursive=True) == WorkflowTerminated("r", True)
    assert workflow_completed(1) == WorkflowCompleted(WorkflowStatus.COMPLETED, 1)
    assert failure("E", "m", non_retryable=True) == FailureDetails("E", "m", "", True)


def test_split_steps_cuts_at_step_started() -> None:
    history = [*started("wf"), activity_scheduled(0, "a"), step(T0 + S), activity_completed(0)]
    assert split_steps(history) == [history[:3], history[3:]]
    assert split_steps([]) == []


async def greet(ctx: WorkflowContext, name: str) -> str:
    return await ctx.call_activity("hello", name)


def test_resolver_accepts_mapping_sequence_function_and_callable() -> None:
    for form in ({"greet": greet}, [greet], greet, {"greet": greet}.get):
        resolve = resolver(form)
        assert resolve("greet") is greet
        assert resolve("other") is None


def test_replay_history_and_verify_replay_accept_any_workflows_form() -> None:
    result = run_to_completion(greet, "greet", "bob", activities={"hello": lambda n: f"hi {n}"})
    assert result.output == "hi bob"
    assert replay_history([greet], result.history).output == "hi bob"
    assert verify_replay({"greet": greet}, result.history).status is WorkflowStatus.COMPLETED


def test_verify_replay_reports_non_determinism_with_both_sides() -> None:
    result = run_to_completion(greet, "greet", "bob", activities=lambda _: "hi")

    async def changed(ctx: WorkflowContext, name: str) -> str:
        return await ctx.call_activity("bonjour", name)

    with pytest.raises(NonDeterminismError, match=r"'hello'.*'bonjour'"):
        verify_replay({"greet": changed}, result.history)


def test_verify_replay_reports_code_that_now_schedules_more() -> None:
    async def waits(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.wait_for_external_event("go")

    async def schedules(ctx: WorkflowContext, _: Any) -> Any:
        ctx.call_activity("extra")
        return await ctx.wait_for_external_event("go")

    history = started("wf")
    verify_replay({"wf": waits}, history)
    with pytest.raises(NonDeterminismError, match="extra"):
        verify_replay({"wf": schedules}, history)


def test_replayer_with_no_activity_responder_says_so() -> None:
    with pytest.raises(LookupError, match="'hello'"):
        WorkflowReplayer(greet).run(greet, "x")
    with pytest.raises(LookupError, match="no entry"):
        WorkflowReplayer(greet, activities={"other": lambda _: 1}).run(greet, "x")


def test_reply_after_delays_the_result_in_virtual_time() -> None:
    async def timed(ctx: WorkflowContext, _: Any) -> Any:
        value = await ctx.call_activity("slow")
        return [value, ctx.current_utc_datetime.isoformat()]

    result = WorkflowReplayer(timed, activities=lambda _: Reply.ok("v", after=90 * S)).run(timed)
    assert result.output == ["v", (T0 + 90 * S).isoformat()]


def test_reply_error_fails_the_activity() -> None:
    result = WorkflowReplayer(
        greet, activities=lambda _: Reply.error("svc.Down", "unavailable", stack="trace")
    ).run(greet, "x")
    assert result.status is WorkflowStatus.FAILED
    assert any(
        isinstance(e, ActivityFailed)
        and e.failure == FailureDetails("svc.Down", "unavailable", "trace")
        for e in result.history
    )


def test_responder_exception_becomes_an_activity_failure_with_its_stack() -> None:
    def boom(_: ScheduleActivity) -> Any:
        raise ValueError("bad input")

    result = WorkflowReplayer(greet, activities=boom).run(greet, "x")
    (failed,) = [e for e in result.history if isinstance(e, ActivityFailed)]
    assert failed.failure.error_type == "ValueError"
    assert failed.failure.message == "bad input"
    assert "ValueError: bad input" in failed.failure.stack_trace
    assert failed.failure.app_id == "app"


def test_no_reply_leaves_the_workflow_running_and_says_what_it_waits_for() -> None:
    result = WorkflowReplayer(greet, activities=lambda _: NO_REPLY).run(greet, "x")
    assert result.status is WorkflowStatus.RUNNING
    assert [t.name for t in result.outcome.waiting_on] == ["hello"]


def test_cancelled_timers_are_not_fired_by_the_driver() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        value = await ctx.call_activity("quick", timeout=timedelta(hours=1))
        await ctx.create_timer(5 * S)
        return [value, ctx.current_utc_datetime.isoformat()]

    result = WorkflowReplayer(wf, activities=lambda _: Reply.ok(1, after=S)).run(wf)
    assert result.output == [1, (T0 + 6 * S).isoformat()]  # never jumped to the 1h timeout
    assert not any(o.dropped for o in result.outcomes)


def test_child_workflows_run_in_process_when_no_child_responder_is_given() -> None:
    async def parent(ctx: WorkflowContext, _: Any) -> Any:
        ok = await ctx.call_child_workflow("child", 1, app_id="other")
        try:
            await ctx.call_child_workflow("child", -1)
        except Exception as error:
            return [ok, type(error).__name__]
        return [ok]

    async def child(ctx: WorkflowContext, value: int) -> Any:
        await ctx.create_timer(10 * S)
        if value < 0:
            raise ValueError("negative")
        return [ctx.instance_id, ctx.app_id, await ctx.call_activity("inc", value)]

    replayer = WorkflowReplayer([parent, child], activities={"inc": lambda v: v + 1})
    result = replayer.run("parent")
    assert result.output == [["test-1:0", "other", 2], "ChildWorkflowFailedError"]
    assert set(result.children) == {"test-1:0", "test-1:1"}
    first = result.children["test-1:0"]
    assert first.history[1] == WorkflowStarted(
        "child", "test-1:0", "other", 1, ParentRef("test-1", "app", 0)
    )
    assert result.children["test-1:1"].status is WorkflowStatus.FAILED
    # The child's 10 s timer shows up as the time its result reached the parent.
    completed_at = [
        e.timestamp
        for events in split_steps(result.history)
        for e in events[:1]
        if isinstance(e, StepStarted) and any(isinstance(x, ChildWorkflowCompleted) for x in events)
    ]
    assert completed_at == [T0 + 10 * S]


def test_child_responder_answers_children() -> None:
    async def parent(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_child_workflow("anything", "in")

    result = run_to_completion(parent, "parent", children=lambda cmd: f"{cmd.name}:{cmd.input}")
    assert result.output == "anything:in"
    assert result.children == {}


def test_unknown_child_without_responder_says_so() -> None:
    async def parent(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_child_workflow("ghost")

    with pytest.raises(LookupError, match="'ghost'"):
        run_to_completion(parent, "parent")


def test_injected_control_events_suspend_and_resume_the_run() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        value = await ctx.call_activity("a")
        return [value, ctx.current_utc_datetime.isoformat()]

    replayer = WorkflowReplayer(wf, activities=lambda _: Reply.ok("v", after=5 * S))
    replayer.inject(suspended(), at=S)
    replayer.inject(resumed(), at=60 * S)
    result = replayer.run(wf)
    assert result.output == ["v", (T0 + 60 * S).isoformat()]
    statuses = [o.status for o in result.outcomes]
    assert WorkflowStatus.SUSPENDED in statuses


def test_manual_stepping_and_time_rules() -> None:
    replayer = WorkflowReplayer(greet, activities=lambda _: NO_REPLY)
    with pytest.raises(RuntimeError):
        _ = replayer.last
    replayer.start(greet, "x")
    with pytest.raises(RuntimeError, match="already started"):
        replayer.start(greet, "x")
    outcome = replayer.step(activity_completed(0, "hi"), at=T0 + 3 * S)
    assert outcome.output == "hi"
    assert replayer.history[-1] == WorkflowCompleted(WorkflowStatus.COMPLETED, "hi")
    with pytest.raises(ValueError, match="cannot go back"):
        replayer.step(at=T0)


def test_run_to_completion_delivers_scheduled_events() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.wait_for_external_event("approval")

    result = run_to_completion(
        wf, "wf", events=[(timedelta(minutes=3), event_raised("approval", "yes"))]
    )
    assert result.output == "yes"
    assert result.history[-3] == StepStarted(T0 + timedelta(minutes=3))
