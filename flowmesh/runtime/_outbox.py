"""Publishing committed outbox entries, and sweeping up entries a crash or a failure left behind.

Every entry has its own outcome: a confirmed entry is forgotten even when a sibling of the
same step failed, and a failed one stays stored and is retried by :class:`OutboxRelay` with a
backoff of its own. Why an instance's messages wait is noted in the store for ``describe()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flowmesh._errors import FlowmeshError
from flowmesh.runtime._clock import Clock
from flowmesh.store import OutboxEntry, WorkflowStore
from flowmesh.transport import Transport

NOTE_MIN_TTL = 60.0
"""Seconds a publish problem stays visible at least; the relay renews it on every retry, so
the note outlives a problem only by this much if every replica goes away."""

_MAX_PROBLEM_CHARS = 500


async def publish_outbox(
    transport: Transport,
    store: WorkflowStore,
    entries: Sequence[OutboxEntry],
    *,
    attempts: int,
    log: Any,
    crash: Callable[[str], None] = lambda _: None,
    clearer: OutboxClearer | None = None,
) -> bool:
    """Publish ``entries`` (confirmed) and forget those confirmed; True if all were.

    Each attempt publishes only what is still unconfirmed. Entries that fail every attempt
    stay in the store for :class:`OutboxRelay` (which is why receivers must tolerate
    duplicates), and the reason is noted for ``describe()``. With a ``clearer`` the
    confirmed entries are forgotten in a later batch shared with other steps.
    """
    if not entries:
        return True
    pending = list(entries)
    confirmed: list[OutboxEntry] = []
    failed: list[tuple[OutboxEntry, FlowmeshError]] = []
    for attempt in range(1, attempts + 1):
        outcomes = await transport.publish_each([entry.message for entry in pending])
        confirmed += (e for e, outcome in zip(pending, outcomes, strict=True) if outcome is None)
        failed = [(e, o) for e, o in zip(pending, outcomes, strict=True) if o is not None]
        if not failed:
            break
        log.warning(
            "outbox publish failed",
            attempt=attempt,
            failed=len(failed),
            of=len(entries),
            error=str(failed[0][1]),
        )
        pending = [entry for entry, _ in failed]
        if attempt < attempts:
            await asyncio.sleep(0.05 * attempt)
    if confirmed:
        crash("before_outbox_clear")
        await _forget(store, confirmed, clearer)
    if failed:
        notes = problem_notes(failed, retry_in=None, attempt=None)
        with contextlib.suppress(FlowmeshError):  # informative only; the entries are kept
            await store.note_publish_problems(notes, timedelta(seconds=NOTE_MIN_TTL))
    return not failed


async def _forget(
    store: WorkflowStore, entries: Sequence[OutboxEntry], clearer: OutboxClearer | None
) -> None:
    by_instance: dict[str, list[str]] = {}
    for entry in entries:
        by_instance.setdefault(entry.instance_id, []).append(entry.entry_id)
    if clearer is not None:
        for instance_id, entry_ids in by_instance.items():
            clearer.forget(instance_id, entry_ids)
        return
    await store.remove_outbox_many(list(by_instance.items()))


def problem_notes(
    failed: Sequence[tuple[OutboxEntry, FlowmeshError]],
    *,
    retry_in: float | None,
    attempt: int | None,
) -> list[tuple[str, str]]:
    """One note per instance, naming the first target app that failed and why, e.g.
    "cannot publish to app 'billing': ... ACCESS_REFUSED ...; retrying in 40s (attempt 4)"."""
    notes: dict[str, str] = {}
    for entry, error in failed:
        if entry.instance_id in notes:
            continue
        text = f"cannot publish to app {entry.message.app_id!r}: {error}"
        if len(text) > _MAX_PROBLEM_CHARS:
            text = text[: _MAX_PROBLEM_CHARS - 1] + "…"
        if retry_in is not None:
            text += f"; retrying in {retry_in:.0f}s"
        if attempt is not None:
            text += f" (attempt {attempt})"
        notes[entry.instance_id] = text
    return list(notes.items())


class OutboxClearer:
    """Forgets published outbox entries in batches: one store round trip serves many steps.

    Entries waiting here are already published; if the process dies before the batch is
    written, the relay republishes them and receivers drop the duplicates.
    """

    def __init__(self, store: WorkflowStore, *, log: Any, delay: float = 0.05) -> None:
        self._store = store
        self._log = log
        self._delay = delay
        self._pending: dict[str, list[str]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def forget(self, instance_id: str, entry_ids: Sequence[str]) -> None:
        """Queue ``entry_ids`` of ``instance_id`` for removal."""
        self._pending.setdefault(instance_id, []).extend(entry_ids)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="flowmesh-outbox-clear")

    def pending(self, instance_id: str) -> tuple[str, ...]:
        """Entries of ``instance_id`` still waiting; its next commit can clear them itself."""
        return tuple(self._pending.get(instance_id, ()))

    def cleared(self, instance_id: str, entry_ids: Sequence[str]) -> None:
        """A commit removed ``entry_ids``: nothing left to do for them."""
        done = set(entry_ids)
        left = [e for e in self._pending.get(instance_id, ()) if e not in done]
        if left:
            self._pending[instance_id] = left
        else:
            self._pending.pop(instance_id, None)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._delay)  # let concurrent steps join the batch
        await self.flush()

    async def flush(self) -> None:
        """Remove everything queued so far (also called on shutdown)."""
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                await self._store.remove_outbox_many(list(batch.items()))
            except Exception as exc:  # the relay republishes what stays behind
                self._log.warning("clearing published outbox entries failed", error=str(exc))


@dataclass(slots=True)
class _Tracked:
    """What this replica knows of one stored outbox entry (clock seconds)."""

    first_seen: float
    seen: float
    attempts: int = 0
    next_try: float = 0.0


class OutboxRelay:
    """Republishes outbox entries that stayed unpublished for a whole sweep interval.

    Entries seen for at least one interval were left behind by a crash, a broker outage or
    a target the broker refuses; fresh entries are left to the replica that committed them.

    Fair and bounded: each sweep reads the next window of ``batch`` instances (a cursor that
    wraps around), so instances that can never be published do not hide the others, and a
    failed entry waits ``interval * 2^(attempts-1)`` (at most ``max_backoff``, with jitter)
    before its next try, so a permanent failure costs one publish per backoff, not one per
    sweep. Confirmed entries are removed at once; siblings of a failed one are not sent again.

    The backoff is kept in memory per replica: it only decides how soon to try again, so a
    restart costs one early retry, and keeping it out of the store spares the store a write
    per failure. Every replica runs a relay, so a failing entry is tried by each.
    """

    def __init__(
        self,
        store: WorkflowStore,
        transport: Transport,
        clock: Clock,
        *,
        interval: float,
        log: Any,
        batch: int = 500,
        max_backoff: float = 300.0,
    ) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock
        self._interval = interval
        self._log = log
        self._batch = batch
        self._max_backoff = max(max_backoff, interval)
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._skip = 0
        """Instances of the outbox index before this sweep's window."""
        self._round_started = 0.0

    async def sweep(self) -> int:
        """One sweep over the next window of instances; returns how many entries it
        republished (confirmed)."""
        now = self._clock.now().timestamp()
        entries = await self._store.list_outbox(self._batch, skip=self._skip)
        if not entries and self._skip:
            self._new_round(now)  # past the end of the index: start over
            entries = await self._store.list_outbox(self._batch, skip=0)
        instances = list(dict.fromkeys(e.instance_id for e in entries))
        if len(entries) < self._batch:
            self._new_round(now)
        else:
            self._skip += len(instances)
        due = self._due(entries, set(instances), now)
        if not due:
            return 0
        outcomes = await self._transport.publish_each([e.message for e in due])
        confirmed = [e for e, outcome in zip(due, outcomes, strict=True) if outcome is None]
        failed = [(e, o) for e, o in zip(due, outcomes, strict=True) if o is not None]
        if confirmed:
            by_instance: dict[str, list[str]] = {}
            for entry in confirmed:
                by_instance.setdefault(entry.instance_id, []).append(entry.entry_id)
                self._tracked.pop((entry.instance_id, entry.entry_id), None)
            await self._store.remove_outbox_many(list(by_instance.items()))
            self._log.info(
                "republished outbox entries left by an earlier step", count=len(confirmed)
            )
        await self._note(confirmed, failed, now)
        return len(confirmed)

    def _due(
        self, entries: Sequence[OutboxEntry], window: set[str], now: float
    ) -> list[OutboxEntry]:
        """Entries older than one interval and out of backoff; forgets tracking of entries
        of the window's instances that are gone."""
        listed = {(e.instance_id, e.entry_id) for e in entries}
        for key in [k for k in self._tracked if k[0] in window and k not in listed]:
            del self._tracked[key]
        due = []
        for entry in entries:
            key = (entry.instance_id, entry.entry_id)
            tracked = self._tracked.get(key)
            if tracked is None:
                self._tracked[key] = _Tracked(first_seen=now, seen=now)
                continue
            tracked.seen = now
            if now - tracked.first_seen >= self._interval and now >= tracked.next_try:
                due.append(entry)
        return due

    def _new_round(self, now: float) -> None:
        """The cursor wraps: forget entries not seen during the round that ends (removed by
        their own replica's next commit, or purged)."""
        self._skip = 0
        started, self._round_started = self._round_started, now
        for key in [k for k, t in self._tracked.items() if t.seen < started]:
            del self._tracked[key]

    async def _note(
        self,
        confirmed: Sequence[OutboxEntry],
        failed: Sequence[tuple[OutboxEntry, FlowmeshError]],
        now: float,
    ) -> None:
        """Back off failed entries and note why for ``describe()``; clear the note of
        instances whose entries all went out."""
        longest = 0.0
        notes: list[tuple[str, str]] = []
        for entry, error in failed:
            tracked = self._tracked[(entry.instance_id, entry.entry_id)]
            tracked.attempts += 1
            delay = min(self._interval * 2 ** (tracked.attempts - 1), self._max_backoff)
            delay *= random.uniform(0.8, 1.2)  # replicas and instances drift apart
            tracked.next_try = now + delay
            longest = max(longest, delay)
            notes += problem_notes([(entry, error)], retry_in=delay, attempt=tracked.attempts)
        if failed:
            self._log.warning(
                "outbox entries not published; retried with backoff",
                count=len(failed),
                instances=len({e.instance_id for e, _ in failed}),
                error=str(failed[0][1]),
            )
        if confirmed:
            # An instance keeps its note while any of its entries waits in backoff.
            failing = {key[0] for key, tracked in self._tracked.items() if tracked.attempts}
            done = dict.fromkeys(e.instance_id for e in confirmed if e.instance_id not in failing)
            notes += [(instance_id, "") for instance_id in done]
        if not notes:
            return
        ttl = timedelta(seconds=max(NOTE_MIN_TTL, 2 * longest + 2 * self._interval))
        try:
            await self._store.note_publish_problems(list(dict(notes).items()), ttl)
        except FlowmeshError as exc:  # informative only
            self._log.warning("noting publish problems failed", error=str(exc))

    async def run(self) -> None:
        """Sweep forever (cancel to stop)."""
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.sweep()
            except Exception as exc:  # a sweeper must outlive any failure
                self._log.warning("outbox sweep failed", error=str(exc))
