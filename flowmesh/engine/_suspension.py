"""What a suspended execution keeps aside until it is resumed."""

from __future__ import annotations

from flowmesh.model import EventRaised, HistoryEvent


class SuspensionBuffer:
    """Events and results that arrive while the workflow is suspended, applied in arrival
    order when it resumes."""

    __slots__ = ("_events", "replaying")

    def __init__(self) -> None:
        self._events: list[HistoryEvent] = []
        self.replaying = False
        """True while the execution applies the kept events (their IDs were already checked
        on arrival)."""

    def keep(self, event: HistoryEvent) -> None:
        """Keep ``event`` until the workflow is resumed."""
        self._events.append(event)

    def holds_result(self, event: HistoryEvent) -> bool:
        """True if a result for ``event``'s seq is already kept (``event`` is a duplicate)."""
        seq = getattr(event, "seq", None)
        return any(
            not isinstance(held, EventRaised) and getattr(held, "seq", None) == seq
            for held in self._events
        )

    def take(self) -> list[HistoryEvent]:
        """The kept events, oldest first; the buffer is empty afterwards."""
        events, self._events = self._events, []
        return events
