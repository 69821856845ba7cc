"""Publishing committed outbox entries, and sweeping up entries a crash left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from flowmesh._errors import FlowmeshError
from flowmesh.runtime._clock import Clock
from flowmesh.store import OutboxEntry, WorkflowStore
from flowmesh.transport import Transport


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
    """Publish ``entries`` (confirmed) and forget them; True on success.

    On failure the entries stay in the store and :class:`OutboxRelay` publishes them later,
    which is why receivers must tolerate duplicates. With a ``clearer`` the entries are
    forgotten in a later batch shared with other steps.
    """
    if not entries:
        return True
    for attempt in range(1, attempts + 1):
        try:
            await transport.publish([entry.message for entry in entries])
            break
        except FlowmeshError as exc:
            log.warning("outbox publish failed", attempt=attempt, error=str(exc))
            if attempt == attempts:
                return False
            await asyncio.sleep(0.05 * attempt)
    crash("before_outbox_clear")
    by_instance: dict[str, list[str]] = {}
    for entry in entries:
        by_instance.setdefault(entry.instance_id, []).append(entry.entry_id)
    if clearer is not None:
        for instance_id, entry_ids in by_instance.items():
            clearer.forget(instance_id, entry_ids)
        return True
    await store.remove_outbox_many(list(by_instance.items()))
    return True


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


class OutboxRelay:
    """Republishes outbox entries that stayed unpublished for a whole sweep interval.

    Entries seen in two consecutive sweeps were left behind by a crash or a broker outage
    between commit and publish; fresh entries are left to the replica that committed them.
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
    ) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock
        self._interval = interval
        self._log = log
        self._batch = batch
        self._seen: set[tuple[str, str]] = set()

    async def sweep(self) -> int:
        """One sweep; returns how many entries it republished."""
        entries = await self._store.list_outbox(self._batch)
        stale = [e for e in entries if (e.instance_id, e.entry_id) in self._seen]
        self._seen = {(e.instance_id, e.entry_id) for e in entries} - {
            (e.instance_id, e.entry_id) for e in stale
        }
        if stale and await publish_outbox(
            self._transport, self._store, stale, attempts=1, log=self._log
        ):
            self._log.info("republished outbox entries left by an earlier step", count=len(stale))
            return len(stale)
        return 0

    async def run(self) -> None:
        """Sweep forever (cancel to stop)."""
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.sweep()
            except Exception as exc:  # a sweeper must outlive any failure
                self._log.warning("outbox sweep failed", error=str(exc))
