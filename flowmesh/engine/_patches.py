"""``ctx.is_patched(name)``: which code path an execution takes, decided once per name."""

from __future__ import annotations

from collections.abc import Iterable

from flowmesh.model import HistoryEvent, PatchRecorded


class PatchState:
    """The patches history recorded, the decisions taken, and the new records to append."""

    __slots__ = ("_decisions", "_new", "_recorded")

    def __init__(self) -> None:
        self._recorded: set[str] = set()
        self._decisions: dict[str, bool] = {}
        self._new: list[PatchRecorded] = []

    def read(self, history: Iterable[HistoryEvent]) -> None:
        """Note every patch ``history`` records (before replaying it: a patch is recorded
        after the code that asked for it)."""
        self._recorded.update(e.name for e in history if isinstance(e, PatchRecorded))

    def record(self, name: str) -> None:
        """A ``PatchRecorded`` event was applied."""
        self._recorded.add(name)

    def decide(self, name: str, *, replaying: bool) -> bool:
        """See :meth:`WorkflowContext.is_patched`: new code runs the patched path (and records
        it), replayed code runs it only if history recorded it."""
        decided = self._decisions.get(name)
        if decided is not None:
            return decided
        if name in self._recorded:
            decision = True
        elif replaying:
            decision = False
        else:
            decision = True
            self._recorded.add(name)
            self._new.append(PatchRecorded(name))
        self._decisions[name] = decision
        return decision

    def take_new(self) -> list[PatchRecorded]:
        """The patches decided since the last call, to record in history."""
        new, self._new = self._new, []
        return new
