"""An in-process :class:`~flowmesh.store.WorkflowStore` for the embedded backend and tests.

It has the same semantics as the Redis store, down to the details a caller can observe:

* times are kept as integer milliseconds since the epoch (UTC), so a timer's ``fire_at`` comes
  back truncated to the millisecond, exactly as it does from Redis;
* the outbox is listed instance by instance, ordered by each instance's oldest pending
  commit, and within an instance in commit order;
* ``list_instances`` returns the most recently created instances first;
* due timers are claimed in order of due time, ties broken by ``"<instance>|<seq>"``.

Every method completes without awaiting anything, so on one event loop each call is atomic,
which is what the Redis store gets from running each operation as one Lua script.

The millisecond conversion and commit validation it shares with :mod:`flowmesh.store.redis`
live in ``store/_base.py``, so both stores agree on them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flowmesh._errors import VersionConflictError
from flowmesh.model import HistoryEvent, WorkflowState, WorkflowStatus, check_instance_id
from flowmesh.store._base import (
    MAX_WAITERS,
    Commit,
    HeldMessage,
    HistorySlice,
    InstanceRecord,
    OutboxEntry,
    TimerEntry,
    Waiter,
    _check_commit,
    _due_ms,
    _epoch_ms,
    _from_epoch_ms,
    _lease_ms,
)
from flowmesh.transport import Outgoing

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Instance:
    state: WorkflowState
    history: list[HistoryEvent]
    # Position in the instance index, from the store's sequence (creation order).
    created_seq: int
    waiters: set[Waiter] = field(default_factory=set)
    # entry_id -> ((commit version, position in commit), message): the commit order.
    outbox: dict[str, tuple[tuple[int, int], Outgoing]] = field(default_factory=dict)


@dataclass(slots=True)
class _Timer:
    due_ms: int  # when it may be claimed next: fire time, or claim time + lease
    fire_ms: int  # the fire time the workflow asked for, reported to the claimer
    run_id: str = ""


class MemoryStore:
    """Workflow store that keeps everything in this process (lost when it exits).

    Holds the frozen events and states it is given, never copies of them. One instance serves
    one app ID and must be used from one event loop.
    """

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self._instances: dict[str, _Instance] = {}
        self._timers: dict[tuple[str, int], _Timer] = {}
        # instance -> sequence number of its oldest pending outbox commit.
        self._outbox_index: dict[str, int] = {}
        # One counter orders both instance creation and outbox commits, like the Redis store's.
        self._seq = 0
        # Versions of purged instances: a new run of the ID continues from there.
        self._purged_versions: dict[str, int] = {}
        # Messages held for instances that do not exist yet, in arrival order.
        self._held: dict[str, list[HeldMessage]] = {}
        # Starts waiting for a replica that registers their workflow: id -> (name, note).
        # Kept until the instance is created (the TTL only matters for a long-lived Redis).
        self._waiting_starts: dict[str, tuple[str, str]] = {}
        self._publish_problems: dict[str, tuple[str, float]] = {}
        """instance -> (note, monotonic expiry)."""

    def __repr__(self) -> str:
        return f"MemoryStore(app_id={self.app_id!r}, instances={len(self._instances)})"

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def load(self, instance_id: str) -> InstanceRecord | None:
        """The instance's state and history, or None if it does not exist."""
        found = self._instances.get(instance_id)
        if found is None:
            return None
        return InstanceRecord(state=found.state, history=tuple(found.history))

    async def load_state(self, instance_id: str) -> WorkflowState | None:
        """The instance's state without its history, or None."""
        found = self._instances.get(instance_id)
        return None if found is None else found.state

    async def load_history(self, instance_id: str, start: int, limit: int) -> HistorySlice | None:
        """Events ``start`` to ``start + limit - 1`` and the run, or None."""
        found = self._instances.get(instance_id)
        if found is None:
            return None
        events = tuple(found.history[start : start + limit])
        return HistorySlice(found.state.run_id, events, len(found.history) > start + limit)

    async def commit(self, commit: Commit) -> list[Waiter]:
        """Apply ``commit`` atomically or raise :class:`~flowmesh.VersionConflictError`.

        Returns the waiters it took (``commit.take_waiters``), sorted; else an empty list.
        """
        _check_commit(commit)
        instance_id = commit.instance_id
        found = self._instances.get(instance_id)
        if found is None:
            stored_version, stored_run = self._purged_versions.get(instance_id, 0), ""
        else:
            stored_version, stored_run = found.state.version, found.state.run_id
        if stored_version != commit.expected_version or stored_run != commit.expected_run_id:
            raise VersionConflictError(
                f"instance {instance_id!r}: expected version {commit.expected_version} of run "
                f"{commit.expected_run_id!r}, stored version {stored_version} of run "
                f"{stored_run!r}",
                stored_version=stored_version,
            )
        held = len(self._held.get(instance_id, ())) if found is None else 0
        if held != commit.take_held:
            raise VersionConflictError(
                f"instance {instance_id!r}: {held} messages are held for it, the step applied "
                f"{commit.take_held}",
                stored_version=stored_version,
            )
        # Validate everything that can fail before mutating, so a failure writes nothing.
        fire_times = [(timer.seq, _due_ms(timer.fire_at)) for timer in commit.add_timers]

        if found is None:
            found = _Instance(state=commit.state, history=[], created_seq=self._next_seq())
            self._instances[instance_id] = found
            self._held.pop(instance_id, None)
            self._purged_versions.pop(instance_id, None)
            self._waiting_starts.pop(instance_id, None)
        if commit.replace_history:
            found.history = list(commit.append)
        else:
            found.history.extend(commit.append)
        found.state = commit.state

        for index, entry in enumerate(commit.outbox):
            found.outbox[entry.entry_id] = ((commit.state.version, index), entry.message)
        if found.outbox and instance_id not in self._outbox_index:
            self._outbox_index[instance_id] = self._next_seq()
        for entry_id in commit.clear_outbox:
            found.outbox.pop(entry_id, None)
        if not found.outbox:
            self._outbox_index.pop(instance_id, None)

        # Cancel before add, as the Lua script does: a commit may re-arm a cancelled seq.
        for seq in commit.cancel_timers:
            self._timers.pop((instance_id, seq), None)
        for timer, (seq, fire_ms) in zip(commit.add_timers, fire_times, strict=True):
            self._timers[(instance_id, seq)] = _Timer(fire_ms, fire_ms, timer.run_id)

        if not commit.take_waiters:
            return []
        waiters, found.waiters = sorted(found.waiters), set()
        return waiters

    async def list_outbox(self, limit: int = 100, *, skip: int = 0) -> list[OutboxEntry]:
        """Pending outbox entries: instances by oldest pending commit (from the ``skip``-th
        on), each in commit order."""
        entries: list[OutboxEntry] = []
        if limit <= 0:
            return entries
        ordered = sorted(self._outbox_index, key=self._outbox_index.__getitem__)
        for instance_id in ordered[max(skip, 0) :]:
            if len(entries) >= limit:
                break
            pending = self._instances[instance_id].outbox
            for entry_id, (_, message) in sorted(pending.items(), key=lambda kv: kv[1][0]):
                entries.append(OutboxEntry(instance_id, entry_id, message))
        return entries[:limit]

    async def remove_outbox(self, instance_id: str, entry_ids: Sequence[str]) -> None:
        """Forget published outbox entries; unknown IDs are ignored."""
        found = self._instances.get(instance_id)
        if found is None:
            return
        for entry_id in entry_ids:
            found.outbox.pop(entry_id, None)
        if not found.outbox:
            self._outbox_index.pop(instance_id, None)

    async def remove_outbox_many(self, batch: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Forget published outbox entries of many instances."""
        for instance_id, entry_ids in batch:
            await self.remove_outbox(instance_id, entry_ids)

    async def claim_due_timers(
        self, now: datetime, lease: timedelta, limit: int = 100
    ) -> list[TimerEntry]:
        """Timers due at ``now`` (at most ``limit``), each postponed to ``now + lease``."""
        now_ms = _epoch_ms(now)
        until_ms = now_ms + _lease_ms(lease)
        if limit <= 0:
            return []
        due = sorted(
            (timer.due_ms, f"{instance_id}|{seq}", instance_id, seq, timer)
            for (instance_id, seq), timer in self._timers.items()
            if timer.due_ms <= now_ms
        )[:limit]
        claimed: list[TimerEntry] = []
        for _, _, instance_id, seq, timer in due:
            timer.due_ms = until_ms
            claimed.append(
                TimerEntry(instance_id, seq, _from_epoch_ms(timer.fire_ms), timer.run_id)
            )
        return claimed

    async def next_timer_at(self) -> datetime | None:
        """When the earliest timer can next be claimed (its fire time, or its lease's end)."""
        if not self._timers:
            return None
        return _from_epoch_ms(min(timer.due_ms for timer in self._timers.values()))

    async def add_waiter(self, instance_id: str, waiter: Waiter) -> WorkflowState | None:
        """Remember ``waiter`` unless the instance is finished; its state, or None if absent."""
        found = self._instances.get(instance_id)
        if found is None:
            return None
        if not found.state.status.ends_waiting and waiter not in found.waiters:
            if len(found.waiters) >= MAX_WAITERS:
                found.waiters.pop()  # an arbitrary one, as Redis's SPOP drops a random one
            found.waiters.add(waiter)
        return found.state

    async def take_waiters(self, instance_id: str) -> list[Waiter]:
        """Remove and return the waiters of ``instance_id`` (sorted, like Redis's)."""
        found = self._instances.get(instance_id)
        if found is None:
            return []
        waiters, found.waiters = sorted(found.waiters), set()
        return waiters

    async def purge(self, instance_id: str) -> bool:
        """Delete the instance, its history, outbox, timers and waiters, keeping its version
        for the next run of the ID; False if absent."""
        found = self._instances.pop(instance_id, None)
        if found is None:
            return False
        self._purged_versions[instance_id] = found.state.version
        self._outbox_index.pop(instance_id, None)
        for key in [key for key in self._timers if key[0] == instance_id]:
            del self._timers[key]
        return True

    async def hold(self, instance_id: str, message: HeldMessage) -> bool:
        """Keep ``message`` until the instance exists; False if it exists already."""
        if instance_id in self._instances:
            return False
        check_instance_id(instance_id)
        held_at = _from_epoch_ms(_epoch_ms(message.held_at))  # millisecond precision, as Redis
        self._held.setdefault(instance_id, []).append(
            HeldMessage(message.body, held_at, message.user_id, message.message_id)
        )
        return True

    async def held(self, instance_id: str) -> list[HeldMessage]:
        """The messages held for ``instance_id``, oldest first."""
        return list(self._held.get(instance_id, ()))

    async def expired_held(
        self, before: datetime, limit: int = 100
    ) -> list[tuple[str, list[HeldMessage]]]:
        """Instances whose oldest held message arrived before ``before``, oldest first."""
        expired = sorted(
            (messages[0].held_at, instance_id)
            for instance_id, messages in self._held.items()
            if messages and messages[0].held_at < before
        )[: max(limit, 0)]
        return [(instance_id, list(self._held[instance_id])) for _, instance_id in expired]

    async def drop_held(self, instance_id: str, before: datetime) -> None:
        """Forget the held messages of ``instance_id`` that arrived before ``before``."""
        kept = [m for m in self._held.get(instance_id, ()) if m.held_at >= before]
        if kept:
            self._held[instance_id] = kept
        else:
            self._held.pop(instance_id, None)

    async def note_waiting_start(
        self, instance_id: str, name: str, note: str, ttl: timedelta
    ) -> None:
        """Remember why a start of ``instance_id`` waits (until the instance is created)."""
        check_instance_id(instance_id)
        self._waiting_starts[instance_id] = (name, note)

    async def waiting_start(self, instance_id: str) -> tuple[str, str] | None:
        """``(name, note)`` of a waiting start of ``instance_id``, if any."""
        return self._waiting_starts.get(instance_id)

    async def note_publish_problems(self, notes: Sequence[tuple[str, str]], ttl: timedelta) -> None:
        """Remember (or, with an empty note, forget) why outbox messages wait; expires after
        ``ttl`` of wall-clock time, like the Redis store's key."""
        expires = time.monotonic() + ttl.total_seconds()
        for instance_id, note in notes:
            if note:
                self._publish_problems[instance_id] = (note, expires)
            else:
                self._publish_problems.pop(instance_id, None)

    async def publish_problem(self, instance_id: str) -> str:
        """The last publish problem noted for ``instance_id`` ('' if none or expired)."""
        note, expires = self._publish_problems.get(instance_id, ("", 0.0))
        return note if expires > time.monotonic() else ""

    async def list_instances(
        self, status: WorkflowStatus | None = None, limit: int = 100
    ) -> list[WorkflowState]:
        """States of stored instances, most recently created first, optionally by status."""
        newest_first = sorted(self._instances.values(), key=lambda i: i.created_seq, reverse=True)
        states = [i.state for i in newest_first if status is None or i.state.status is status]
        return states[: max(limit, 0)]

    async def check_safety(self) -> list[str]:
        """Nothing to report: losing the data with the process is this store's documented nature."""
        return []

    async def close(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""
