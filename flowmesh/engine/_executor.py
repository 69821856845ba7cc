"""The replay executor: history in, commands out.

A :class:`WorkflowExecution` is fed history events in order. Old events (``replaying=True``)
rebuild the workflow's state by re-running its code; new events advance it. Code asks for
work through :class:`WorkflowContext`, which allocates a sequence number per task and records
a pending action; a ``...Scheduled`` event in history confirms the action at that ``seq``.
An action history does not confirm is new and becomes a command. An action that contradicts
history is non-determinism: the execution stalls with both sides in the reason.

The module is pure: no I/O, no clock, no randomness, no asyncio. The coroutine of the
workflow function is stepped by hand with ``send``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

from flowmesh._errors import (
    ActivityFailedError,
    ChildWorkflowFailedError,
    NonDeterminismError,
    WorkflowAlreadyExistsError,
)
from flowmesh.engine._actions import (
    RecordedAction,
    TaskKind,
    describe_action,
    describe_awaited,
    scheduled_event,
)
from flowmesh.engine._context import ContinueAsNew, Logger, WorkflowContext
from flowmesh.engine._mailbox import EventMailbox
from flowmesh.engine._outcome import StepOutcome
from flowmesh.engine._patches import PatchState
from flowmesh.engine._scheduler import TaskScheduler
from flowmesh.engine._suspension import SuspensionBuffer
from flowmesh.engine._tasks import Task
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    Command,
    CompleteWorkflow,
    EventRaised,
    EventSent,
    FailureDetails,
    HistoryEvent,
    ParentRef,
    PatchRecorded,
    PendingTask,
    RetryPolicy,
    ScheduleActivity,
    StepStarted,
    TaskCancelled,
    TerminateChildren,
    TimerCreated,
    TimerFired,
    WorkflowCompleted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
    check_value,
)

WorkflowFunction = Callable[[WorkflowContext, Any], Coroutine[Any, Any, Any]]
"""An ``async def workflow(ctx, input)`` function."""

WorkflowResolver = Callable[[str], WorkflowFunction | None]
"""Looks a workflow function up by its registered name."""

WAITING_SHOWN = 20
"""How many pending tasks a workflow state lists individually."""

ValueCheck = Callable[[object, str], None]
"""Raises ``SerializationError`` unless a value can be sent; the str says whose value it is."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SEEN_EVENT_IDS_CARRIED = 1000
"""How many of the latest event IDs a continued run inherits for de-duplication: enough to
cover any redelivery of an event recorded shortly before continue-as-new."""

_FLOWMESH_CAUSES: dict[str, type[Exception]] = {
    "flowmesh.WorkflowAlreadyExistsError": WorkflowAlreadyExistsError,
}
"""Remote failure types re-raised as their flowmesh class (the ``__cause__`` of the task
error), so workflow code can catch e.g. a child ID that already exists by type."""


class _Stall(Exception):  # noqa: N818 - internal control flow, never escapes the executor
    """Stops the execution: history and code disagree, or the workflow cannot run."""


class WorkflowExecution:
    """The replayed state of one workflow execution; feed it events, collect outcomes.

    Keep one alive between steps to apply only new events (the runtime's per-replica cache),
    or build a fresh one and replay the whole history: both give the same outcome.
    """

    def __init__(
        self,
        resolve: WorkflowResolver,
        *,
        logger: Logger | None = None,
        check_value: ValueCheck = check_value,
    ) -> None:
        self._resolve = resolve
        self._logger: Logger = logger or logging.getLogger("flowmesh.workflow")
        # Injected so the runtime can also enforce its codec's size limit at the call site,
        # while the engine itself stays free of msgpack.
        self.check_value = check_value
        self.instance_id = ""
        self.run_id = ""
        self.app_id = ""
        self.name = ""
        self.input: object = None
        self.parent: ParentRef | None = None
        self.current_time = _EPOCH
        self.is_replaying = True
        self.custom_status: object = None
        self._context: WorkflowContext | None = None
        self._coroutine: Coroutine[Any, Any, Any] | None = None
        self._awaiting: Task[Any] | None = None
        self._mailbox = EventMailbox()
        self._tasks = TaskScheduler(
            self._mailbox, now=lambda: self.current_time, instance_id=lambda: self.instance_id
        )
        self._suspension = SuspensionBuffer()
        self._refused: list[tuple[HistoryEvent | None, str]] = []
        self._suspended = False
        self._patches = PatchState()
        self._completion: CompleteWorkflow | None = None
        self._completion_recorded = False
        self._save_events = False
        self._stall_reason = ""
        self._terminate_children: list[TerminateChildren] = []
        self._pending_event: HistoryEvent | None = None  # the new event being applied

    # -- public driving API ----------------------------------------------------------------------

    @property
    def status(self) -> WorkflowStatus:
        """Where the execution stands after the events fed so far."""
        if self._stall_reason:
            return WorkflowStatus.STALLED
        if self._completion is not None:
            return self._completion.status
        if self._suspended:
            return WorkflowStatus.SUSPENDED
        return WorkflowStatus.RUNNING if self._coroutine is not None else WorkflowStatus.PENDING

    def replay(self, history: Iterable[HistoryEvent]) -> None:
        """Rebuild state from events already committed to history."""
        events = list(history)
        self._patches.read(events)
        self.is_replaying = True
        for event in events:
            if self._stall_reason:
                break
            self._guarded(event)
        # Timers cancelled by recorded events were reported by the step that recorded them;
        # reporting them again would make a fresh replay differ from a cached execution.
        self._tasks.cancelled_timers.clear()

    def step(self, new_events: Iterable[HistoryEvent]) -> StepOutcome:
        """Apply new events and return what to commit and which commands to send.

        Afterwards the execution reflects history plus ``outcome.append``, so it can be kept
        and fed the next step's events directly (valid only if that commit succeeds).
        """
        self.is_replaying = False
        accepted: list[HistoryEvent] = []
        dropped: list[HistoryEvent] = []
        for event in new_events:
            if self._stall_reason:
                # Keep what arrived: once the code is fixed, replay applies it.
                if not isinstance(event, StepStarted):
                    accepted.append(event)
                continue
            if self._completion is not None and not isinstance(event, StepStarted):
                (accepted if self._carry_over(event) else dropped).append(event)
                continue
            self._pending_event = event
            if self._guarded(event):
                accepted.append(event)
            else:
                dropped.append(event)
        return self._collect(accepted, dropped)

    # -- event processing ------------------------------------------------------------------------

    def _guarded(self, event: HistoryEvent) -> bool:
        try:
            return self._process(event)
        except _Stall as stall:
            self._stall_reason = str(stall)
            self._close_coroutine()
            return True

    def _process(self, event: HistoryEvent) -> bool:
        """Apply one event; False if it is a duplicate or stray and must not be recorded."""
        if (
            isinstance(event, EventRaised)
            and event.event_id
            and not self._suspension.replaying
            # A redelivered RaiseEvent (the step committed, the ack was lost) is recorded once.
            and not self._mailbox.first_sight(event.event_id)
        ):
            return False
        if (
            self._suspended
            and not isinstance(
                event,
                StepStarted
                | WorkflowResumed
                | WorkflowTerminated
                | WorkflowSuspended
                | WorkflowCompleted,
            )
            and not isinstance(event, RecordedAction | PatchRecorded)
        ):
            if isinstance(event, EventRaised) or (
                self._is_open_result(event) and not self._suspension.holds_result(event)
            ):
                self._suspension.keep(event)
                return True
            return False
        match event:
            case StepStarted(timestamp=timestamp):
                self.current_time = timestamp
                return True
            case WorkflowStarted():
                return self._start(event)
            case (
                ActivityScheduled()
                | ChildWorkflowScheduled()
                | TimerCreated()
                | EventSent()
                | TaskCancelled()
            ):
                self._confirm(event)
                return True
            case ActivityCompleted(seq=seq, output=output):
                return self._resolve_open(seq, TaskKind.ACTIVITY, output, None)
            case ActivityFailed(seq=seq, failure=failure):
                return self._resolve_open(seq, TaskKind.ACTIVITY, None, failure)
            case ChildWorkflowCompleted(seq=seq, output=output):
                return self._resolve_open(seq, TaskKind.CHILD_WORKFLOW, output, None)
            case ChildWorkflowFailed(seq=seq, failure=failure):
                return self._resolve_open(seq, TaskKind.CHILD_WORKFLOW, None, failure)
            case TimerFired(seq=seq):
                return self._resolve_open(seq, TaskKind.TIMER, None, None)
            case EventRaised():
                self._deliver_event(event)
                return True
            case PatchRecorded(name=name):
                self._patches.record(name)
                return True
            case WorkflowSuspended():
                if self._suspended or self._completion is not None:
                    return False
                self._suspended = True
                return True
            case WorkflowResumed():
                if not self._suspended:
                    return False
                self._suspended = False
                self._suspension.replaying = True
                try:
                    for held in self._suspension.take():
                        self._process(held)
                finally:
                    self._suspension.replaying = False
                return True
            case WorkflowTerminated(reason=reason, recursive=recursive):
                if self._completion is not None:
                    return False
                self._terminate(reason, recursive)
                return True
            case WorkflowCompleted(status=status, output=output, failure=failure):
                self._completion_recorded = True
                if self._completion is None:
                    # History says it ended; trust it (e.g. termination replayed from an old run).
                    self._completion = CompleteWorkflow(status, output, failure)
                    self._close_coroutine()
                return True
            case _:
                assert_never(event)

    def _is_open_result(self, event: HistoryEvent) -> bool:
        match event:
            case ActivityCompleted(seq=seq) | ActivityFailed(seq=seq):
                return self._tasks.is_open(seq, TaskKind.ACTIVITY)
            case ChildWorkflowCompleted(seq=seq) | ChildWorkflowFailed(seq=seq):
                return self._tasks.is_open(seq, TaskKind.CHILD_WORKFLOW)
            case TimerFired(seq=seq):
                return self._tasks.is_open(seq, TaskKind.TIMER)
            case _:
                return False

    def _start(self, event: WorkflowStarted) -> bool:
        if self._coroutine is not None or self._completion is not None:
            return False
        self.instance_id, self.app_id, self.name = event.instance_id, event.app_id, event.name
        self.input, self.parent, self.run_id = event.input, event.parent, event.run_id
        self._mailbox.inherit(event.seen_event_ids)
        # After continue-as-new, sequence numbers carry on from the previous run, so a late
        # result for the old run can never match a task of the new one.
        self._tasks.next_seq = event.first_seq
        function = self._resolve(event.name)
        if function is None:
            raise _Stall(f"workflow {event.name!r} is not registered on app {event.app_id!r}")
        self._context = WorkflowContext(self, self._logger)
        try:
            coroutine: object = function(self._context, event.input)
        except Exception as exc:  # a sync function that raised, or a bad signature
            self._finish_failed(exc)
            return True
        if not isinstance(coroutine, Coroutine):
            raise _Stall(f"workflow {event.name!r} must be an 'async def' function")
        self._coroutine = coroutine
        self._run()
        return True

    def _confirm(self, event: RecordedAction) -> None:
        reason = self._tasks.confirm(event)
        if reason:
            raise _Stall(reason)

    def _resolve_open(
        self, seq: int, kind: TaskKind, output: object, failure: FailureDetails | None
    ) -> bool:
        open_task = self._tasks.open.get(seq)
        if open_task is None or open_task.kind is not kind:
            return False  # duplicate, late (after timeout/retry) or stray: idempotent apply
        if not open_task.dispatched:
            # Its scheduling is not committed yet, so nobody was sent the task: whoever sent
            # this result forged or guessed it. Refused, and reported to the runtime.
            self._refused.append(
                (
                    self._pending_event,
                    f"result for {describe_action(open_task.action)} (seq {seq}) "
                    "that was never dispatched",
                )
            )
            return False
        del self._tasks.open[seq]
        if failure is None:
            open_task.task.resolve(output)
        else:
            error_class = (
                ChildWorkflowFailedError if kind is TaskKind.CHILD_WORKFLOW else ActivityFailedError
            )
            what = describe_action(open_task.action)
            error = error_class(f"{what} failed: {failure.error_type}: {failure.message}", failure)
            cause = _FLOWMESH_CAUSES.get(failure.error_type)
            if cause is not None:
                error.__cause__ = cause(failure.message)
            open_task.task.reject(error)
        self._run()
        return True

    def _deliver_event(self, event: EventRaised) -> None:
        waiter = self._mailbox.deliver(event)
        if waiter is not None:
            waiter.resolve(event.data)
            self._run()

    # -- stepping the coroutine ------------------------------------------------------------------

    def _run(self) -> None:
        """Resume the workflow coroutine while the task it awaits is resolved."""
        coroutine = self._coroutine
        if coroutine is None or self._completion is not None or self._suspended:
            return
        while self._awaiting is None or self._awaiting.is_complete:
            try:
                yielded = coroutine.send(None)
            except StopIteration as stop:
                self._finish(stop.value)
                return
            except ContinueAsNew as signal:
                self._continue_as_new(signal)
                return
            except _Stall:
                raise
            except Exception as exc:
                self._finish_failed(exc)
                return
            if not isinstance(yielded, Task):
                self._finish_failed(
                    TypeError(
                        f"workflow {self.name!r} awaited {describe_awaited(coroutine, yielded)}"
                        ", which is not a flowmesh task. Workflow code is replayed and must "
                        "only await tasks from its WorkflowContext (use ctx.create_timer instead "
                        "of asyncio.sleep, and activities for I/O)."
                    )
                )
                return
            self._awaiting = yielded

    def _finish(self, output: object) -> None:
        try:
            self.check_value(output, f"output of workflow {self.name!r}")
        except Exception as exc:
            self._finish_failed(exc)
            return
        self._complete(CompleteWorkflow(WorkflowStatus.COMPLETED, output))

    def _finish_failed(self, exc: BaseException) -> None:
        self._complete(
            CompleteWorkflow(
                WorkflowStatus.FAILED, None, FailureDetails.from_exception(exc, app_id=self.app_id)
            )
        )

    def fail(self, failure: FailureDetails) -> None:
        """End the run as FAILED with ``failure``, for a reason outside the workflow's code
        (the runtime's history limit). The next :meth:`step` records it and returns the
        completion command, as if the code had raised; a run that already ended is left as is.
        """
        if self._completion is None:
            self._complete(CompleteWorkflow(WorkflowStatus.FAILED, None, failure))

    def continue_as_new_restart(
        self, continued: CompleteWorkflow, *, now: datetime, run_id: str
    ) -> tuple[WorkflowExecution, StepOutcome]:
        """Start the run that ``continued`` (this run's ``CONTINUED_AS_NEW`` completion) asks
        for: a fresh execution of the same workflow, stepped with its ``WorkflowStarted``
        (``run_id`` from the caller: the engine has no randomness) and the carried events.

        Sequence numbers and recent event IDs carry over, so a late result or a redelivered
        event for the old run never applies to the new one. Returns the new execution and
        its first outcome, to be committed in place of this run's history.
        """
        restart: list[HistoryEvent] = [
            StepStarted(now),
            WorkflowStarted(
                self.name,
                self.instance_id,
                self.app_id,
                continued.output,
                self.parent,
                first_seq=self._tasks.next_seq,
                run_id=run_id,
                seen_event_ids=self.recent_event_ids,
            ),
            *continued.carried_events,
        ]
        execution = WorkflowExecution(
            self._resolve, logger=self._logger, check_value=self.check_value
        )
        return execution, execution.step(restart)

    def _continue_as_new(self, signal: ContinueAsNew) -> None:
        carried: list[EventRaised] = []
        self._save_events = signal.save_events
        if signal.save_events:
            carried = self._mailbox.kept()
        self._complete(
            CompleteWorkflow(
                WorkflowStatus.CONTINUED_AS_NEW, signal.new_input, None, tuple(carried)
            )
        )

    def _carry_over(self, event: HistoryEvent) -> bool:
        """Carry an event that arrives in the very step that continued-as-new with
        ``save_events`` into the new run, instead of dropping it."""
        completion = self._completion
        if (
            not isinstance(event, EventRaised)
            or completion is None
            or self._completion_recorded
            or completion.status is not WorkflowStatus.CONTINUED_AS_NEW
            or not self._save_events
        ):
            return False
        self._completion = replace(completion, carried_events=(*completion.carried_events, event))
        return True

    def _terminate(self, reason: str, recursive: bool) -> None:
        if recursive:
            self._terminate_children = self._tasks.child_terminations(reason)
        self._close_coroutine()
        self._complete(CompleteWorkflow(WorkflowStatus.TERMINATED, reason or "terminated"))

    def _complete(self, completion: CompleteWorkflow) -> None:
        self._completion = completion
        self._close_coroutine()

    def _close_coroutine(self) -> None:
        coroutine, self._coroutine = self._coroutine, None
        if coroutine is not None:
            try:
                coroutine.close()
            except BaseException:
                self._logger.warning("workflow code raised while being closed", exc_info=True)
        self._awaiting = None

    # -- called by WorkflowContext (see TaskScheduler) -------------------------------------------

    def schedule_activity(
        self, name: str, app_id: str, input_value: object, attempt: int, timeout: timedelta | None
    ) -> Task[Any]:
        """See :meth:`TaskScheduler.schedule_activity`."""
        return self._tasks.schedule_activity(name, app_id, input_value, attempt, timeout)

    def schedule_child(
        self, name: str, app_id: str, input_value: object, instance_id: str | None, attempt: int
    ) -> Task[Any]:
        """See :meth:`TaskScheduler.schedule_child`."""
        return self._tasks.schedule_child(name, app_id, input_value, instance_id, attempt)

    def schedule_timer(self, fire_at: datetime) -> Task[None]:
        """See :meth:`TaskScheduler.schedule_timer`."""
        return self._tasks.schedule_timer(fire_at)

    def wait_for_event(self, name: str, timeout: timedelta | None) -> Task[Any]:
        """See :meth:`TaskScheduler.wait_for_event`."""
        return self._tasks.wait_for_event(name, timeout)

    def send_event(self, instance_id: str, app_id: str, name: str, data: object) -> None:
        """See :meth:`TaskScheduler.send_event`."""
        self._tasks.send_event(instance_id, app_id, name, data)

    def schedule_with_retry(
        self, start_attempt: Callable[[int], Task[Any]], policy: RetryPolicy | None
    ) -> Task[Any]:
        """See :meth:`TaskScheduler.schedule_with_retry`."""
        return self._tasks.schedule_with_retry(start_attempt, policy)

    def is_patched(self, name: str) -> bool:
        """See :meth:`WorkflowContext.is_patched`; decided once per execution."""
        return self._patches.decide(name, replaying=self.is_replaying)

    # -- outcome ---------------------------------------------------------------------------------

    def _collect(self, accepted: list[HistoryEvent], dropped: list[HistoryEvent]) -> StepOutcome:
        commands: list[Command] = []
        new_patches = self._patches.take_new()
        append = list(accepted)
        if not self._stall_reason:
            append.extend(new_patches)
            for action in self._tasks.take_actions():
                append.append(scheduled_event(action))
                commands.append(action)
            if self._completion is not None and not self._completion_recorded:
                # TerminateChildren belong to this completion: a replayed (already recorded)
                # recursive terminate must not send them again.
                commands.extend(self._terminate_children)
                completion = self._completion
                append.append(
                    WorkflowCompleted(completion.status, completion.output, completion.failure)
                )
                commands.append(completion)
                self._completion_recorded = True
        self._terminate_children = []
        cancelled = self._tasks.take_cancelled()
        refused = tuple((e, why) for e, why in self._refused if e is not None)
        self._refused = []
        if all(isinstance(e, StepStarted) for e in append):
            append = []
        final = self._completion
        return StepOutcome(
            append=tuple(append),
            commands=tuple(commands),
            status=self.status,
            output=final.output if final else None,
            failure=final.failure if final else None,
            custom_status=self.custom_status,
            waiting_on=self.waiting_on(),
            cancelled_timers=cancelled,
            stall_reason=self._stall_reason,
            dropped=tuple(dropped),
            refused=refused,
        )

    def waiting_on(self, limit: int = WAITING_SHOWN) -> tuple[PendingTask, ...]:
        """What the workflow waits for, for ``describe()``: the ``limit`` oldest tasks, then
        one ``more`` entry counting the rest (a fan-out of thousands must not make every
        step's state that large)."""
        if self._completion is not None:
            return ()
        pending = self._tasks.pending(limit)
        pending.extend(PendingTask("event", name) for name in self._mailbox.waited_for())
        return tuple(pending)

    @property
    def recent_event_ids(self) -> tuple[str, ...]:
        """The latest recorded event IDs (at most :data:`SEEN_EVENT_IDS_CARRIED`), oldest
        first: what a run started by continue-as-new inherits to keep dropping duplicates."""
        return self._mailbox.recent_ids(SEEN_EVENT_IDS_CARRIED)

    @property
    def next_seq(self) -> int:
        """The sequence number the next task will get (a continued run starts here)."""
        return self._tasks.next_seq

    def open_activity(self, seq: int) -> ScheduleActivity | None:
        """The scheduled activity ``seq`` if it still waits for its result, else None."""
        open_task = self._tasks.open.get(seq)
        if open_task is not None and isinstance(open_task.action, ScheduleActivity):
            return open_task.action
        return None

    def child_instances(self) -> dict[str, str]:
        """Child instance ID -> app ID of every child this execution started."""
        return dict(self._tasks.children)


def replay_step(
    resolve: WorkflowResolver,
    history: Iterable[HistoryEvent],
    new_events: Iterable[HistoryEvent],
    *,
    logger: Logger | None = None,
) -> StepOutcome:
    """Replay ``history`` from scratch, apply ``new_events`` and return the outcome."""
    execution = WorkflowExecution(resolve, logger=logger)
    execution.replay(history)
    return execution.step(new_events)


__all__ = ["NonDeterminismError", "WorkflowExecution", "WorkflowFunction", "replay_step"]
