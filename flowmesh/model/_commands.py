"""Commands: what one replay step asks the runtime to do next."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flowmesh._failures import FailureDetails
from flowmesh.model._events import EventRaised
from flowmesh.model._ranges import check_seq, check_time
from flowmesh.model._status import WorkflowStatus


@dataclass(frozen=True, slots=True)
class ScheduleActivity:
    """Send activity ``name`` to ``app_id``'s work queue as task ``seq``."""

    seq: int
    name: str
    app_id: str
    input: object = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class ScheduleChildWorkflow:
    """Start child workflow ``name`` as ``instance_id`` on ``app_id``."""

    seq: int
    name: str
    app_id: str
    instance_id: str
    input: object = None


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Arrange for ``TimerFired(seq)`` to be delivered at ``fire_at``."""

    seq: int
    fire_at: datetime

    def __post_init__(self) -> None:
        # The workflow picks fire_at: refuse it in its own code, not later in its step.
        check_seq(self, "seq", self.seq)
        check_time(self, "fire_at", self.fire_at)


@dataclass(frozen=True, slots=True)
class SendEvent:
    """Raise event ``name`` with ``data`` on instance ``instance_id`` of app ``app_id``
    (``ctx.send_event``); the message's event ID derives from the sender and ``seq``."""

    seq: int
    instance_id: str
    app_id: str
    name: str
    data: object = None


@dataclass(frozen=True, slots=True)
class CancelActivity:
    """Tell ``app_id`` that activity task ``seq`` (attempt ``attempt``) was cancelled; best
    effort: a replica running it sets ``ActivityContext.is_cancelled``."""

    seq: int
    name: str
    app_id: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class CancelChildWorkflow:
    """Terminate child workflow ``instance_id`` on ``app_id`` (task ``seq``), cancelled by
    its parent."""

    seq: int
    name: str
    app_id: str
    instance_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CompleteWorkflow:
    """End this execution.

    For ``CONTINUED_AS_NEW`` the runtime starts a fresh history with ``output`` as the new input
    and appends ``carried_events`` (unprocessed external events) after it.
    """

    status: WorkflowStatus
    output: object = None
    failure: FailureDetails | None = None
    carried_events: tuple[EventRaised, ...] = ()


@dataclass(frozen=True, slots=True)
class TerminateChildren:
    """Terminate child ``instance_id`` on ``app_id`` (recursive terminate)."""

    instance_id: str
    app_id: str
    reason: str = ""


Command = (
    ScheduleActivity
    | ScheduleChildWorkflow
    | StartTimer
    | SendEvent
    | CancelActivity
    | CancelChildWorkflow
    | CompleteWorkflow
    | TerminateChildren
)
"""Anything a replay step can ask the runtime to do."""
