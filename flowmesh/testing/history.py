"""History builders and an in-memory driver for unit-testing workflow code.

Workflow code is replayed from history, so the most direct way to test it is to hand the pure
replay engine a history and look at what it decides. This module needs no broker, no store,
no event loop and no real clock:

* **Builders** (``started``, ``activity_scheduled``, ``activity_completed``, ``timer_fired``,
  ``event_raised``, ...) write history events tersely, in the style of durabletask's test
  helpers. Feed them to :func:`flowmesh.engine.replay_step`::

      history = [*started("order", {"id": 1}), activity_scheduled(0, "charge", input={"id": 1})]
      outcome = replay_step(resolver, history, [step(T0 + timedelta(seconds=1)),
                                                activity_completed(0, "ok")])
      assert outcome.commands == (ScheduleActivity(1, "ship", "app", "ok"),)

* **A driver**, :class:`WorkflowReplayer` (and the shortcut :func:`run_to_completion`), runs a
  workflow the way the runtime would, step by step, answering its commands with fakes:
  activities by a responder callback (or a name -> function mapping), durable timers by
  advancing virtual time to their ``fire_at``, child workflows by a callback or by running them
  in-process. It returns the final outcome and the complete history::

      result = run_to_completion(
          {"order": order}, "order", {"id": 1},
          activities={"charge": lambda order: "charged", "ship": lambda _: "shipped"},
      )
      assert result.status is WorkflowStatus.COMPLETED
      verify_replay({"order": order}, result.history)   # replays cleanly from scratch

A fake activity answers by returning its output, by raising (the exception becomes an
``ActivityFailed`` just as in a real worker; :class:`~flowmesh.NonRetryableError` is marked
non-retryable), by returning a :class:`Reply` (to answer later in virtual time, or with an
explicit failure), or by returning :data:`NO_REPLY` (never answer, e.g. to let a timeout win).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, TypeAlias

from flowmesh._errors import NonDeterminismError, NonRetryableError
from flowmesh.engine import (
    Logger,
    StepOutcome,
    WorkflowExecution,
    WorkflowFunction,
    WorkflowResolver,
    replay_step,
    task_name,
)
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    Command,
    EventRaised,
    EventSent,
    FailureDetails,
    HistoryEvent,
    ParentRef,
    PatchRecorded,
    ScheduleActivity,
    ScheduleChildWorkflow,
    StartTimer,
    StepStarted,
    TaskCancelled,
    TimerCreated,
    TimerFired,
    WorkflowCompleted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
)

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_INSTANCE_ID",
    "NO_REPLY",
    "T0",
    "ActivityResponder",
    "ChildResponder",
    "NoReply",
    "Reply",
    "RunResult",
    "WorkflowReplayer",
    "Workflows",
    "activity_completed",
    "activity_failed",
    "activity_scheduled",
    "child_completed",
    "child_failed",
    "child_scheduled",
    "event_raised",
    "event_sent",
    "failure",
    "patch_recorded",
    "replay_history",
    "resolver",
    "resumed",
    "run_to_completion",
    "split_steps",
    "started",
    "step",
    "suspended",
    "task_cancelled",
    "terminated",
    "timer_created",
    "timer_fired",
    "verify_replay",
    "workflow_completed",
]

T0: Final = datetime(2024, 1, 1, tzinfo=UTC)
"""The default virtual start time of test histories (a fixed, timezone-aware UTC datetime)."""

DEFAULT_INSTANCE_ID: Final = "test-1"
"""Instance ID the builders and the driver use unless told otherwise."""

DEFAULT_APP_ID: Final = "app"
"""App ID the builders and the driver use unless told otherwise."""

_TERMINAL_OR_STOPPED = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.TERMINATED,
        WorkflowStatus.CONTINUED_AS_NEW,
        WorkflowStatus.STALLED,
    }
)

# -- history builders ----------------------------------------------------------------------------


def failure(
    error_type: str,
    message: str = "",
    *,
    stack: str = "",
    non_retryable: bool = False,
    app_id: str = "",
) -> FailureDetails:
    """Failure details of a remote error of type ``error_type`` (qualified or bare name)."""
    return FailureDetails(error_type, message, stack, non_retryable, app_id)


def step(at: datetime = T0) -> StepStarted:
    """``StepStarted(at)``: opens a step; ``at`` becomes ``ctx.current_utc_datetime``."""
    return StepStarted(at)


def started(
    name: str,
    input: object = None,
    *,
    instance_id: str = DEFAULT_INSTANCE_ID,
    app_id: str = DEFAULT_APP_ID,
    at: datetime = T0,
    parent: ParentRef | None = None,
) -> list[HistoryEvent]:
    """The events of a fresh start: ``[StepStarted(at), WorkflowStarted(...)]``."""
    return [StepStarted(at), WorkflowStarted(name, instance_id, app_id, input, parent)]


def activity_scheduled(
    seq: int,
    name: str,
    app_id: str = DEFAULT_APP_ID,
    input: object = None,
    attempt: int = 1,
) -> ActivityScheduled:
    """Activity ``name`` was scheduled on ``app_id`` as task ``seq`` (attempt 1 by default)."""
    return ActivityScheduled(seq, name, app_id, input, attempt)


def activity_completed(seq: int, output: object = None) -> ActivityCompleted:
    """Activity ``seq`` returned ``output``."""
    return ActivityCompleted(seq, output)


def activity_failed(
    seq: int,
    error_type: str,
    message: str = "",
    stack: str = "",
    non_retryable: bool = False,
    *,
    app_id: str = "",
) -> ActivityFailed:
    """Activity ``seq`` raised an error of type ``error_type`` with ``message`` and ``stack``."""
    return ActivityFailed(seq, FailureDetails(error_type, message, stack, non_retryable, app_id))


def child_scheduled(
    seq: int,
    name: str,
    app_id: str = DEFAULT_APP_ID,
    instance_id: str | None = None,
    input: object = None,
    *,
    parent_instance_id: str = DEFAULT_INSTANCE_ID,
) -> ChildWorkflowScheduled:
    """Child workflow ``name`` was started on ``app_id`` as task ``seq``.

    The child's instance ID defaults to ``<parent_instance_id>:<seq>``, as the engine assigns.
    """
    child_id = instance_id if instance_id is not None else f"{parent_instance_id}:{seq}"
    return ChildWorkflowScheduled(seq, name, app_id, child_id, input)


def child_completed(seq: int, output: object = None) -> ChildWorkflowCompleted:
    """Child workflow ``seq`` completed with ``output``."""
    return ChildWorkflowCompleted(seq, output)


def child_failed(
    seq: int,
    error_type: str,
    message: str = "",
    stack: str = "",
    non_retryable: bool = False,
    *,
    app_id: str = "",
) -> ChildWorkflowFailed:
    """Child workflow ``seq`` failed with an error of type ``error_type``."""
    return ChildWorkflowFailed(
        seq, FailureDetails(error_type, message, stack, non_retryable, app_id)
    )


def timer_created(seq: int, fire_at: datetime) -> TimerCreated:
    """Durable timer ``seq`` was created to fire at ``fire_at`` (timezone-aware UTC)."""
    return TimerCreated(seq, fire_at)


def timer_fired(seq: int) -> TimerFired:
    """Durable timer ``seq`` fired."""
    return TimerFired(seq)


def event_raised(name: str, data: object = None) -> EventRaised:
    """External event ``name`` arrived carrying ``data``."""
    return EventRaised(name, data)


def event_sent(seq: int, instance_id: str, name: str, *, app_id: str = DEFAULT_APP_ID) -> EventSent:
    """The workflow sent event ``name`` (task ``seq``) to ``instance_id`` on ``app_id``."""
    return EventSent(seq, instance_id, app_id, name)


def task_cancelled(seq: int) -> TaskCancelled:
    """The workflow cancelled dispatched activity or child workflow ``seq``."""
    return TaskCancelled(seq)


def patch_recorded(name: str) -> PatchRecorded:
    """The execution took the new code path guarded by ``ctx.is_patched(name)``."""
    return PatchRecorded(name)


def suspended(reason: str = "") -> WorkflowSuspended:
    """An operator suspended the instance."""
    return WorkflowSuspended(reason)


def resumed(reason: str = "") -> WorkflowResumed:
    """An operator resumed the instance."""
    return WorkflowResumed(reason)


def terminated(reason: str = "", recursive: bool = False) -> WorkflowTerminated:
    """An operator terminated the instance (and its open children when ``recursive``)."""
    return WorkflowTerminated(reason, recursive)


def workflow_completed(
    output: object = None,
    *,
    status: WorkflowStatus = WorkflowStatus.COMPLETED,
    failure: FailureDetails | None = None,
) -> WorkflowCompleted:
    """The execution ended with ``status`` (COMPLETED by default) and ``output``/``failure``."""
    return WorkflowCompleted(status, output, failure)


def split_steps(history: Iterable[HistoryEvent]) -> list[list[HistoryEvent]]:
    """Split a history into its steps: each starts with ``StepStarted`` (events before the
    first ``StepStarted``, if any, form a step of their own)."""
    steps: list[list[HistoryEvent]] = []
    for event in history:
        if isinstance(event, StepStarted) or not steps:
            steps.append([])
        steps[-1].append(event)
    return steps


# -- resolving workflows -------------------------------------------------------------------------

Workflows: TypeAlias = (
    WorkflowResolver
    # Any, not WorkflowFunction: mypy infers ``{"a": wf_a, "b": wf_b}`` with differently typed
    # inputs as dict[str, function], which no Callable type accepts.
    | Mapping[str, Any]
    | Sequence[Any]
    | WorkflowFunction
)
"""Workflow code for the helpers here: a resolver (``name -> function | None``), a mapping of
names to functions (e.g. ``app.workflows``), a sequence of functions (registered under their
names) or a single ``async def`` workflow function."""


def _is_workflow_function(candidate: object) -> bool:
    return hasattr(candidate, "__flowmesh_name__") or inspect.iscoroutinefunction(candidate)


def resolver(workflows: Workflows) -> WorkflowResolver:
    """Turn any accepted form of :data:`Workflows` into a resolver for the engine."""
    if isinstance(workflows, Mapping):
        table: Mapping[str, WorkflowFunction] = workflows
        return table.get
    if isinstance(workflows, Sequence):
        by_name: dict[str, WorkflowFunction] = {task_name(fn): fn for fn in workflows}
        return by_name.get
    if _is_workflow_function(workflows):
        function: WorkflowFunction = workflows  # type: ignore[assignment]
        name = task_name(function)
        return lambda wanted: function if wanted == name else None
    resolve: WorkflowResolver = workflows  # type: ignore[assignment]
    return resolve


def replay_history(
    workflows: Workflows,
    history: Iterable[HistoryEvent],
    new_events: Iterable[HistoryEvent] = (),
    *,
    logger: Logger | None = None,
) -> StepOutcome:
    """Replay ``history`` from scratch with ``workflows`` and apply ``new_events``.

    The same as :func:`flowmesh.engine.replay_step`, but accepting any :data:`Workflows` form.
    """
    return replay_step(resolver(workflows), history, new_events, logger=logger)


def verify_replay(
    workflows: Workflows,
    history: Iterable[HistoryEvent],
    *,
    logger: Logger | None = None,
) -> StepOutcome:
    """Check that the current code replays ``history`` (e.g. one exported from production).

    Raises :class:`~flowmesh.NonDeterminismError` when the replay stalls (the message names
    both sides) or when the code would now schedule work that ``history`` does not record at
    that point. Returns the replay's outcome (its status, output and ``waiting_on``).
    """
    outcome = replay_history(workflows, history, (), logger=logger)
    if outcome.status is WorkflowStatus.STALLED:
        raise NonDeterminismError(outcome.stall_reason)
    if outcome.append or outcome.commands:
        raise NonDeterminismError(
            "replaying the complete history produced new work it does not record: "
            f"{list(outcome.append)!r}"
        )
    return outcome


# -- fake answers --------------------------------------------------------------------------------


class NoReply(Enum):
    """Type of :data:`NO_REPLY`."""

    NO_REPLY = "no reply"


NO_REPLY: Final = NoReply.NO_REPLY
"""Returned by a responder: the task never answers (lets a timeout or a competitor win)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An explicit answer of a fake activity or child workflow.

    ``output`` on success or ``failure`` on error, delivered ``after`` this much virtual time
    (zero: in the very next step). Build one with :meth:`ok` or :meth:`error`.
    """

    output: object = None
    failure: FailureDetails | None = None
    after: timedelta = timedelta(0)

    @classmethod
    def ok(cls, output: object = None, *, after: timedelta = timedelta(0)) -> Reply:
        """Succeed with ``output`` after ``after``."""
        return cls(output, None, after)

    @classmethod
    def error(
        cls,
        error_type: str,
        message: str = "",
        *,
        stack: str = "",
        non_retryable: bool = False,
        after: timedelta = timedelta(0),
    ) -> Reply:
        """Fail with an error of type ``error_type`` after ``after``."""
        return cls(None, FailureDetails(error_type, message, stack, non_retryable), after)


ActivityResponder: TypeAlias = Callable[[ScheduleActivity], object]
"""Answers an activity command: return the output, a :class:`Reply` or :data:`NO_REPLY`, or
raise to fail the attempt (``NonRetryableError`` fails it without retries)."""

ChildResponder: TypeAlias = Callable[[ScheduleChildWorkflow], object]
"""Answers a child workflow command, like :data:`ActivityResponder`."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What :meth:`WorkflowReplayer.run` returns.

    ``outcome`` is the last step's outcome; ``history`` every committed event; ``outcomes`` one
    outcome per step; ``children`` the in-process runs of child workflows by instance ID.
    """

    outcome: StepOutcome
    history: tuple[HistoryEvent, ...]
    outcomes: tuple[StepOutcome, ...]
    children: Mapping[str, RunResult] = field(default_factory=dict)

    @property
    def status(self) -> WorkflowStatus:
        """Status after the last step (RUNNING/SUSPENDED if the run ran out of work)."""
        return self.outcome.status

    @property
    def output(self) -> object:
        """The workflow's output (the new input for CONTINUED_AS_NEW)."""
        return self.outcome.output

    @property
    def failure(self) -> FailureDetails | None:
        """The workflow's failure, if it failed."""
        return self.outcome.failure

    @property
    def commands(self) -> tuple[Command, ...]:
        """Every command of every step, in order."""
        return tuple(command for outcome in self.outcomes for command in outcome.commands)


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
            return _call(lambda: function(command.input), command.app_id)
        responder = responders
        return _call(lambda: responder(command), command.app_id)

    def _child_reply(self, command: ScheduleChildWorkflow) -> object:
        if self._children_responder is not None:
            responder = self._children_responder
            return _call(lambda: responder(command), command.app_id)
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


def _call(answer: Callable[[], object], app_id: str) -> object:
    """Run a fake; an exception it raises becomes a failed :class:`Reply`, as in a worker."""
    try:
        return answer()
    except Exception as exc:
        return Reply(
            None,
            FailureDetails.from_exception(
                exc, app_id=app_id, non_retryable=isinstance(exc, NonRetryableError)
            ),
        )


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
