"""Wire messages exchanged over the broker (see docs/protocol.md).

Each message is a frozen dataclass; the codec wraps it in a versioned envelope that names its
kind. Work queues (``fm.<app>.work``) carry :class:`StartWorkflow`, :class:`ActivityTask` and
:class:`ActivityCancel`;
reply queues (``fm.<app>.reply``) carry everything that advances or inspects a workflow hosted
by that app.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from flowmesh._failures import FailureDetails
from flowmesh.model._events import ParentRef
from flowmesh.model._ranges import (
    check_attempt,
    check_lease_seconds,
    check_page_bytes,
    check_seq,
    check_timer_seq,
)
from flowmesh.model._state import WorkflowState


@dataclass(frozen=True, slots=True)
class StartWorkflow:
    """Create and run workflow ``name`` as ``instance_id`` on ``app_id`` (the hosting app)."""

    instance_id: str
    name: str
    app_id: str
    input: object = None
    parent: ParentRef | None = None
    request_id: str = ""
    """Identifies the client's start request, so a redelivered start is recognised."""


@dataclass(frozen=True, slots=True)
class ActivityTask:
    """Run activity ``name`` on ``app_id``; reply to ``host_app_id``'s reply queue.

    ``(instance_id, seq, attempt)`` identifies the task; it is also the activity's idempotency
    key, stable across redeliveries.
    """

    instance_id: str
    host_app_id: str
    app_id: str
    seq: int
    attempt: int
    name: str
    input: object = None
    run_id: str = ""
    """The run of the instance that scheduled the task; results carry it back."""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_attempt(self, "attempt", self.attempt)


@dataclass(frozen=True, slots=True)
class ActivityCancel:
    """The workflow cancelled activity task ``(instance_id, seq, attempt)`` of ``run_id``.

    Sent to ``app_id``'s work queue; best effort: the replica that receives it marks the
    task cancelled if it is running there (``ActivityContext.is_cancelled``, an async
    activity's coroutine is cancelled), and otherwise ignores it. The host records the
    cancellation either way and drops the task's late result.
    """

    instance_id: str
    host_app_id: str
    app_id: str
    seq: int
    attempt: int
    run_id: str = ""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_attempt(self, "attempt", self.attempt)


@dataclass(frozen=True, slots=True)
class ActivityResult:
    """Outcome of :class:`ActivityTask` ``(instance_id, seq, attempt)``: output or failure."""

    instance_id: str
    seq: int
    attempt: int
    output: object = None
    failure: FailureDetails | None = None
    run_id: str = ""
    """Copied from the task: the result belongs to that run only."""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_attempt(self, "attempt", self.attempt)


@dataclass(frozen=True, slots=True)
class ActivityLease:
    """A long activity's worker took its task off the broker's clock and holds it on a lease.

    Sent (and re-sent every third of the lease) to the host's reply queue once the activity
    has run for the worker's ack deadline: the worker then acks the task delivery, so
    RabbitMQ's ``consumer_timeout`` cannot cancel it. If renewals stop (the worker died), the
    host re-dispatches the task when the lease expires.
    """

    instance_id: str
    seq: int
    attempt: int
    lease_seconds: float
    worker: str = ""
    run_id: str = ""
    """Copied from the task."""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_attempt(self, "attempt", self.attempt)
        check_lease_seconds(self, "lease_seconds", self.lease_seconds)


@dataclass(frozen=True, slots=True)
class TaskNote:
    """A target app explains why a task waits (e.g. the activity is not registered there)."""

    instance_id: str
    seq: int
    attempt: int
    note: str
    run_id: str = ""
    """Copied from the task."""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_attempt(self, "attempt", self.attempt)


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A child workflow finished; sent to its parent's app reply queue."""

    instance_id: str
    seq: int
    child_instance_id: str
    output: object = None
    failure: FailureDetails | None = None
    run_id: str = ""
    """The parent's run this result is for (from the child's ``ParentRef``)."""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class TimerDue:
    """Durable timer ``seq`` of ``instance_id`` is due."""

    instance_id: str
    seq: int
    run_id: str = ""
    """The run that created the timer."""

    def __post_init__(self) -> None:
        check_timer_seq(self, "seq", self.seq)


@dataclass(frozen=True, slots=True)
class RaiseEvent:
    """Deliver external event ``name`` with ``data`` to ``instance_id``."""

    instance_id: str
    name: str
    data: object = None
    event_id: str = ""
    """Unique per raise; the engine records an event ID once (redeliveries are dropped)."""


class ControlAction(StrEnum):
    """Operator actions on an instance."""

    SUSPEND = "suspend"
    RESUME = "resume"
    TERMINATE = "terminate"
    PURGE = "purge"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class Control:
    """Suspend, resume, terminate, purge or restart ``instance_id`` (children too when
    ``recursive``: terminate and purge)."""

    instance_id: str
    action: ControlAction
    reason: str = ""
    recursive: bool = False
    run_id: str = ""
    """Only this run ('' = whichever run the instance ID has)."""
    new_instance_id: str = ""
    """Restart only: the ID of the new instance ('' = the same ID, once it has finished)."""


@dataclass(frozen=True, slots=True)
class Describe:
    """Ask for :class:`WorkflowState`; answered on the message's reply-to address.

    With ``wait`` the answer is delayed until the instance reaches a terminal status (the
    replica remembers the waiter in the store; the client re-asks if an answer is lost).
    """

    instance_id: str
    wait: bool = False


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """Ask for the history events of ``instance_id`` from index ``start`` on, at most about
    ``max_bytes`` of them per answer (:class:`HistoryPage`, on the reply-to address)."""

    instance_id: str
    start: int = 0
    max_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        check_seq(self, "start", self.start)
        check_page_bytes(self, "max_bytes", self.max_bytes)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Answer to :class:`HistoryRequest`: events ``start``, ``start + 1``, ... of the run
    ``run_id``, each an encoded history event (``Codec.encode_event`` for the hosting app and
    the instance); ``more`` if the history has events after them; ``found`` False if there is
    no such instance."""

    instance_id: str
    found: bool = False
    run_id: str = ""
    start: int = 0
    events: tuple[bytes, ...] = ()
    more: bool = False

    def __post_init__(self) -> None:
        check_seq(self, "start", self.start)


@dataclass(frozen=True, slots=True)
class StartAck:
    """Answer to a :class:`StartWorkflow` that carried a reply-to address."""

    instance_id: str
    created: bool
    error: str = ""
    code: str = ""
    """Why it was not created: ``"exists"``, ``"terminated"``, ``"waiting_for_deployment"``;
    for a restart also ``"not_found"`` and ``"not_finished"``."""


@dataclass(frozen=True, slots=True)
class StateReply:
    """Answer to :class:`Describe` (``state`` is None when the instance does not exist), and
    to a :class:`Control` with a reply-to address."""

    instance_id: str
    state: WorkflowState | None = None
    error: str = ""
    purged: int = 0
    """Purge only: how many instances it deleted (this one and, recursively, its children)."""
    not_purged: tuple[str, ...] = ()
    """Purge only: children it did not delete, and why (not finished, no answer in time)."""

    def __post_init__(self) -> None:
        check_seq(self, "purged", self.purged)


Message = (
    StartWorkflow
    | ActivityTask
    | ActivityCancel
    | ActivityResult
    | ActivityLease
    | TaskNote
    | ChildResult
    | TimerDue
    | RaiseEvent
    | Control
    | Describe
    | HistoryRequest
    | HistoryPage
    | StartAck
    | StateReply
)
"""Any message flowmesh puts on the wire."""

MESSAGE_TYPES: tuple[type[Message], ...] = (
    StartWorkflow,
    ActivityTask,
    ActivityCancel,
    ActivityResult,
    ActivityLease,
    TaskNote,
    ChildResult,
    TimerDue,
    RaiseEvent,
    Control,
    Describe,
    HistoryRequest,
    HistoryPage,
    StartAck,
    StateReply,
)
