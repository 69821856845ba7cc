"""Per-message outbox outcomes and a fair relay (invariant 11), on the in-process backend.

``MemoryBroker.refuse`` stands in for a target the broker refuses (outside the publishing
user's permissions); a virtual clock drives the relay's sweeps and backoff.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog

from flowmesh import ActivityContext, App, WorkerOptions, WorkflowContext
from flowmesh.cli._format import state_text
from flowmesh.model import WorkflowState, WorkflowStatus
from flowmesh.runtime._clock import VirtualClock
from flowmesh.runtime._outbox import OutboxRelay, publish_outbox
from flowmesh.store import Commit, OutboxEntry
from flowmesh.store.memory import MemoryStore
from flowmesh.testing import TestEnvironment
from flowmesh.transport import Outgoing, QueueKind
from flowmesh.transport.memory import MemoryBroker, MemoryTransport

INTERVAL = 5.0
LOG = structlog.get_logger("test")


def entry(instance_id: str, n: int, app_id: str = "acts") -> OutboxEntry:
    return OutboxEntry(
        instance_id,
        f"{instance_id}#{n}",
        Outgoing(app_id, QueueKind.WORK, b"%s#%d" % (instance_id.encode(), n)),
    )


async def stored(store: MemoryStore, instance_id: str, *entries: OutboxEntry) -> None:
    """Create ``instance_id`` with ``entries`` in its outbox."""
    state = WorkflowState(instance_id, store.app_id, "wf", WorkflowStatus.RUNNING, version=1)
    await store.commit(Commit(instance_id, 0, state, outbox=entries))


async def pending_ids(store: MemoryStore) -> list[str]:
    return [e.entry_id for e in await store.list_outbox(limit=10_000)]


class Relay:
    """A relay on a virtual clock: ``await relay.sweep_after(seconds)``."""

    def __init__(self, store: MemoryStore, transport: MemoryTransport, batch: int = 500) -> None:
        self.clock = VirtualClock()
        self.relay = OutboxRelay(
            store, transport, self.clock, interval=INTERVAL, log=LOG, batch=batch, max_backoff=60
        )

    async def sweep_after(self, seconds: float) -> int:
        self.clock.advance_to(self.clock.now() + timedelta(seconds=seconds))
        return await self.relay.sweep()


async def test_a_failed_message_stays_with_its_reason_and_its_siblings_are_forgotten() -> None:
    broker = MemoryBroker()
    broker.refuse("billing")
    transport, store = MemoryTransport(broker, user_id="fm-orders"), MemoryStore("orders")
    entries = (entry("wf-1", 0), entry("wf-1", 1, "billing"), entry("wf-1", 2))
    await stored(store, "wf-1", *entries)

    published = await publish_outbox(transport, store, entries, attempts=2, log=LOG)

    assert published is False
    assert await pending_ids(store) == ["wf-1#1"]
    assert (await transport.queue_stats("acts")).work_messages == 2  # each sibling once
    assert await store.publish_problem("wf-1") == (
        "cannot publish to app 'billing': user 'fm-orders' may not publish to app 'billing': "
        "access refused"
    )


async def test_the_relay_retries_only_the_failed_entry_with_growing_backoff() -> None:
    """Siblings published by the step are gone; the failed entry is retried after 5, 10, 20,
    40, 60, 60 s (± jitter), never once per sweep, and goes out once the target accepts it;
    then its note is cleared."""
    broker = MemoryBroker()
    broker.refuse("billing")
    transport, store = MemoryTransport(broker), MemoryStore("orders")
    entries = (entry("wf-1", 0), entry("wf-1", 1, "billing"))
    await stored(store, "wf-1", *entries)
    await publish_outbox(transport, store, entries, attempts=1, log=LOG)
    relay = Relay(store, transport)

    attempts: dict[int, int] = {}  # attempt -> the second its note first appeared
    for second in range(1, 241):
        await relay.sweep_after(1.0)
        problem = await store.publish_problem("wf-1")
        if "attempt" in problem:
            attempts.setdefault(int(problem.rpartition("attempt ")[2].rstrip(")")), second)
    gaps = [attempts[n + 1] - attempts[n] for n in sorted(attempts)[:-1]]
    assert sorted(attempts) == list(range(1, len(attempts) + 1))
    assert 5 <= len(attempts) <= 8, attempts
    for gap, nominal in zip(gaps, [5, 10, 20, 40, 60, 60], strict=False):
        assert 0.8 * nominal - 1 <= gap <= 1.2 * nominal + 1, (gaps, attempts)
    assert (await transport.queue_stats("acts")).work_messages == 1  # the sibling, once

    broker.refuse("billing", None)
    for _ in range(80):
        await relay.sweep_after(1.0)
    assert await pending_ids(store) == []
    assert (await transport.queue_stats("billing")).work_messages == 1
    assert await store.publish_problem("wf-1") == ""


async def test_the_relay_leaves_fresh_entries_to_the_replica_that_committed_them() -> None:
    transport, store = MemoryTransport(), MemoryStore("orders")
    await stored(store, "wf-1", entry("wf-1", 0))
    relay = Relay(store, transport)

    assert await relay.sweep_after(0.0) == 0
    assert await relay.sweep_after(INTERVAL - 1) == 0
    assert await relay.sweep_after(1) == 1
    assert await pending_ids(store) == []


async def test_instances_that_cannot_be_published_do_not_hide_the_others() -> None:
    """The first 20 instances (two windows of 10) target a refused app; 5 healthy instances
    come after them. The relay's cursor moves past the blocked windows, so the healthy
    entries go out within a few sweeps, each exactly once."""
    broker = MemoryBroker()
    broker.refuse("nowhere")
    transport, store = MemoryTransport(broker), MemoryStore("orders")
    for i in range(20):
        await stored(store, f"blocked-{i}", entry(f"blocked-{i}", 0, "nowhere"))
    for i in range(5):
        await stored(store, f"healthy-{i}", entry(f"healthy-{i}", 0))
    relay = Relay(store, transport, batch=10)

    sweeps = 0
    while any(i.startswith("healthy") for i in await pending_ids(store)):
        sweeps += 1
        assert sweeps <= 10, await pending_ids(store)
        await relay.sweep_after(INTERVAL)

    assert (await transport.queue_stats("acts")).work_messages == 5
    assert len(await pending_ids(store)) == 20


shop = App("shop")
billing = App("billing")


@shop.workflow
async def charge_then_ship(ctx: WorkflowContext, amount: int) -> str:
    charged = await ctx.call_activity("charge", amount, app_id="billing")
    return f"charged {charged}"


@billing.activity
def charge(ctx: ActivityContext, amount: int) -> int:
    return amount


async def test_describe_says_why_a_task_is_not_published_until_it_is() -> None:
    """A task for an app the broker refuses: ``describe()`` shows the reason (and the
    CLI's ``flowmesh status`` text), and once the broker accepts it the relay sends it and
    the workflow completes."""
    options = WorkerOptions(outbox_sweep_interval=0.2, outbox_max_backoff=0.4)
    async with TestEnvironment([shop, billing], time_skipping=False, options=options) as env:
        env.transport.broker.refuse("billing")
        handle = await env.client.start_workflow(charge_then_ship, 7, app_id="shop")
        state = await handle.describe()
        deadline = time.monotonic() + 5
        while "retrying" not in state.publish_problem and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            state = await handle.describe()
        assert state.publish_problem.startswith(
            "cannot publish to app 'billing': user '?' may not publish to app 'billing': "
            "access refused; retrying in "
        ), state.publish_problem
        assert "publishing:    cannot publish to app 'billing'" in state_text(state)

        env.transport.broker.refuse("billing", None)
        assert await handle.result(timeout=5) == "charged 7"
        assert (await handle.describe()).publish_problem == ""
