"""What one replay step produces."""

from __future__ import annotations

from dataclasses import dataclass

from flowmesh.model import Command, FailureDetails, HistoryEvent, PendingTask, WorkflowStatus


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """The result of feeding new events to a workflow execution.

    ``append`` holds the events the runtime must commit to history: the new events that were
    accepted (duplicates and stray results are dropped, which is what makes applying a result
    idempotent), followed by the events recording new commands. ``commands`` are the new
    commands to carry out once that commit succeeded. An empty ``append`` means nothing
    changed and nothing needs committing.
    """

    append: tuple[HistoryEvent, ...]
    commands: tuple[Command, ...]
    status: WorkflowStatus
    output: object = None
    failure: FailureDetails | None = None
    custom_status: object = None
    waiting_on: tuple[PendingTask, ...] = ()
    cancelled_timers: tuple[int, ...] = ()
    stall_reason: str = ""
    dropped: tuple[HistoryEvent, ...] = ()
    refused: tuple[tuple[HistoryEvent, str], ...] = ()
    """New events refused, with why (e.g. a result for a task that was never dispatched):
    unlike duplicates in ``dropped`` they point at a faulty or hostile sender, so the runtime
    dead-letters their messages and records the refusal. Each is also in ``dropped``."""

    @property
    def changed(self) -> bool:
        """True when there is something to commit."""
        return bool(self.append)
