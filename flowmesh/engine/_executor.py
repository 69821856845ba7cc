"""The replay executor: history in, commands out.

A :class:`WorkflowExecution` is fed history events in order. Old events (``replaying=True``)
rebuild the workflow's state by re-running its code; new events advance it. Code asks for
work through :class:`WorkflowContext`, which allocates a sequence number per task and records
a pending action; a ``...Scheduled`` event in history confirms the action at that ``seq``.
An action history does not confirm is new and becomes a command. An action that contradicts
history is non-determinism: the execution stalls with both sides in the reason.

The module is pure: no I/O, no clock, no randomness, no asyncio. The coroutine of the
workflow function is stepped by hand with ``send`` (``_driver``); what the execution knows
and what the runtime reads between steps is in ``_state``, how a run ends in ``_ending``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from datetime import datetime
from typing import assert_never

from flowmesh._errors import NonDeterminismError
from flowmesh.engine._actions import RecordedAction, describe_action, scheduled_event
from flowmesh.engine._context import ContinueAsNew, Logger, WorkflowContext
from flowmesh.engine._driver import Raised, Returned, Stall
from flowmesh.engine._outcome import StepOutcome
from flowmesh.engine._results import ResultEvent, TaskResult, task_error, task_result
from flowmesh.engine._state import ExecutionState, WorkflowFunction, WorkflowResolver
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
    PatchRecorded,
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
)

_APPLIED_WHILE_SUSPENDED = (
    StepStarted
    | WorkflowResumed
    | WorkflowTerminated
    | WorkflowSuspended
    | WorkflowCompleted
    # Scheduling events confirm what the code asked for before it was suspended.
    | RecordedAction
    | PatchRecorded
)
"""The events a suspended execution applies at once; others wait for the resume."""


class WorkflowExecution(ExecutionState):
    """The replayed state of one workflow execution; feed it events, collect outcomes.

    Keep one alive between steps to apply only new events (the runtime's per-replica cache),
    or build a fresh one and replay the whole history: both give the same outcome.
    """

    # -- public driving API ----------------------------------------------------------------------

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
            if self._ending.completion is not None and not isinstance(event, StepStarted):
                (accepted if self._ending.carry_over(event) else dropped).append(event)
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
        except Stall as stall:
            self._stall_reason = str(stall)
            self._code.close()
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
        if self._suspended and not isinstance(event, _APPLIED_WHILE_SUSPENDED):
            return self._hold(event)
        return self._apply(event)

    def _hold(self, event: HistoryEvent) -> bool:
        """Keep an event or result that arrived while suspended for the resume; False for a
        result nothing waits for or that is already kept."""
        if isinstance(event, EventRaised) or (
            isinstance(event, ResultEvent)
            and self._is_open(task_result(event))
            and not self._suspension.holds_result(event)
        ):
            self._suspension.keep(event)
            return True
        return False

    def _apply(self, event: HistoryEvent) -> bool:
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
                reason = self._tasks.confirm(event)
                if reason:
                    raise Stall(reason)
                return True
            case (
                ActivityCompleted()
                | ActivityFailed()
                | ChildWorkflowCompleted()
                | ChildWorkflowFailed()
                | TimerFired()
            ):
                return self._resolve_open(task_result(event))
            case EventRaised():
                self._deliver_event(event)
                return True
            case PatchRecorded(name=name):
                self._patches.record(name)
                return True
            case WorkflowSuspended() | WorkflowResumed() | WorkflowTerminated():
                return self._apply_control(event)
            case WorkflowCompleted():
                if self._ending.recorded_in_history(event):
                    self._code.close()
                return True
            case _:
                assert_never(event)

    def _apply_control(
        self, event: WorkflowSuspended | WorkflowResumed | WorkflowTerminated
    ) -> bool:
        """Suspend, resume or terminate; False if it changes nothing (a repeat, or too late)."""
        match event:
            case WorkflowSuspended():
                if self._suspended or self._ending.completion is not None:
                    return False
                self._suspended = True
                return True
            case WorkflowResumed():
                if not self._suspended:
                    return False
                self._resume()
                return True
            case WorkflowTerminated(reason=reason, recursive=recursive):
                if self._ending.completion is not None:
                    return False
                self._terminate(reason, recursive)
                return True
            case _:
                assert_never(event)

    def _resume(self) -> None:
        self._suspended = False
        self._suspension.replaying = True
        try:
            for held in self._suspension.take():
                self._process(held)
        finally:
            self._suspension.replaying = False

    def _is_open(self, result: TaskResult) -> bool:
        return self._tasks.is_open(result.seq, result.kind)

    def _start(self, event: WorkflowStarted) -> bool:
        if self._code.running or self._ending.completion is not None:
            return False
        self.instance_id, self.app_id, self.name = event.instance_id, event.app_id, event.name
        self.input, self.parent, self.run_id = event.input, event.parent, event.run_id
        self._mailbox.inherit(event.seen_event_ids)
        # After continue-as-new, sequence numbers carry on from the previous run, so a late
        # result for the old run can never match a task of the new one.
        self._tasks.next_seq = event.first_seq
        function = self._resolve(event.name)
        if function is None:
            raise Stall(f"workflow {event.name!r} is not registered on app {event.app_id!r}")
        self._context = WorkflowContext(self, self._logger)
        try:
            coroutine: object = function(self._context, event.input)
        except Exception as exc:  # a sync function that raised, or a bad signature
            self._finish_failed(exc)
            return True
        if not isinstance(coroutine, Coroutine):
            raise Stall(f"workflow {event.name!r} must be an 'async def' function")
        self._code.start(event.name, coroutine)
        self._run()
        return True

    def _resolve_open(self, result: TaskResult) -> bool:
        seq = result.seq
        open_task = self._tasks.open.get(seq)
        if open_task is None or open_task.kind is not result.kind:
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
        if result.failure is None:
            open_task.task.resolve(result.output)
        else:
            what = describe_action(open_task.action)
            open_task.task.reject(task_error(result.kind, what, result.failure))
        self._run()
        return True

    def _deliver_event(self, event: EventRaised) -> None:
        waiter = self._mailbox.deliver(event)
        if waiter is not None:
            waiter.resolve(event.data)
            self._run()

    # -- running the code and ending the run -----------------------------------------------------

    def _run(self) -> None:
        """Resume the workflow code while the task it awaits is resolved; end the run if the
        code ended."""
        if self._ending.completion is not None or self._suspended:
            return
        ended = self._code.resume()
        match ended:
            case None:
                return
            case Returned(value=output):
                self._finish(output)
            case Raised(error=error):
                self._finish_failed(error)
            case ContinueAsNew():
                carried = self._mailbox.kept() if ended.save_events else []
                self._ending.continue_as_new(
                    ended.new_input, carried, save_events=ended.save_events
                )
                self._code.close()
            case _:
                assert_never(ended)

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
        if self._ending.completion is None:
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

    def _terminate(self, reason: str, recursive: bool) -> None:
        terminations = self._tasks.child_terminations(reason) if recursive else []
        self._code.close()
        self._complete(
            CompleteWorkflow(WorkflowStatus.TERMINATED, reason or "terminated"), terminations
        )

    def _complete(
        self, completion: CompleteWorkflow, terminations: Iterable[TerminateChildren] = ()
    ) -> None:
        self._ending.end(completion, terminations)
        self._code.close()

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
            ended, sent = self._ending.record()
            append.extend(ended)
            commands.extend(sent)
        cancelled = self._tasks.take_cancelled()
        refused = tuple((e, why) for e, why in self._refused if e is not None)
        self._refused = []
        if all(isinstance(e, StepStarted) for e in append):
            append = []
        final = self._ending.completion
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


__all__ = [
    "NonDeterminismError",
    "WorkflowExecution",
    "WorkflowFunction",
    "WorkflowResolver",
    "replay_step",
]
