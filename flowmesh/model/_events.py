"""History events: the durable record a workflow is replayed from.

A history is an append-only sequence of these frozen dataclasses. ``seq`` numbers are assigned
by the engine in the order the workflow code creates tasks, which is what makes replay
deterministic: the same code over the same history asks for the same things at the same
``seq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flowmesh._failures import FailureDetails
from flowmesh.model._ranges import check_attempt, check_seq, check_time
from flowmesh.model._status import WorkflowStatus


@dataclass(frozen=True, slots=True)
class ParentRef:
    """Where a child workflow reports its completion: the parent's instance, app and task seq."""

    instance_id: str
    app_id: str
    seq: int
    run_id: str = ""
    """The parent's run: a result for an older run of the parent is never applied to a new one."""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class WorkflowStarted:
    """First event of every execution: which workflow, with what input, on which app."""

    name: str
    instance_id: str
    app_id: str
    input: object = None
    parent: ParentRef | None = None
    request_id: str = ""
    """The client start request that created the instance ('' for children)."""
    first_seq: int = 0
    """First task sequence number of this run (continued runs carry on numbering)."""
    run_id: str = ""
    """Identity of this run of the instance ID: every task, result, timer and control message
    of the run carries it, so nothing of an earlier run (before a purge and reuse of the ID,
    or before continue-as-new) is ever applied to this one."""
    seen_event_ids: tuple[str, ...] = ()
    """Event IDs recorded by the previous runs (continue-as-new), so a redelivered event
    is not recorded again by the next run (the most recent ones, bounded)."""

    def __post_init__(self) -> None:
        check_seq(self, "first_seq", self.first_seq)


@dataclass(frozen=True, slots=True)
class StepStarted:
    """Marks the start of one orchestration step; its time is ``ctx.current_utc_datetime``."""

    timestamp: datetime

    def __post_init__(self) -> None:
        check_time(self, "timestamp", self.timestamp)


@dataclass(frozen=True, slots=True)
class ActivityScheduled:
    """The workflow asked for activity ``name`` on ``app_id`` (attempt numbers start at 1)."""

    seq: int
    name: str
    app_id: str
    input: object = None
    attempt: int = 1

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_attempt(self, "attempt", self.attempt)


@dataclass(frozen=True, slots=True)
class ActivityCompleted:
    """Activity ``seq`` returned ``output``."""

    seq: int
    output: object = None

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class ActivityFailed:
    """Activity ``seq`` raised; ``failure`` carries the remote type, message and stack."""

    seq: int
    failure: FailureDetails

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class ChildWorkflowScheduled:
    """The workflow started child ``name`` as ``instance_id`` on ``app_id``."""

    seq: int
    name: str
    app_id: str
    instance_id: str
    input: object = None

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class ChildWorkflowCompleted:
    """Child workflow ``seq`` completed with ``output``."""

    seq: int
    output: object = None

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class ChildWorkflowFailed:
    """Child workflow ``seq`` failed or was terminated."""

    seq: int
    failure: FailureDetails

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class TimerCreated:
    """The workflow created durable timer ``seq`` that fires at ``fire_at`` (UTC)."""

    seq: int
    fire_at: datetime

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_time(self, "fire_at", self.fire_at)


@dataclass(frozen=True, slots=True)
class TimerFired:
    """Durable timer ``seq`` fired."""

    seq: int

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class EventRaised:
    """An external event arrived for the instance."""

    name: str
    data: object = None
    event_id: str = ""
    """Unique per raise, so a redelivered event is recorded once ('' disables the check)."""


@dataclass(frozen=True, slots=True)
class EventSent:
    """The workflow sent event ``name`` to instance ``instance_id`` on app ``app_id``
    (``ctx.send_event``); the data travels in the message only."""

    seq: int
    instance_id: str
    app_id: str
    name: str

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class TaskCancelled:
    """The workflow cancelled dispatched activity or child workflow ``seq`` (``Task.cancel()``);
    a later result for it is dropped."""

    seq: int

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class PatchRecorded:
    """First execution of code guarded by ``ctx.is_patched(name)`` took the new path."""

    name: str


@dataclass(frozen=True, slots=True)
class WorkflowSuspended:
    """An operator suspended the instance; new events are buffered until resumed."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class WorkflowResumed:
    """An operator resumed a suspended instance."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class WorkflowTerminated:
    """An operator terminated the instance (and its children when ``recursive``)."""

    reason: str = ""
    recursive: bool = False


@dataclass(frozen=True, slots=True)
class WorkflowCompleted:
    """Last event of an execution: its terminal status and output or failure."""

    status: WorkflowStatus
    output: object = None
    failure: FailureDetails | None = None


HistoryEvent = (
    WorkflowStarted
    | StepStarted
    | ActivityScheduled
    | ActivityCompleted
    | ActivityFailed
    | ChildWorkflowScheduled
    | ChildWorkflowCompleted
    | ChildWorkflowFailed
    | TimerCreated
    | TimerFired
    | EventRaised
    | EventSent
    | TaskCancelled
    | PatchRecorded
    | WorkflowSuspended
    | WorkflowResumed
    | WorkflowTerminated
    | WorkflowCompleted
)
"""Any event that can appear in a workflow history."""

HISTORY_EVENT_TYPES: tuple[type[HistoryEvent], ...] = (
    WorkflowStarted,
    StepStarted,
    ActivityScheduled,
    ActivityCompleted,
    ActivityFailed,
    ChildWorkflowScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    TimerCreated,
    TimerFired,
    EventRaised,
    EventSent,
    TaskCancelled,
    PatchRecorded,
    WorkflowSuspended,
    WorkflowResumed,
    WorkflowTerminated,
    WorkflowCompleted,
)

# Events that resolve a task the workflow scheduled; used to apply results idempotently.
TaskResultEvent = (
    ActivityCompleted | ActivityFailed | ChildWorkflowCompleted | ChildWorkflowFailed | TimerFired
)
