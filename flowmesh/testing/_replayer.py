"""The in-memory driver: :class:`WorkflowReplayer` runs one workflow instance step by step
the way the runtime does, answering its commands with fakes and virtual time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flowmesh.engine import (
    Logger,
    StepOutcome,
    WorkflowExecution,
    WorkflowFunction,
    replay_step,
    task_name,
)
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    EventRaised,
    FailureDetails,
    HistoryEvent,
    ParentRef,
    ScheduleActivity,
    ScheduleChildWorkflow,
    StartTimer,
    StepStarted,
    TimerFired,
    WorkflowStarted,
    WorkflowStatus,
)
from flowmesh.testing._builders import DEFAULT_APP_ID, DEFAULT_INSTANCE_ID, T0
from flowmesh.testing._fakes import (
    NO_REPLY,
    ActivityResponder,
    ChildResponder,
    Reply,
    RunResult,
    call_fake,
)
from flowmesh.testing._workflows import Workflows, resolver

_TERMINAL_OR_STOPPED = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.TERMINATED,
        WorkflowStatus.CONTINUED_AS_NEW,
        WorkflowStatus.STALLED,
    }
)


@dataclass(slots=True)
class _Pending:
    due: datetime
    order: int
    event: HistoryEvent


class WorkflowReplayer:
    """Drives one workflow instance step by step, the way the runtime does, without I/O.

    Every step prepends ``StepStarted(now)`` to the new events, replays (from scratch by
    default, like a replica without a cache; ``full_replay=False`` keeps one
    :class:`~flowmesh.engine.WorkflowExecution` alive, like the runtime's cache), commits
    ``outcome.append`` to :attr:`history` and answers the new commands:

    * ``ScheduleActivity``: by ``activities``, a responder callback or a mapping of activity
      name to a function of the input (see :data:`ActivityResponder`);
    * ``StartTimer``: ``TimerFired`` at ``fire_at`` (virtual time jumps there; cancelled
      timers never fire);
    * ``ScheduleChildWorkflow``: by ``children``, or, when it is None, by running the child
      in-process with the same workflows and activities (its run is kept in
      :attr:`children`).

    Answers are delivered in due-time order; ``max_batch`` caps how many go into one step and
    ``order`` may permute the events that are due together (e.g. shuffle them). Use
    :meth:`start` and :meth:`step` to drive by hand, :meth:`run` / :meth:`drive` to go on until
    the workflow ends or nothing is left to deliver.
    """

    def __init__(
        self,
        workflows: Workflows,
        *,
        activities: ActivityResponder | Mapping[str, Callable[[Any], object]] | None = None,
        children: ChildResponder | None = None,
        instance_id: str = DEFAULT_INSTANCE_ID,
        app_id: str = DEFAULT_APP_ID,
        start_time: datetime = T0,
        full_replay: bool = True,
        max_batch: int | None = None,
        order: Callable[[list[HistoryEvent]], Sequence[HistoryEvent]] | None = None,
        logger: Logger | None = None,
        max_steps: int = 100_000,
    ) -> None:
        if start_time.tzinfo is None:
            raise ValueError("start_time must be timezone-aware (UTC)")
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._workflows = workflows
        self._base_resolve = resolver(workflows)
        self._extra: dict[str, WorkflowFunction] = {}
        self._activities = activities
        self._children_responder = children
        self.instance_id = instance_id
        self.app_id = app_id
        self.now = start_time
        self.full_replay = full_replay
        self.max_batch = max_batch
        self.order = order
        self.logger = logger
        self.max_steps = max_steps
        self.history: list[HistoryEvent] = []
        """Every event committed so far."""
        self.outcomes: list[StepOutcome] = []
        """The outcome of every step so far."""
        self.children: dict[str, RunResult] = {}
        """In-process runs of child workflows, by child instance ID."""
        self._pending: list[_Pending] = []
        self._counter = 0
        self._execution: WorkflowExecution | None = None

    # -- resolving -------------------------------------------------------------------------------

    def _resolve(self, name: str) -> WorkflowFunction | None:
        return self._extra.get(name) or self._base_resolve(name)

    # -- driving by hand -------------------------------------------------------------------------

    @property
    def last(self) -> StepOutcome:
        """The most recent step's outcome."""
        if not self.outcomes:
            raise RuntimeError("no step has run yet; call start() first")
        return self.outcomes[-1]

    def start(
        self,
        workflow: str | WorkflowFunction,
        input: object = None,
        *,
        parent: ParentRef | None = None,
        events: Iterable[HistoryEvent] = (),
    ) -> StepOutcome:
        """Run the first step: ``WorkflowStarted`` for ``workflow`` (name or function) with
        ``input``, followed by ``events`` (e.g. events carried over by continue-as-new)."""
        if self.history or self.outcomes:
            raise RuntimeError("this replayer has already started its workflow")
        if isinstance(workflow, str):
            name = workflow
        else:
            name = task_name(workflow)
            self._extra[name] = workflow
        started_event = WorkflowStarted(name, self.instance_id, self.app_id, input, parent)
        return self.step(started_event, *events)

    def step(self, *events: HistoryEvent, at: datetime | None = None) -> StepOutcome:
        """Run one step with ``events`` at virtual time ``at`` (default: now).

        Commits ``outcome.append`` to :attr:`history` and queues answers to the new commands.
        """
        if at is not None:
            if at < self.now:
                raise ValueError(f"virtual time cannot go back from {self.now} to {at}")
            self.now = at
        new_events: list[HistoryEvent] = [StepStarted(self.now), *events]
        if self.full_replay:
            outcome = replay_step(self._resolve, self.history, new_events, logger=self.logger)
        else:
            if self._execution is None:
                self._execution = WorkflowExecution(self._resolve, logger=self.logger)
                self._execution.replay(self.history)
            outcome = self._execution.step(new_events)
        self.history.extend(outcome.append)
        self.outcomes.append(outcome)
        self._answer(outcome)
        return outcome

    def inject(self, event: HistoryEvent, *, at: datetime | timedelta = timedelta(0)) -> None:
        """Deliver ``event`` (e.g. ``event_raised(...)``, ``suspended()``) at virtual time
        ``at`` (a datetime, or a delay from now) during :meth:`drive`."""
        due = self.now + at if isinstance(at, timedelta) else at
        self._push(max(due, self.now), event)

    def raise_event(
        self, name: str, data: object = None, *, at: datetime | timedelta = timedelta(0)
    ) -> None:
        """Shortcut for ``inject(event_raised(name, data), at=at)``."""
        self.inject(EventRaised(name, data), at=at)

    @property
    def pending(self) -> list[HistoryEvent]:
        """Events queued for delivery, in due order."""
        return [p.event for p in sorted(self._pending, key=lambda p: (p.due, p.order))]

    # -- driving to the end ----------------------------------------------------------------------

    def run(
        self,
        workflow: str | WorkflowFunction,
        input: object = None,
        *,
        parent: ParentRef | None = None,
        events: Iterable[HistoryEvent] = (),
    ) -> RunResult:
        """:meth:`start` the workflow, then :meth:`drive` it; returns the :class:`RunResult`."""
        self.start(workflow, input, parent=parent, events=events)
        return self.drive()

    def drive(self) -> RunResult:
        """Deliver queued answers step by step until the workflow completes, fails, is
        terminated, continues as new or stalls, or nothing is left to deliver (then its
        status is still RUNNING or SUSPENDED and ``outcome.waiting_on`` says why)."""
        steps = 0
        while self.last.status not in _TERMINAL_OR_STOPPED and self._pending:
            steps += 1
            if steps > self.max_steps:
                raise RuntimeError(f"workflow did not finish within {self.max_steps} steps")
            due, batch = self._next_batch()
            self.step(*batch, at=due)
        return self.result()

    def result(self) -> RunResult:
        """The :class:`RunResult` for the steps run so far."""
        return RunResult(self.last, tuple(self.history), tuple(self.outcomes), dict(self.children))

    # -- internals -------------------------------------------------------------------------------

    def _push(self, due: datetime, event: HistoryEvent) -> None:
        self._counter += 1
        self._pending.append(_Pending(due, self._counter, event))

    def _next_batch(self) -> tuple[datetime, list[HistoryEvent]]:
        due = min(p.due for p in self._pending)
        ready = sorted((p for p in self._pending if p.due <= due), key=lambda p: p.order)
        events = [p.event for p in ready]
        if self.order is not None:
            events = list(self.order(events))
        if self.max_batch is not None:
            events = events[: self.max_batch]
        chosen = {id(event) for event in events}
        self._pending = [p for p in self._pending if id(p.event) not in chosen]
        return due, events

    def _answer(self, outcome: StepOutcome) -> None:
        cancelled = set(outcome.cancelled_timers)
        if cancelled:
            self._pending = [
                p
                for p in self._pending
                if not (isinstance(p.event, TimerFired) and p.event.seq in cancelled)
            ]
        for command in outcome.commands:
            match command:
                case ScheduleActivity():
                    self._queue_reply(command.seq, self._activity_reply(command), child=False)
                case ScheduleChildWorkflow():
                    self._queue_reply(command.seq, self._child_reply(command), child=True)
                case StartTimer(seq=seq, fire_at=fire_at):
                    self._push(max(fire_at, self.now), TimerFired(seq))
                case _:
                    pass  # CompleteWorkflow and TerminateChildren are visible in the outcome

    def _activity_reply(self, command: ScheduleActivity) -> object:
        responders = self._activities
        if responders is None:
            raise LookupError(
                f"the workflow scheduled activity {command.name!r} on app {command.app_id!r} "
                "but the WorkflowReplayer has no activity responder (pass activities=...)"
            )
        if isinstance(responders, Mapping):
            function = responders.get(command.name)
            if function is None:
                raise LookupError(
                    f"the workflow scheduled activity {command.name!r} on app "
                    f"{command.app_id!r} but activities= has no entry for it"
                )
            return call_fake(lambda: function(command.input), command.app_id)
        responder = responders
        return call_fake(lambda: responder(command), command.app_id)

    def _child_reply(self, command: ScheduleChildWorkflow) -> object:
        if self._children_responder is not None:
            responder = self._children_responder
            return call_fake(lambda: responder(command), command.app_id)
        if self._resolve(command.name) is None:
            raise LookupError(
                f"the workflow started child workflow {command.name!r} on app "
                f"{command.app_id!r}, which the replayer's workflows do not include "
                "(pass children=... or include it in workflows)"
            )
        child = WorkflowReplayer(
            self._resolve,
            activities=self._activities,
            children=None,
            instance_id=command.instance_id,
            app_id=command.app_id,
            start_time=self.now,
            full_replay=self.full_replay,
            max_batch=self.max_batch,
            order=self.order,
            logger=self.logger,
            max_steps=self.max_steps,
        )
        run = child.run(
            command.name,
            command.input,
            parent=ParentRef(self.instance_id, self.app_id, command.seq),
        )
        self.children[command.instance_id] = run
        after = child.now - self.now
        if run.status is WorkflowStatus.COMPLETED:
            return Reply(run.output, None, after)
        if run.status in (WorkflowStatus.FAILED, WorkflowStatus.TERMINATED):
            details = run.failure or FailureDetails(
                "Terminated", f"child workflow terminated: {run.output}", app_id=command.app_id
            )
            return Reply(None, details, after)
        return NO_REPLY

    def _queue_reply(self, seq: int, reply: object, *, child: bool) -> None:
        if reply is NO_REPLY:
            return
        if not isinstance(reply, Reply):
            reply = Reply(reply)
        event: HistoryEvent
        if reply.failure is None:
            event = (
                ChildWorkflowCompleted(seq, reply.output)
                if child
                else ActivityCompleted(seq, reply.output)
            )
        else:
            event = (
                ChildWorkflowFailed(seq, reply.failure)
                if child
                else ActivityFailed(seq, reply.failure)
            )
        self._push(self.now + reply.after, event)


def run_to_completion(
    workflows: Workflows,
    workflow: str | WorkflowFunction,
    input: object = None,
    *,
    activities: ActivityResponder | Mapping[str, Callable[[Any], object]] | None = None,
    children: ChildResponder | None = None,
    events: Iterable[tuple[datetime | timedelta, HistoryEvent]] = (),
    instance_id: str = DEFAULT_INSTANCE_ID,
    app_id: str = DEFAULT_APP_ID,
    start_time: datetime = T0,
    full_replay: bool = True,
    max_batch: int | None = None,
    order: Callable[[list[HistoryEvent]], Sequence[HistoryEvent]] | None = None,
    logger: Logger | None = None,
) -> RunResult:
    """Run ``workflow`` with ``input`` to its end with a :class:`WorkflowReplayer`.

    ``events`` are ``(when, event)`` pairs delivered at ``when`` (a datetime, or a delay from
    ``start_time``), e.g. ``[(timedelta(minutes=5), event_raised("approval", True))]``.
    """
    replayer = WorkflowReplayer(
        workflows,
        activities=activities,
        children=children,
        instance_id=instance_id,
        app_id=app_id,
        start_time=start_time,
        full_replay=full_replay,
        max_batch=max_batch,
        order=order,
        logger=logger,
    )
    for when, event in events:
        replayer.inject(event, at=when)
    return replayer.run(workflow, input)
