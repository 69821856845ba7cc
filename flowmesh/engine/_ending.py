"""How a run ends: its completion command, whether history records it yet, the child
terminations a recursive terminate sends, and the events continue-as-new carries over."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from flowmesh.model import (
    Command,
    CompleteWorkflow,
    EventRaised,
    HistoryEvent,
    TerminateChildren,
    WorkflowCompleted,
    WorkflowStatus,
)


class RunEnding:
    """The end of one run, once it has ended (``completion`` is None before)."""

    __slots__ = ("_save_events", "_terminations", "completion", "recorded")

    def __init__(self) -> None:
        self.completion: CompleteWorkflow | None = None
        self.recorded = False
        """True once history holds the ``WorkflowCompleted`` of ``completion``."""
        self._save_events = False
        self._terminations: list[TerminateChildren] = []

    def end(
        self, completion: CompleteWorkflow, terminations: Iterable[TerminateChildren] = ()
    ) -> None:
        """The run ended with ``completion``; ``terminations`` go out with it."""
        self.completion = completion
        self._terminations.extend(terminations)

    def continue_as_new(
        self, new_input: object, carried: Iterable[EventRaised], *, save_events: bool
    ) -> None:
        """The code asked to continue as new; ``carried`` are the events it keeps."""
        self._save_events = save_events
        self.end(CompleteWorkflow(WorkflowStatus.CONTINUED_AS_NEW, new_input, None, tuple(carried)))

    def recorded_in_history(self, event: WorkflowCompleted) -> bool:
        """History records the end. True if the run had not ended by itself: history is
        trusted (e.g. a termination replayed from an old run) and the caller stops the code."""
        self.recorded = True
        if self.completion is not None:
            return False
        self.completion = CompleteWorkflow(event.status, event.output, event.failure)
        return True

    def carry_over(self, event: HistoryEvent) -> bool:
        """Carry an event that arrives in the very step that continued-as-new with
        ``save_events`` into the new run, instead of dropping it."""
        completion = self.completion
        if (
            not isinstance(event, EventRaised)
            or completion is None
            or self.recorded
            or completion.status is not WorkflowStatus.CONTINUED_AS_NEW
            or not self._save_events
        ):
            return False
        self.completion = replace(completion, carried_events=(*completion.carried_events, event))
        return True

    def record(self) -> tuple[list[HistoryEvent], list[Command]]:
        """The event recording an end history does not hold yet and the commands it sends
        (empty otherwise); marks it recorded."""
        # Terminations belong to this completion: a replayed (already recorded) recursive
        # terminate must not send them again.
        terminations, self._terminations = self._terminations, []
        completion = self.completion
        if completion is None or self.recorded:
            return [], []
        self.recorded = True
        event = WorkflowCompleted(completion.status, completion.output, completion.failure)
        return [event], [*terminations, completion]
