"""Property: whatever a workflow does, its recorded history replays to exactly the same decisions.

Hypothesis generates small workflow "programs" (activities on two apps, retries, activity
timeouts, timers, when_all, when_any, child workflows, external events with and without
timeouts, new_uuid, custom status, patches) run by one generic workflow function. The
``WorkflowReplayer`` drives each program to completion with random successes, failures,
delays and delivery orders. Then:

* replaying the complete history from scratch schedules nothing, appends nothing and yields
  the same status and output;
* replaying every prefix that ends at a step boundary, fed the inputs of the next step,
  reproduces exactly that step's recorded events and commands.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmesh._errors import ActivityFailedError, ChildWorkflowFailedError, NonRetryableError
from flowmesh.engine import WorkflowContext, replay_step
from flowmesh.model import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    Command,
    CompleteWorkflow,
    EventRaised,
    HistoryEvent,
    PatchRecorded,
    RetryPolicy,
    ScheduleActivity,
    ScheduleChildWorkflow,
    StartTimer,
    StepStarted,
    TimerCreated,
    WorkflowCompleted,
    WorkflowStatus,
)
from flowmesh.testing.history import (
    NO_REPLY,
    Reply,
    WorkflowReplayer,
    resolver,
    split_steps,
)

S = timedelta(seconds=1)
APPS = ("app-a", "app-b")
EVENT_NAMES = ("alpha", "beta")


# -- the generic workflow ------------------------------------------------------------------------


async def program_wf(ctx: WorkflowContext, program: list[list[Any]]) -> Any:  # noqa: C901 - one case per op
    """Interpret ``program``; every failure is caught and recorded, so the run completes."""
    record: list[Any] = []
    for index, instruction in enumerate(program):
        op = instruction[0]
        try:
            if op == "act":
                record.append(await ctx.call_activity("work", index, app_id=instruction[1]))
            elif op == "retry":
                policy = RetryPolicy(max_attempts=3, initial_interval=S, max_interval=2 * S)
                record.append(
                    await ctx.call_activity("work", index, app_id=instruction[1], retry=policy)
                )
            elif op == "timeout":
                record.append(await ctx.call_activity("slow", index, timeout=instruction[1] * S))
            elif op == "timer":
                await ctx.create_timer(instruction[1] * S)
                record.append(ctx.current_utc_datetime.isoformat())
            elif op == "all":
                tasks = [
                    ctx.call_activity("work", [index, k], app_id=APPS[k % 2])
                    for k in range(instruction[1])
                ]
                record.append(await ctx.when_all(tasks))
            elif op == "any":
                tasks = [ctx.call_activity("work", [index, k]) for k in range(instruction[1])]
                tasks.append(ctx.create_timer(3 * S))
                winner = await ctx.when_any(tasks)
                record.append(["any", tasks.index(winner), winner.is_failed])
            elif op == "child":
                record.append(
                    await ctx.call_child_workflow("child_wf", index, app_id=instruction[1])
                )
            elif op == "event":
                timeout = instruction[2] * S if instruction[2] is not None else None
                record.append(await ctx.wait_for_external_event(instruction[1], timeout=timeout))
            elif op == "uuid":
                record.append(ctx.new_uuid())
            elif op == "status":
                ctx.set_custom_status({"at": index})
            elif op == "patch":
                record.append(ctx.is_patched(f"patch-{index}"))
        except (ActivityFailedError, ChildWorkflowFailedError) as error:
            record.append(["error", op, error.error_type])
        except TimeoutError:
            record.append(["timeout", op])
    record.append(ctx.current_utc_datetime.isoformat())
    return record


async def child_wf(ctx: WorkflowContext, value: int) -> Any:
    """A child: one activity (failures propagate and fail the child) and a timer."""
    result = await ctx.call_activity("work", ["child", value])
    await ctx.create_timer(2 * S)
    return [result, ctx.instance_id]


WORKFLOWS = {"program_wf": program_wf, "child_wf": child_wf}
RESOLVE = resolver(WORKFLOWS)

# -- programs ------------------------------------------------------------------------------------

instructions = st.one_of(
    st.tuples(st.just("act"), st.sampled_from(APPS)),
    st.tuples(st.just("retry"), st.sampled_from(APPS)),
    st.tuples(st.just("timeout"), st.integers(1, 4)),
    st.tuples(st.just("timer"), st.integers(0, 5)),
    st.tuples(st.just("all"), st.integers(0, 4)),
    st.tuples(st.just("any"), st.integers(1, 3)),
    st.tuples(st.just("child"), st.sampled_from(APPS)),
    st.tuples(st.just("event"), st.sampled_from(EVENT_NAMES), st.none() | st.integers(1, 5)),
    st.tuples(st.just("uuid")),
    st.tuples(st.just("status")),
    st.tuples(st.just("patch")),
).map(list)

programs = st.lists(instructions, min_size=0, max_size=6)


def make_responder(rng: random.Random) -> Any:
    def respond(command: ScheduleActivity) -> object:
        roll = rng.random()
        after = rng.choice([0, 0, 1, 2, 4]) * S
        if command.name == "slow" and roll < 0.3:
            return NO_REPLY
        if roll < 0.15:
            raise NonRetryableError(f"permanent failure of {command.seq}")
        if roll < 0.35:
            return Reply.error("IOError", f"transient failure of {command.seq}", after=after)
        return Reply.ok([command.app_id, command.input, command.attempt], after=after)

    return respond


def drive(program: list[list[Any]], rng: random.Random, *, full_replay: bool) -> Any:
    def shuffle(events: list[HistoryEvent]) -> list[HistoryEvent]:
        events = list(events)
        rng.shuffle(events)
        return events

    replayer = WorkflowReplayer(
        WORKFLOWS,
        activities=make_responder(rng),
        full_replay=full_replay,
        max_batch=rng.choice([None, 1, 2, 3]),
        order=shuffle,
    )
    # Every event the program waits for is raised (some before, some after the wait);
    # sometimes one extra that nobody consumes.
    for instruction in program:
        if instruction[0] == "event" and (instruction[2] is None or rng.random() < 0.7):
            replayer.raise_event(instruction[1], rng.randrange(100), at=rng.randrange(40) * S)
    if rng.random() < 0.3:
        replayer.raise_event(rng.choice(EVENT_NAMES), "extra", at=rng.randrange(40) * S)
    # A wait with a timeout may still take an event meant for a later wait (one arriving at
    # the very moment it times out wins): top each name up late so later waits never starve.
    for instruction in program:
        if instruction[0] == "event" and instruction[2] is not None:
            replayer.raise_event(instruction[1], "spare", at=(60 + rng.randrange(20)) * S)
    return replayer.run("program_wf", program)


# -- helpers -------------------------------------------------------------------------------------

_OUTPUT_EVENTS = (
    ActivityScheduled,
    ChildWorkflowScheduled,
    TimerCreated,
    PatchRecorded,
    WorkflowCompleted,
)


def recorded(command: Command) -> HistoryEvent | None:
    """The history event that records ``command`` (None for commands not recorded)."""
    match command:
        case ScheduleActivity(seq, name, app_id, value, attempt):
            return ActivityScheduled(seq, name, app_id, value, attempt)
        case ScheduleChildWorkflow(seq, name, app_id, instance_id, value):
            return ChildWorkflowScheduled(seq, name, app_id, instance_id, value)
        case StartTimer(seq, fire_at):
            return TimerCreated(seq, fire_at)
        case CompleteWorkflow(status, output, failure):
            return WorkflowCompleted(status, output, failure)
        case _:
            return None


def check_history_replays(history: tuple[HistoryEvent, ...], status: Any, output: Any) -> None:
    # (1) The complete history replays to the same end, with nothing new.
    final = replay_step(RESOLVE, history, [])
    assert final.commands == ()
    assert final.append == ()
    assert final.status == status
    assert final.output == output

    # (2) Every prefix ending at a step boundary, fed the next step's inputs, reproduces that
    # step exactly: the same events to commit and the commands they record.
    prefix: list[HistoryEvent] = []
    for events in split_steps(history):
        assert isinstance(events[0], StepStarted)
        inputs = [e for e in events if not isinstance(e, _OUTPUT_EVENTS)]
        outcome = replay_step(RESOLVE, prefix, inputs)
        assert outcome.status is not WorkflowStatus.STALLED, outcome.stall_reason
        assert outcome.append == tuple(events)
        recorded_outputs = [e for e in events if isinstance(e, _OUTPUT_EVENTS)]
        assert [recorded(c) for c in outcome.commands] == [
            e for e in recorded_outputs if not isinstance(e, PatchRecorded)
        ]
        prefix.extend(events)


# -- the properties ------------------------------------------------------------------------------


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(program=programs, rng=st.randoms(use_true_random=False), full_replay=st.booleans())
def test_recorded_history_replays_to_the_same_commands_status_and_output(
    program: list[list[Any]], rng: random.Random, full_replay: bool
) -> None:
    result = drive(program, rng, full_replay=full_replay)
    assert result.status is WorkflowStatus.COMPLETED, (result.failure, result.outcome)
    assert isinstance(result.output, list)
    assert len(result.output) == len(program) - sum(i[0] == "status" for i in program) + 1
    check_history_replays(result.history, result.status, result.output)
    for child in result.children.values():
        check_history_replays(child.history, child.status, child.output)


@settings(max_examples=25, deadline=None)
@given(program=programs, seed=st.integers(0, 2**32))
def test_cached_execution_and_full_replay_record_identical_histories(
    program: list[list[Any]], seed: int
) -> None:
    cached = drive(program, random.Random(seed), full_replay=False)
    replayed = drive(program, random.Random(seed), full_replay=True)
    assert cached.history == replayed.history
    assert cached.outcomes == replayed.outcomes


@settings(max_examples=25, deadline=None)
@given(program=programs, seed=st.integers(0, 2**32))
def test_history_with_every_event_duplicated_changes_nothing(
    program: list[list[Any]], seed: int
) -> None:
    """Re-delivering every input event of each step right after it is recorded is a no-op."""
    result = drive(program, random.Random(seed), full_replay=True)
    history: list[HistoryEvent] = []
    for events in split_steps(result.history):
        history.extend(events)
        inputs = [
            e
            for e in events
            if not isinstance(e, (*_OUTPUT_EVENTS, StepStarted, EventRaised))
            and not type(e).__name__.startswith("Workflow")
        ]
        again = replay_step(RESOLVE, history, [StepStarted(events[0].timestamp), *inputs])  # type: ignore[union-attr]
        assert again.append == ()
        assert again.commands == ()
        assert again.dropped == tuple(inputs)
