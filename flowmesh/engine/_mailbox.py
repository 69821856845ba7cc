"""External events of one execution: who waits for which event, what arrived first."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from flowmesh.engine._tasks import Task
from flowmesh.model import EventRaised


class EventMailbox:
    """Tasks waiting for an external event by name (case-insensitive), events that arrived
    before anyone waited for them, and the IDs of the events recorded so far."""

    __slots__ = ("_buffer", "_seen", "_waiters")

    def __init__(self) -> None:
        self._waiters: dict[str, deque[Task[Any]]] = {}
        self._buffer: dict[str, deque[EventRaised]] = {}
        # Insertion-ordered (a dict), so a continued run inherits the most recent IDs.
        self._seen: dict[str, None] = {}

    def first_sight(self, event_id: str) -> bool:
        """Record ``event_id``; False if it was recorded before (a redelivered event)."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        return True

    def inherit(self, event_ids: Iterable[str]) -> None:
        """Take over the IDs a previous run recorded (continue-as-new)."""
        self._seen.update(dict.fromkeys(event_ids))

    def recent_ids(self, limit: int) -> tuple[str, ...]:
        """The ``limit`` latest recorded IDs, oldest first."""
        return tuple(self._seen)[-limit:]

    def deliver(self, event: EventRaised) -> Task[Any] | None:
        """The task that waited longest for ``event`` (the caller resolves it), or None if
        nobody waits: then the event is kept for the next wait."""
        key = event.name.casefold()
        waiters = self._waiters.get(key)
        if waiters:
            return waiters.popleft()
        self._buffer.setdefault(key, deque()).append(event)
        return None

    def take(self, key: str) -> EventRaised | None:
        """The oldest kept event called ``key`` (casefolded), removed; or None."""
        buffered = self._buffer.get(key)
        return buffered.popleft() if buffered else None

    def wait(self, key: str, task: Task[Any]) -> None:
        """Resolve ``task`` with the next event called ``key`` (see :meth:`deliver`)."""
        self._waiters.setdefault(key, deque()).append(task)

    def stop_waiting(self, key: str, task: Task[Any]) -> None:
        """``task`` no longer waits (it timed out)."""
        waiters = self._waiters.get(key)
        if waiters and task in waiters:
            waiters.remove(task)

    def kept(self) -> list[EventRaised]:
        """Every event nobody waited for, by name then arrival (continue-as-new carries
        them with ``save_events``)."""
        return [e for queue in self._buffer.values() for e in queue]

    def waited_for(self) -> list[str]:
        """The (casefolded) names of the events someone waits for."""
        return [name for name, waiters in self._waiters.items() if waiters]
