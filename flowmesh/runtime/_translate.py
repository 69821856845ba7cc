"""Translations between wire messages, history events, engine outcomes and store commits.

Pure functions: the orchestrator does the I/O around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from flowmesh.engine import StepOutcome
from flowmesh.model import (
    ActivityCancel,
    ActivityCompleted,
    ActivityFailed,
    ActivityResult,
    ActivityTask,
    CancelActivity,
    CancelChildWorkflow,
    ChildResult,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    Command,
    CompleteWorkflow,
    Control,
    ControlAction,
    EventRaised,
    FailureDetails,
    HistoryEvent,
    Message,
    ParentRef,
    PendingTask,
    RaiseEvent,
    ScheduleActivity,
    ScheduleChildWorkflow,
    SendEvent,
    StartTimer,
    StartWorkflow,
    TerminateChildren,
    TimerCreated,
    TimerDue,
    TimerFired,
    WorkflowResumed,
    WorkflowState,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
)
from flowmesh.runtime._leases import BookkeepingEffects, lease_timers_done
from flowmesh.store import Commit, OutboxEntry, TimerEntry
from flowmesh.transport import Outgoing, QueueKind


def message_to_event(message: Message) -> HistoryEvent | None:
    """The history event a reply-queue message contributes, or None if it adds none."""
    match message:
        case ActivityResult(seq=seq, output=output, failure=None):
            return ActivityCompleted(seq, output)
        case ActivityResult(seq=seq, failure=failure) if failure is not None:
            return ActivityFailed(seq, failure)
        case ChildResult(seq=seq, output=output, failure=None):
            return ChildWorkflowCompleted(seq, output)
        case ChildResult(seq=seq, failure=failure) if failure is not None:
            return ChildWorkflowFailed(seq, failure)
        case TimerDue(seq=seq):
            return TimerFired(seq)
        case RaiseEvent(name=name, data=data, event_id=event_id):
            return EventRaised(name, data, event_id)
        case Control(action=ControlAction.SUSPEND, reason=reason):
            return WorkflowSuspended(reason)
        case Control(action=ControlAction.RESUME, reason=reason):
            return WorkflowResumed(reason)
        case Control(action=ControlAction.TERMINATE, reason=reason, recursive=recursive):
            return WorkflowTerminated(reason, recursive)
        case _:
            return None


class Encode(Protocol):
    """``Codec.encode_message``; ``app_id`` hosts the workflow of a message that does not say."""

    def __call__(self, message: Message, *, app_id: str | None = None) -> bytes:
        """The encoded ``message``."""
        ...


def command_messages(
    commands: Sequence[Command],
    *,
    instance_id: str,
    app_id: str,
    run_id: str,
    parent: ParentRef | None,
    encode: Encode,
) -> list[Outgoing]:
    """The messages a step's commands send (timers and continue-as-new are handled apart).

    Every task and child start carries ``run_id``, and results come back with it."""
    out: list[Outgoing] = []
    for command in commands:
        match command:
            case ScheduleActivity(seq=seq, name=name, app_id=target, input=value, attempt=attempt):
                task = ActivityTask(instance_id, app_id, target, seq, attempt, name, value, run_id)
                out.append(
                    Outgoing(target, QueueKind.WORK, encode(task), f"{instance_id}#{seq}/{attempt}")
                )
            case ScheduleChildWorkflow(seq=seq, name=name, app_id=target, instance_id=child):
                start = StartWorkflow(
                    child, name, target, command.input, ParentRef(instance_id, app_id, seq, run_id)
                )
                out.append(Outgoing(target, QueueKind.WORK, encode(start), f"start:{child}"))
            case (
                TerminateChildren(instance_id=child, app_id=target, reason=reason)
                | CancelChildWorkflow(instance_id=child, app_id=target, reason=reason)
            ):
                control = Control(child, ControlAction.TERMINATE, reason, recursive=True)
                out.append(Outgoing(target, QueueKind.REPLY, encode(control)))
            case CancelActivity(seq=seq, app_id=target, attempt=attempt):
                cancel = ActivityCancel(instance_id, app_id, target, seq, attempt, run_id)
                out.append(
                    Outgoing(
                        target,
                        QueueKind.WORK,
                        encode(cancel),
                        f"cancel:{instance_id}#{seq}/{attempt}",
                    )
                )
            case SendEvent(seq=seq, instance_id=receiver, app_id=target, name=name, data=data):
                event_id = sent_event_id(app_id, instance_id, run_id, seq)
                raised = RaiseEvent(receiver, name, data, event_id)
                # Its data belongs to the receiving workflow's app (payload binding).
                body = encode(raised, app_id=target)
                out.append(Outgoing(target, QueueKind.REPLY, body, f"event:{event_id}"))
            case CompleteWorkflow(status=status, output=output, failure=failure) if (
                parent is not None and status.is_terminal
            ):
                if failure is None and status is not WorkflowStatus.COMPLETED:
                    failure = FailureDetails(
                        "WorkflowTerminated",
                        f"child workflow {instance_id} was terminated: {output}",
                    )
                    output = None
                out.append(child_result(parent, instance_id, output, failure, encode))
            case StartTimer() | CompleteWorkflow():
                pass
    return out


def sent_event_id(app_id: str, instance_id: str, run_id: str, seq: int) -> str:
    """The ``event_id`` of the event task ``seq`` of a workflow sends (``ctx.send_event``):
    the same on every republish of the outbox, unique across senders and runs."""
    return f"{app_id}/{instance_id}/{run_id}#{seq}"


def child_result(
    parent: ParentRef,
    instance_id: str,
    output: object,
    failure: FailureDetails | None,
    encode: Encode,
) -> Outgoing:
    """The ``ChildResult`` telling ``parent`` (that run of it) how child ``instance_id``
    ended."""
    result = ChildResult(
        parent.instance_id, parent.seq, instance_id, output, failure, parent.run_id
    )
    body = encode(result, app_id=parent.app_id)  # its values belong to the parent
    return Outgoing(parent.app_id, QueueKind.REPLY, body, f"child:{instance_id}")


def final_child_result(state: WorkflowState, encode: Encode) -> Outgoing | None:
    """The ``ChildResult`` of a finished child, from its stored state (sent again when its
    parent's start is redelivered after the child finished); None if it has not finished or
    has no parent."""
    if state.parent is None or not state.status.is_terminal:
        return None
    messages = command_messages(
        [CompleteWorkflow(state.status, state.output, state.failure)],
        instance_id=state.instance_id,
        app_id=state.app_id,
        run_id=state.run_id,
        parent=state.parent,
        encode=encode,
    )
    return messages[0] if messages else None


def new_timers(
    instance_id: str, run_id: str, commands: Sequence[Command]
) -> tuple[TimerEntry, ...]:
    """Durable timers the step's commands create (fenced to ``run_id``)."""
    return tuple(
        TimerEntry(instance_id, c.seq, c.fire_at, run_id)
        for c in commands
        if isinstance(c, StartTimer)
    )


def open_timer_seqs(history: Sequence[HistoryEvent]) -> tuple[int, ...]:
    """Timers created in ``history`` that have not fired (cancelled when the workflow ends)."""
    created = {e.seq for e in history if isinstance(e, TimerCreated)}
    fired = {e.seq for e in history if isinstance(e, TimerFired)}
    return tuple(sorted(created - fired))


def build_state(
    previous: WorkflowState | None,
    outcome: StepOutcome,
    *,
    instance_id: str,
    app_id: str,
    name: str,
    input_value: object,
    parent: ParentRef | None,
    now: datetime,
    version: int,
    history_length: int,
    run_id: str,
    waiting_on: tuple[PendingTask, ...] | None = None,
    refusals: tuple[str, ...] = (),
) -> WorkflowState:
    """The instance state recorded with a step's commit."""
    return WorkflowState(
        instance_id=instance_id,
        app_id=app_id,
        name=name,
        status=outcome.status,
        input=input_value,
        output=outcome.output,
        failure=outcome.failure,
        custom_status=outcome.custom_status,
        created_at=previous.created_at if previous and previous.created_at else now,
        updated_at=now,
        parent=parent,
        waiting_on=outcome.waiting_on if waiting_on is None else waiting_on,
        stall_reason=outcome.stall_reason,
        history_length=history_length,
        version=version,
        run_id=run_id,
        refusals=refusals,
    )


def build_commit(
    *,
    instance_id: str,
    expected_version: int,
    expected_run_id: str,
    state: WorkflowState,
    append: Sequence[HistoryEvent],
    replace_history: bool,
    messages: Sequence[Outgoing],
    timers: Sequence[TimerEntry],
    cancel_timers: Sequence[int],
    clear_outbox: Sequence[str] = (),
    take_held: int = 0,
    take_waiters: bool = False,
) -> Commit:
    """Assemble the atomic commit of one step; outbox entry IDs are unique per version."""
    outbox = tuple(
        OutboxEntry(instance_id, f"{state.version}:{index}", message)
        for index, message in enumerate(messages)
    )
    return Commit(
        instance_id=instance_id,
        expected_version=expected_version,
        expected_run_id=expected_run_id,
        state=state,
        append=tuple(append),
        replace_history=replace_history,
        outbox=outbox,
        add_timers=tuple(timers),
        cancel_timers=tuple(sorted(set(cancel_timers))),
        clear_outbox=tuple(clear_outbox),
        take_held=take_held,
        take_waiters=take_waiters,
    )


def continued_as_new(commands: list[Command]) -> CompleteWorkflow | None:
    """The step's continue-as-new completion, if it has one."""
    return next(
        (
            c
            for c in commands
            if isinstance(c, CompleteWorkflow) and c.status is WorkflowStatus.CONTINUED_AS_NEW
        ),
        None,
    )


def timers_to_cancel(
    outcome: StepOutcome,
    effects: BookkeepingEffects,
    history: list[HistoryEvent],
    *,
    ended: bool,
) -> list[int]:
    """The seqs of stored timers a step's commit removes: cancelled ones, fired ones (a timer
    leaves the store when its firing is recorded; claims only postpone it), lease timers no
    longer needed, and every open one when the run ends."""
    append = outcome.append
    cancel = list(outcome.cancelled_timers)
    cancel.extend(e.seq for e in append if isinstance(e, TimerFired))
    cancel.extend(effects.cancel_timers)
    cancel.extend(lease_timers_done(append, history, ended=ended))
    if ended:
        cancel.extend(open_timer_seqs([*history, *append]))
    return cancel


def blank_state(instance_id: str, app_id: str, version: int) -> WorkflowState:
    """The state an instance is created from (``version``: that of a purged earlier run)."""
    return WorkflowState(
        instance_id=instance_id,
        app_id=app_id,
        name="",
        status=WorkflowStatus.PENDING,
        version=version,
    )
