"""Lifecycle: suspend/resume, terminate, continue-as-new, completion, failures, idempotent apply."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from flowmesh.engine import WorkflowContext, WorkflowExecution, replay_step
from flowmesh.model import (
    ActivityCompleted,
    CompleteWorkflow,
    EventRaised,
    HistoryEvent,
    ScheduleActivity,
    TerminateChildren,
    WorkflowCompleted,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    T0,
    activity_completed,
    activity_failed,
    activity_scheduled,
    child_completed,
    child_scheduled,
    event_raised,
    resolver,
    resumed,
    started,
    step,
    suspended,
    terminated,
    timer_created,
    timer_fired,
    workflow_completed,
)

S = timedelta(seconds=1)


async def two_step_wf(ctx: WorkflowContext, _: Any) -> Any:
    first = await ctx.call_activity("a")
    second = await ctx.call_activity("b", first)
    return [first, second]


def two_step_history() -> list[Any]:
    return [*started("two_step_wf"), activity_scheduled(0, "a")]


# -- suspend / resume ----------------------------------------------------------------------------


def test_results_arriving_while_suspended_are_recorded_but_applied_only_on_resume() -> None:
    resolve = resolver(two_step_wf)
    history = two_step_history()
    outcome = replay_step(resolve, history, [step(T0 + S), suspended("maintenance")])
    assert outcome.status is WorkflowStatus.SUSPENDED
    assert outcome.append == (step(T0 + S), suspended("maintenance"))
    history += outcome.append

    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(0, "A")])
    assert outcome.status is WorkflowStatus.SUSPENDED
    assert outcome.commands == ()  # not applied: the workflow did not move on to "b"
    assert outcome.append == (step(T0 + 2 * S), activity_completed(0, "A"))  # but not lost
    history += outcome.append

    outcome = replay_step(resolve, history, [step(T0 + 3 * S), resumed()])
    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.commands == (ScheduleActivity(1, "b", "app", "A", 1),)
    history += outcome.append

    outcome = replay_step(resolve, history, [step(T0 + 4 * S), activity_completed(1, "B")])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == ["A", "B"]


def test_events_raised_while_suspended_are_delivered_after_resume() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.wait_for_external_event("go")

    resolve = resolver(wf)
    history = [*started("wf"), step(T0 + S), suspended()]
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), event_raised("go", 1)])
    assert outcome.status is WorkflowStatus.SUSPENDED
    history += outcome.append
    outcome = replay_step(resolve, history, [step(T0 + 3 * S), resumed()])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.output == 1


def test_duplicate_result_while_suspended_is_recorded_once() -> None:
    resolve = resolver(two_step_wf)
    history = [*two_step_history(), step(T0 + S), suspended()]
    outcome = replay_step(
        resolve,
        history,
        [step(T0 + 2 * S), activity_completed(0, "A"), activity_completed(0, "A")],
    )
    assert outcome.append == (step(T0 + 2 * S), activity_completed(0, "A"))
    assert outcome.dropped == (activity_completed(0, "A"),)
    history += outcome.append
    again = replay_step(resolve, history, [step(T0 + 3 * S), activity_completed(0, "A")])
    assert again.append == ()
    assert again.dropped == (activity_completed(0, "A"),)


def test_stray_result_while_suspended_is_dropped() -> None:
    resolve = resolver(two_step_wf)
    history = [*two_step_history(), step(T0 + S), suspended()]
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(7, "?")])
    assert outcome.append == ()
    assert outcome.dropped == (activity_completed(7, "?"),)


def test_suspend_twice_and_resume_when_not_suspended_are_dropped() -> None:
    resolve = resolver(two_step_wf)
    history = two_step_history()
    outcome = replay_step(resolve, history, [step(T0 + S), resumed()])
    assert outcome.append == ()
    assert outcome.dropped == (resumed(),)
    outcome = replay_step(resolve, history, [step(T0 + S), suspended(), suspended()])
    assert outcome.append == (step(T0 + S), suspended())


# -- terminate -----------------------------------------------------------------------------------


def test_terminate_ends_the_workflow_and_appends_workflow_completed() -> None:
    resolve = resolver(two_step_wf)
    outcome = replay_step(resolve, two_step_history(), [step(T0 + S), terminated("operator")])
    assert outcome.status is WorkflowStatus.TERMINATED
    assert outcome.append == (
        step(T0 + S),
        terminated("operator"),
        WorkflowCompleted(WorkflowStatus.TERMINATED, "operator"),
    )
    assert outcome.commands == (CompleteWorkflow(WorkflowStatus.TERMINATED, "operator"),)


def test_terminate_while_suspended_terminates() -> None:
    resolve = resolver(two_step_wf)
    history = [*two_step_history(), step(T0 + S), suspended()]
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), terminated("stop")])
    assert outcome.status is WorkflowStatus.TERMINATED


async def parent_of_two(ctx: WorkflowContext, _: Any) -> Any:
    done = ctx.call_child_workflow("quick", app_id="fast")
    slow = ctx.call_child_workflow("slow", app_id="gpu")
    return await ctx.when_all([done, slow])


def test_recursive_terminate_emits_terminate_children_for_open_children_only() -> None:
    resolve = resolver(parent_of_two)
    history = [
        *started("parent_of_two", instance_id="p"),
        child_scheduled(0, "quick", "fast", parent_instance_id="p"),
        child_scheduled(1, "slow", "gpu", parent_instance_id="p"),
        step(T0 + S),
        child_completed(0, "q"),
    ]
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), terminated("abort", recursive=True)])
    assert outcome.status is WorkflowStatus.TERMINATED
    assert TerminateChildren("p:1", "gpu", "abort") in outcome.commands
    assert not any(
        isinstance(c, TerminateChildren) and c.instance_id == "p:0" for c in outcome.commands
    )
    assert outcome.append[-1] == WorkflowCompleted(WorkflowStatus.TERMINATED, "abort")

    # Non-recursive terminate leaves the children alone.
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), terminated("abort")])
    assert not any(isinstance(c, TerminateChildren) for c in outcome.commands)

    # Replaying the terminated history (e.g. a late child result arrives) re-sends nothing.
    history += replay_step(
        resolve, history, [step(T0 + 2 * S), terminated("abort", recursive=True)]
    ).append
    late = replay_step(resolve, history, [step(T0 + 3 * S), child_completed(1, "s")])
    assert late.commands == ()
    assert late.append == ()
    assert late.status is WorkflowStatus.TERMINATED


def test_terminate_after_completion_is_dropped() -> None:
    resolve = resolver(two_step_wf)
    history = [*two_step_history(), step(T0 + S), activity_completed(0, "A")]
    history += [activity_scheduled(1, "b", input="A"), step(T0 + 2 * S), activity_completed(1, "B")]
    history.append(workflow_completed(["A", "B"]))
    outcome = replay_step(resolve, history, [step(T0 + 3 * S), terminated("too late")])
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.append == ()
    assert outcome.dropped == (terminated("too late"),)


# -- continue-as-new -----------------------------------------------------------------------------


def make_looping_wf(save_events: bool) -> Any:
    async def looping(ctx: WorkflowContext, count: int) -> Any:
        await ctx.wait_for_external_event("go")
        ctx.continue_as_new(count + 1, save_events=save_events)

    return looping


def test_continue_as_new_with_save_events_carries_unconsumed_events() -> None:
    resolve = resolver({"looping": make_looping_wf(True)})
    outcome = replay_step(
        resolve,
        started("looping", 1),
        [step(T0 + S), event_raised("other", "x"), event_raised("go"), event_raised("later", 2)],
    )
    assert outcome.status is WorkflowStatus.CONTINUED_AS_NEW
    assert outcome.output == 2
    (complete,) = outcome.commands
    assert isinstance(complete, CompleteWorkflow)
    assert complete.status is WorkflowStatus.CONTINUED_AS_NEW
    assert complete.output == 2
    assert EventRaised("other", "x") in complete.carried_events
    assert EventRaised("go") not in complete.carried_events  # consumed
    # "later" arrived in the same step, after the workflow decided to continue: carried too,
    # and recorded in history rather than dropped.
    assert complete.carried_events == (EventRaised("other", "x"), EventRaised("later", 2))
    assert outcome.dropped == ()
    assert EventRaised("later", 2) in outcome.append
    assert outcome.append[-1] == WorkflowCompleted(WorkflowStatus.CONTINUED_AS_NEW, 2)
    # Replaying the recorded history sends nothing again.
    replayed = replay_step(resolve, outcome.append, [])
    assert replayed.status is WorkflowStatus.CONTINUED_AS_NEW
    assert (replayed.append, replayed.commands) == ((), ())


def test_continue_as_new_without_save_events_carries_nothing() -> None:
    resolve = resolver({"looping": make_looping_wf(False)})
    outcome = replay_step(
        resolve,
        started("looping", 1),
        [step(T0 + S), event_raised("other"), event_raised("go"), event_raised("later")],
    )
    (complete,) = outcome.commands
    assert isinstance(complete, CompleteWorkflow)
    assert complete.status is WorkflowStatus.CONTINUED_AS_NEW
    assert complete.carried_events == ()
    assert outcome.dropped == (event_raised("later"),)


def test_new_run_after_continue_as_new_receives_carried_events() -> None:
    async def collector(ctx: WorkflowContext, seen: list[Any]) -> Any:
        value = await ctx.wait_for_external_event("item")
        seen = [*seen, value]
        if len(seen) == 3:
            return seen
        ctx.continue_as_new(seen, save_events=True)
        return None

    resolve = resolver(collector)
    outcome = replay_step(
        resolve,
        started("collector", []),
        [step(T0 + S), event_raised("item", 1), event_raised("item", 2)],
    )
    (complete,) = outcome.commands
    assert isinstance(complete, CompleteWorkflow)
    assert complete.carried_events == (EventRaised("item", 2),)
    # The runtime starts a fresh history with the carried events after WorkflowStarted.
    fresh = [*started("collector", complete.output), *complete.carried_events]
    outcome = replay_step(resolve, [], fresh)
    assert outcome.status is WorkflowStatus.CONTINUED_AS_NEW
    assert outcome.output == [1, 2]


# -- completion and failure ----------------------------------------------------------------------


def test_workflow_raising_fails_with_its_type_and_message() -> None:
    class OrderRejectedError(Exception):
        pass

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.call_activity("a")
        raise OrderRejectedError("order 42 rejected")

    outcome = replay_step(
        resolver(wf),
        [*started("wf"), activity_scheduled(0, "a")],
        [step(T0), activity_completed(0)],
    )
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.error_type.endswith("OrderRejectedError")
    assert outcome.failure.message == "order 42 rejected"
    assert "order 42 rejected" in outcome.failure.stack_trace
    assert outcome.failure.app_id == "app"
    assert outcome.append[-1] == WorkflowCompleted(WorkflowStatus.FAILED, None, outcome.failure)


def test_workflow_raising_before_its_first_await_fails() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        raise KeyError("missing")

    outcome = replay_step(resolver(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.error_type == "KeyError"


def test_unserialisable_workflow_output_fails_the_workflow() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        return {"when": T0}

    outcome = replay_step(resolver(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.output is None
    assert outcome.failure is not None
    assert outcome.failure.error_type == "flowmesh._errors.SerializationError"
    assert "output of workflow 'wf'" in outcome.failure.message
    assert "datetime" in outcome.failure.message


def test_awaiting_a_non_flowmesh_awaitable_fails_naming_what_was_awaited() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        await asyncio.sleep(0)

    outcome = replay_step(resolver(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.error_type == "TypeError"
    assert "awaited asyncio.tasks.sleep()" in outcome.failure.message
    assert "not a flowmesh task" in outcome.failure.message
    assert "ctx.create_timer" in outcome.failure.message


def test_awaiting_a_non_flowmesh_awaitable_in_a_helper_names_the_chain() -> None:
    async def helper() -> None:
        await asyncio.sleep(0)

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.call_activity("a")
        await helper()

    outcome = replay_step(
        resolver(wf),
        [*started("wf"), activity_scheduled(0, "a")],
        [step(T0), activity_completed(0)],
    )
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert ".helper() -> asyncio.tasks.sleep()" in outcome.failure.message


def test_awaiting_a_foreign_awaitable_object_names_its_type() -> None:
    class Foreign:
        def __await__(self) -> Any:
            yield "not a task"

    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        await Foreign()

    outcome = replay_step(resolver(wf), [], started("wf"))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert "Foreign.__await__()" in outcome.failure.message
    assert "'not a task'" in outcome.failure.message


def test_result_after_completion_is_dropped() -> None:
    resolve = resolver(two_step_wf)
    history = [*two_step_history(), step(T0 + S), activity_completed(0, "A")]
    history += [activity_scheduled(1, "b", input="A")]
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(1, "B")])
    assert outcome.status is WorkflowStatus.COMPLETED
    history += outcome.append
    late = replay_step(
        resolve,
        history,
        [step(T0 + 3 * S), activity_completed(1, "B"), event_raised("x"), timer_fired(9)],
    )
    assert late.status is WorkflowStatus.COMPLETED
    assert late.output == ["A", "B"]
    assert late.append == ()
    assert late.commands == ()
    assert late.dropped == (activity_completed(1, "B"), event_raised("x"), timer_fired(9))


# -- idempotent apply ----------------------------------------------------------------------------


def test_duplicate_result_in_the_same_step_is_dropped() -> None:
    resolve = resolver(two_step_wf)
    outcome = replay_step(
        resolve,
        two_step_history(),
        [step(T0 + S), activity_completed(0, "A"), activity_completed(0, "A")],
    )
    assert outcome.append == (
        step(T0 + S),
        activity_completed(0, "A"),
        activity_scheduled(1, "b", input="A"),
    )
    assert outcome.dropped == (ActivityCompleted(0, "A"),)


def test_duplicate_result_in_a_later_step_leaves_history_unchanged() -> None:
    resolve = resolver(two_step_wf)
    history = [*two_step_history(), step(T0 + S), activity_completed(0, "A")]
    history += [activity_scheduled(1, "b", input="A")]
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_completed(0, "A")])
    assert outcome.append == ()
    assert outcome.commands == ()
    assert outcome.dropped == (ActivityCompleted(0, "A"),)
    assert outcome.status is WorkflowStatus.RUNNING
    # A failure for the same seq, arriving late, is dropped too.
    outcome = replay_step(resolve, history, [step(T0 + 2 * S), activity_failed(0, "E", "late")])
    assert outcome.append == ()


def test_result_of_the_wrong_kind_for_a_seq_is_dropped() -> None:
    resolve = resolver(two_step_wf)
    outcome = replay_step(
        resolve, two_step_history(), [step(T0 + S), timer_fired(0), child_completed(0)]
    )
    assert outcome.append == ()
    assert outcome.dropped == (timer_fired(0), child_completed(0))


def test_reordered_results_give_the_same_output() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        a = ctx.call_activity("a")
        t = ctx.create_timer(timedelta(seconds=5))
        b = ctx.call_activity("b")
        await ctx.when_all([a, t, b])
        return [a.get_result(), b.get_result()]

    resolve = resolver(wf)
    first = replay_step(resolve, [], started("wf"))
    history = list(first.append)
    results: list[HistoryEvent] = [
        activity_completed(2, "B"),
        timer_fired(1),
        activity_completed(0, "A"),
    ]
    outputs: set[tuple[object, ...]] = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        outcome = replay_step(resolve, history, [step(T0 + 5 * S), *(results[i] for i in order)])
        assert outcome.status is WorkflowStatus.COMPLETED
        outputs.add(tuple(outcome.output))  # type: ignore[arg-type]
    assert outputs == {("A", "B")}
    # One at a time, in separate steps, in reverse order.
    for index, result in enumerate(results):
        outcome = replay_step(resolve, history, [step(T0 + (6 + index) * S), result])
        history += outcome.append
    assert outcome.output == ["A", "B"]


def test_cached_execution_and_full_replay_agree() -> None:
    resolve = resolver(two_step_wf)
    execution = WorkflowExecution(resolve)
    history: list[Any] = []
    steps: list[list[HistoryEvent]] = [
        started("two_step_wf"),
        [step(T0 + S), activity_completed(0, "A")],
        [step(T0 + 2 * S), activity_completed(1, "B")],
    ]
    for new_events in steps:
        cached = execution.step(new_events)
        fresh = replay_step(resolve, history, new_events)
        assert cached == fresh
        history += cached.append
    assert execution.status is WorkflowStatus.COMPLETED


def test_timer_fired_twice_is_applied_once() -> None:
    async def wf(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.create_timer(timedelta(seconds=1))
        return await ctx.call_activity("after")

    history = [*started("wf"), timer_created(0, T0 + S)]
    outcome = replay_step(resolver(wf), history, [step(T0 + S), timer_fired(0), timer_fired(0)])
    assert outcome.dropped == (timer_fired(0),)
    assert outcome.commands == (ScheduleActivity(1, "after", "app", None, 1),)


def test_redelivered_external_event_with_the_same_event_id_is_recorded_once() -> None:
    """A RaiseEvent redelivered after its step committed does not reach the workflow twice."""
    from flowmesh.engine import replay_step
    from flowmesh.model import EventRaised, StepStarted, WorkflowStarted
    from flowmesh.testing.history import T0

    async def collect(ctx: WorkflowContext, _: Any) -> Any:
        first = await ctx.wait_for_external_event("e")
        second = await ctx.wait_for_external_event("e")
        return [first, second]

    resolve = {"collect": collect}.get
    history = list(
        replay_step(resolve, [], [StepStarted(T0), WorkflowStarted("collect", "i", "a")]).append
    )
    step = replay_step(resolve, history, [StepStarted(T0), EventRaised("e", 1, "id-1")])
    history += step.append
    again = replay_step(resolve, history, [StepStarted(T0), EventRaised("e", 1, "id-1")])
    assert again.append == () and len(again.dropped) == 1
    done = replay_step(resolve, history, [StepStarted(T0), EventRaised("e", 2, "id-2")])
    assert done.output == [1, 2]


def test_a_continued_run_numbers_its_tasks_after_the_previous_run() -> None:
    """first_seq keeps seqs (and default child IDs) unique across continue-as-new runs."""
    from flowmesh.engine import replay_step
    from flowmesh.model import ScheduleActivity, StepStarted, WorkflowStarted
    from flowmesh.testing.history import T0

    async def one(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.call_activity("a")

    started = WorkflowStarted("one", "i", "app", None, first_seq=7)
    outcome = replay_step({"one": one}.get, [], [StepStarted(T0), started])
    assert [c.seq for c in outcome.commands if isinstance(c, ScheduleActivity)] == [7]
