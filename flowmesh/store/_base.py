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
from datetime import UTC, datetime, timedelta
from typing import Protocol

from flowmesh.model import HistoryEvent, WorkflowState, WorkflowStatus, check_instance_id
from flowmesh.transport import Outgoing

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
    """A durable timer: deliver ``TimerDue(instance_id, seq, run_id)`` at ``fire_at``."""

    instance_id: str
    seq: int
    fire_at: datetime
    run_id: str = ""
    """The run that created the timer: a timer of an earlier run never fires into a new one."""


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A message that arrived for an instance that did not exist yet (an event raised right
    after the start, a terminate that overtook its start), kept until the instance is
    created or the holding bound passes."""

    body: bytes
    held_at: datetime
    user_id: str = ""
    """The verified sender, for the sender checks applied when the message is used."""
    message_id: str = ""


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
class HistorySlice:
    """Part of an instance's history (:meth:`WorkflowStore.load_history`)."""

    run_id: str
    events: tuple[HistoryEvent, ...]
    more: bool
    """Whether the history has events after these."""


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
    expected_run_id: str = ""
    """The run the step was computed for ('' when creating the instance): together with the
    version it fences runs, so a replica's cached view of an earlier run can never commit
    into a new run of the same instance ID."""
    append: tuple[HistoryEvent, ...] = ()
    replace_history: bool = False
    outbox: tuple[OutboxEntry, ...] = ()
    add_timers: tuple[TimerEntry, ...] = ()
    cancel_timers: tuple[int, ...] = ()
    clear_outbox: tuple[str, ...] = ()
    """Entry IDs of this instance's earlier outbox entries that were published meanwhile."""
    take_held: int = 0
    """When creating the instance: how many held messages (:meth:`WorkflowStore.hold`) the
    step applied. The commit fails as a conflict unless exactly that many are held, and
    removes them; so a message held meanwhile is never left behind."""
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

    async def load_history(self, instance_id: str, start: int, limit: int) -> HistorySlice | None:
        """Events ``start`` to ``start + limit - 1`` of the instance's history and its run,
        read together (one round trip), or None if the instance does not exist."""

    async def commit(self, commit: Commit) -> list[Waiter]:
        """Apply ``commit`` atomically or raise :class:`~flowmesh.VersionConflictError`.

        Returns the waiters it removed, sorted: those registered by
        :meth:`add_waiter` if ``commit.take_waiters`` is set, else none (an empty list).
        """

    async def list_outbox(self, limit: int = 100, *, skip: int = 0) -> list[OutboxEntry]:
        """Outbox entries of all instances, oldest commit first: those of the instances from
        the ``skip``-th on (so a sweeper can move on past instances it cannot publish for),
        at most ``limit``."""

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
        """Delete everything about the instance but its version, so a new run of the ID
        continues the numbering; False if it did not exist."""

    async def hold(self, instance_id: str, message: HeldMessage) -> bool:
        """Atomically: unless the instance exists, keep ``message`` for it (in arrival
        order). False if the instance exists (apply the message to it instead)."""

    async def held(self, instance_id: str) -> list[HeldMessage]:
        """The messages held for ``instance_id``, oldest first."""

    async def expired_held(
        self, before: datetime, limit: int = 100
    ) -> list[tuple[str, list[HeldMessage]]]:
        """Instances whose oldest held message arrived before ``before`` (at most ``limit``),
        with all their held messages, oldest first."""

    async def drop_held(self, instance_id: str, before: datetime) -> None:
        """Forget the messages held for ``instance_id`` that arrived before ``before`` (once
        they were dead-lettered); idempotent."""

    async def note_waiting_start(
        self, instance_id: str, name: str, note: str, ttl: timedelta
    ) -> None:
        """Remember for ``ttl`` why a start of workflow ``name`` as ``instance_id`` waits (no
        replica that took it registers the workflow), for ``describe()``."""

    async def waiting_start(self, instance_id: str) -> tuple[str, str] | None:
        """``(name, note)`` of a start of ``instance_id`` that waits, if noted recently."""

    async def note_publish_problems(self, notes: Sequence[tuple[str, str]], ttl: timedelta) -> None:
        """For each ``(instance_id, note)``, remember for ``ttl`` why some of the instance's
        outbox messages are not published yet (an empty note forgets it), for
        ``describe()``. One round trip for all of them."""

    async def publish_problem(self, instance_id: str) -> str:
        """The last publish problem noted for ``instance_id`` ('' if none or expired)."""

    async def list_instances(
        self, status: WorkflowStatus | None = None, limit: int = 100
    ) -> list[WorkflowState]:
        """States of stored instances, optionally filtered by status."""

    async def check_safety(self) -> list[str]:
        """Reasons the backing server may lose data (empty when configured safely)."""

    async def close(self) -> None:
        """Release connections."""


# -- helpers both stores share, so they agree on them ------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is taken to be UTC (as events are)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _from_epoch_ms(ms: int) -> datetime:
    """The aware UTC datetime ``ms`` milliseconds after the epoch (exact, no float rounding)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _due_ms(moment: datetime) -> int:
    """A timer's due time in milliseconds since the epoch, rounded *up*: a timer may fire late
    by less than a millisecond, never early (its ``fire_at`` in history keeps microseconds)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return -((_EPOCH - moment) // _MS)


def _lease_ms(lease: timedelta) -> int:
    if lease < timedelta(0):
        raise ValueError(f"a timer lease cannot be negative, got {lease}")
    return lease // _MS


def _check_commit(commit: Commit) -> None:
    """Reject a malformed commit before it touches the store (a caller bug, not a conflict).

    The instance ID becomes part of Redis keys and timer members, hence the syntax check; the
    rest guards the invariants the engine relies on when it reloads what it wrote.
    """
    instance_id = check_instance_id(commit.instance_id)
    if commit.expected_version < 0:
        raise ValueError(f"expected_version must be >= 0, got {commit.expected_version}")
    if commit.state.instance_id != instance_id:
        raise ValueError(
            f"commit for {instance_id!r} carries the state of {commit.state.instance_id!r}"
        )
    if commit.state.version != commit.expected_version + 1:
        raise ValueError(
            f"commit for {instance_id!r}: state.version must be expected_version + 1 "
            f"({commit.expected_version + 1}), got {commit.state.version}"
        )
    items: tuple[OutboxEntry | TimerEntry, ...] = (*commit.outbox, *commit.add_timers)
    for item in items:
        if item.instance_id != instance_id:
            raise ValueError(
                f"commit for {instance_id!r} carries {type(item).__name__} of {item.instance_id!r}"
            )
