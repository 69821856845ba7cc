"""The store interface: where an app keeps the histories of the workflows it hosts.

Implementations: :mod:`flowmesh.store.memory` (in process) and :mod:`flowmesh.store.redis`
(one atomic Lua script per commit). Both pass the same contract suite in ``tests/contract``.

A store belongs to one app ID. The single-writer invariant lives here: :meth:`commit` applies
only if the stored version equals ``expected_version``, and then atomically appends the events,
replaces the state, records the outbox, updates the timers and (on request) takes the result
waiters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from flowmesh.model import HistoryEvent, WorkflowState, WorkflowStatus
from flowmesh.transport._base import Outgoing

MAX_WAITERS = 256
"""Waiters an instance keeps at most. Each client inbox waiting on it adds one (its re-asks
add nothing), so without a bound a long-running instance polled by short-lived clients would
collect one per client for its whole life."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message a committed step must publish; removed once the broker confirmed it."""

    instance_id: str
    entry_id: str
    message: Outgoing


@dataclass(frozen=True, slots=True)
class TimerEntry:
    """A durable timer: deliver ``TimerDue(instance_id, seq)`` at ``fire_at``."""

    instance_id: str
    seq: int
    fire_at: datetime


@dataclass(frozen=True, slots=True, order=True)
class Waiter:
    """An inbox waiting for an instance to finish, and the correlation ID its answer carries.

    The correlation ID is the one of the ``Describe(wait=True)`` request that registered the
    waiter: a client only accepts an answer carrying an ID it chose (unguessably), so a
    completion notice cannot be forged by whoever else may write to its inbox.
    """

    address: str
    correlation_id: str = ""
    """Empty for waiters stored before correlation IDs were (see ``docs/protocol.md``)."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A workflow instance as stored: its state (with ``version``) and full history."""

    state: WorkflowState
    history: tuple[HistoryEvent, ...]


@dataclass(frozen=True, slots=True)
class Commit:
    """One atomic step of one instance.

    Applies only if the stored version is ``expected_version`` (0: the instance must not
    exist); ``state.version`` must be ``expected_version + 1``. With ``replace_history`` the
    history becomes ``append`` (continue-as-new), otherwise ``append`` is added to it.
    """

    instance_id: str
    expected_version: int
    state: WorkflowState
    append: tuple[HistoryEvent, ...] = ()
    replace_history: bool = False
    outbox: tuple[OutboxEntry, ...] = ()
    add_timers: tuple[TimerEntry, ...] = ()
    cancel_timers: tuple[int, ...] = ()
    clear_outbox: tuple[str, ...] = ()
    """Entry IDs of this instance's earlier outbox entries that were published meanwhile."""
    take_waiters: bool = False
    """Also remove and return the waiters of this instance (set when the step
    finishes or stalls it): atomically with the state change, so a waiter added before the
    commit is always answered and none is added after. Left in place on a version conflict."""


class WorkflowStore(Protocol):
    """Histories, states, outbox, timers and result waiters of one app's workflows."""

    async def load(self, instance_id: str) -> InstanceRecord | None:
        """The instance's state and history, or None if it does not exist."""

    async def load_state(self, instance_id: str) -> WorkflowState | None:
        """The instance's state without its history (cheap), or None."""

    async def commit(self, commit: Commit) -> list[Waiter]:
        """Apply ``commit`` atomically or raise :class:`~flowmesh.VersionConflictError`.

        Returns the waiters it removed, sorted: those registered by
        :meth:`add_waiter` if ``commit.take_waiters`` is set, else none (an empty list).
        """

    async def list_outbox(self, limit: int = 100) -> list[OutboxEntry]:
        """Outbox entries of all instances, oldest commit first."""

    async def remove_outbox(self, instance_id: str, entry_ids: Sequence[str]) -> None:
        """Forget outbox entries that were published (idempotent)."""

    async def remove_outbox_many(self, batch: Sequence[tuple[str, Sequence[str]]]) -> None:
        """:meth:`remove_outbox` for many instances at once (one round trip)."""

    async def claim_due_timers(
        self, now: datetime, lease: timedelta, limit: int = 100
    ) -> list[TimerEntry]:
        """Timers due at ``now``, each postponed by ``lease`` so other replicas skip them.

        A claimed timer stays stored until a commit cancels it, so a replica that dies after
        claiming only delays it by ``lease``.
        """

    async def next_timer_at(self) -> datetime | None:
        """When the earliest stored timer is due (None if there are no timers)."""

    async def add_waiter(self, instance_id: str, waiter: Waiter) -> WorkflowState | None:
        """Atomically: unless the instance is finished or stalled, remember ``waiter`` to
        notify. Adding the same waiter again changes nothing; an instance keeps at most
        :data:`MAX_WAITERS` of them, a random one dropped to make room (a dropped waiter's
        client re-asks, see ``docs/protocol.md``).

        Returns the current state (the caller answers at once if it is already terminal), or
        None if the instance does not exist.
        """

    async def take_waiters(self, instance_id: str) -> list[Waiter]:
        """Remove and return the waiters of ``instance_id``, sorted.

        A step that finishes the instance takes them in its commit instead
        (:attr:`Commit.take_waiters`), which cannot miss a waiter added meanwhile.
        """

    async def purge(self, instance_id: str) -> bool:
        """Delete everything about the instance; False if it did not exist."""

    async def list_instances(
        self, status: WorkflowStatus | None = None, limit: int = 100
    ) -> list[WorkflowState]:
        """States of stored instances, optionally filtered by status."""

    async def check_safety(self) -> list[str]:
        """Reasons the backing server may lose data (empty when configured safely)."""

    async def close(self) -> None:
        """Release connections."""
