"""The externally visible state of a workflow instance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flowmesh._failures import FailureDetails
from flowmesh.model._events import ParentRef
from flowmesh.model._ranges import check_seq, check_time
from flowmesh.model._status import WorkflowStatus


@dataclass(frozen=True, slots=True)
class PendingTask:
    """Something a workflow is waiting for, as shown by ``describe()`` and the CLI."""

    kind: str  # "activity", "child_workflow", "timer", "event"
    name: str
    app_id: str = ""
    seq: int = 0
    since: datetime | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        check_seq(self, "seq", self.seq)
        check_time(self, "since", self.since)

    def describe(self) -> str:
        """One readable line, e.g. ``activity 'train' on app 'gpu-trainer' (seq 3)``."""
        if self.kind == "more":
            return self.name
        where = f" on app {self.app_id!r}" if self.app_id else ""
        seq = f" (seq {self.seq})" if self.kind != "event" else ""  # events have no seq
        extra = f": {self.detail}" if self.detail else ""
        return f"{self.kind} {self.name!r}{where}{seq}{extra}"


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """A snapshot of one workflow instance: what ``WorkflowHandle.describe()`` returns."""

    instance_id: str
    app_id: str
    name: str
    status: WorkflowStatus
    input: object = None
    output: object = None
    failure: FailureDetails | None = None
    custom_status: object = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    parent: ParentRef | None = None
    waiting_on: tuple[PendingTask, ...] = ()
    stall_reason: str = ""
    history_length: int = 0
    version: int = 0
    run_id: str = ""
    """Identity of the current run of ``instance_id`` (a new one after purge and reuse of the
    ID, and after continue-as-new)."""
    refusals: tuple[str, ...] = ()
    """The latest messages refused for this instance and why (most recent last, bounded),
    e.g. a result for a task that was never dispatched. Each also went to the dead-letter
    queue."""
    publish_problem: str = ""
    """Why some messages the instance sent are not published yet, e.g. "cannot publish to
    app 'billing': ... ACCESS_REFUSED ...; retrying in 40s (attempt 4)" ('' when none). Not
    stored with the state: ``describe()`` adds the latest note a replica made (it expires
    once the messages went out)."""

    def __post_init__(self) -> None:
        check_time(self, "created_at", self.created_at)
        check_time(self, "updated_at", self.updated_at)
        check_seq(self, "history_length", self.history_length)
        check_seq(self, "version", self.version)
