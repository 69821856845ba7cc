"""One behavioural suite run against every WorkflowStore: the in-memory and the Redis one.

The Redis variant uses a fresh app ID per test (so tests never see each other's keys) and
deletes that app's keys afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import redis.asyncio
import redis.exceptions

from flowmesh._errors import VersionConflictError
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityCompleted,
    ActivityScheduled,
    EventRaised,
    PendingTask,
    StepStarted,
    TimerCreated,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
)
from flowmesh.store import (
    MAX_WAITERS,
    Commit,
    HeldMessage,
    OutboxEntry,
    TimerEntry,
    Waiter,
    WorkflowStore,
)
from flowmesh.store import redis_function_library as library
from flowmesh.store.memory import MemoryStore
from flowmesh.store.redis import RedisStore, RedisStoreConfig, redis_client
from flowmesh.transport._base import Outgoing, QueueKind

StoreFactory = Callable[[], Awaitable[WorkflowStore]]
"""Opens another handle ("replica") on the same app's stored data."""

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.real_services),
        pytest.param("redis-sharded", marks=pytest.mark.real_services),
    ]
)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """A factory of stores sharing one fresh app's data (``redis-sharded``: the app's keys
    spread over 4 shards of the standalone Redis, as on a cluster)."""
    app_id = f"s-{uuid4().hex[:8]}"
    if request.param == "memory":
        shared = MemoryStore(app_id)

        async def same() -> WorkflowStore:
            return shared

        yield same
        return

    url: str = request.getfixturevalue("redis_url")
    shards = 4 if request.param == "redis-sharded" else None
    async with redis_stores(url, app_id, shards) as factory:
        yield factory


@asynccontextmanager
async def redis_stores(url: str, app_id: str, shards: int | None) -> AsyncIterator[StoreFactory]:
    """Stores of ``app_id`` on the Redis at ``url``; deletes the app's keys afterwards."""
    opened: list[RedisStore] = []

    async def connect() -> WorkflowStore:
        store = RedisStore(RedisStoreConfig(url=url, app_id=app_id, shards=shards), Codec())
        await store.connect()
        opened.append(store)
        return store

    try:
        yield connect
    finally:
        for store in opened:
            await store.close()
        await delete_app_keys(url, app_id)


async def delete_app_keys(url: str, app_id: str) -> None:
    """Delete every key of ``app_id`` (all shards) on a standalone Redis or a cluster."""
    config = RedisStoreConfig(url=url, app_id=app_id)
    client = redis_client(config)
    try:
        for pattern in (f"fm:{{{app_id}}}:*", f"fm:{{{app_id}#*}}:*"):
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for key in keys:  # one by one: on a cluster the keys live in many slots
                await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
async def store(stores: StoreFactory) -> WorkflowStore:
    """One store of a fresh app."""
    return await stores()


def state(
    instance_id: str, version: int, status: WorkflowStatus = WorkflowStatus.RUNNING, **extra: object
) -> WorkflowState:
    return WorkflowState(
        instance_id=instance_id,
        app_id="orders",
        name="checkout",
        status=status,
        version=version,
        **extra,  # type: ignore[arg-type]
    )


def message(body: bytes = b"task", message_id: str = "") -> Outgoing:
    return Outgoing(app_id="payments", kind=QueueKind.WORK, body=body, message_id=message_id)


def step(
    instance_id: str,
    expected: int,
    *events: object,
    status: WorkflowStatus = WorkflowStatus.RUNNING,
    **fields: object,
) -> Commit:
    """A commit advancing ``instance_id`` from version ``expected``."""
    return Commit(
        instance_id=instance_id,
        expected_version=expected,
        state=state(instance_id, expected + 1, status),
        append=events or (StepStarted(T0),),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def started(instance_id: str) -> WorkflowStarted:
    return WorkflowStarted(name="checkout", instance_id=instance_id, app_id="orders")


def waiter(name: str) -> Waiter:
    """Inbox ``name`` waiting with a correlation ID of its own."""
    return Waiter(f"fm.inbox.{name}", f"cid-{name}")


def timer(instance_id: str, seq: int, fire_at: datetime) -> TimerEntry:
    return TimerEntry(instance_id, seq, fire_at)


async def test_create_with_version_zero_then_load_returns_state_and_history(
    store: WorkflowStore,
) -> None:
    await store.commit(step("wf-1", 0, started("wf-1"), StepStarted(T0)))
    record = await store.load("wf-1")
    assert record is not None
    assert record.state == state("wf-1", 1)
    assert record.history == (started("wf-1"), StepStarted(T0))


async def test_load_of_unknown_instance_returns_none(store: WorkflowStore) -> None:
    assert await store.load("nope") is None
    assert await store.load_state("nope") is None


async def test_second_create_with_version_zero_conflicts(store: WorkflowStore) -> None:
    await store.commit(step("wf-1", 0, started("wf-1")))
    with pytest.raises(VersionConflictError):
        await store.commit(step("wf-1", 0, started("wf-1")))


async def test_append_with_correct_version_extends_history_and_replaces_state(
    store: WorkflowStore,
) -> None:
    await store.commit(step("wf-1", 0, started("wf-1")))
    scheduled = ActivityScheduled(seq=1, name="charge", app_id="payments", input={"eur": 5})
    await store.commit(step("wf-1", 1, scheduled))
    await store.commit(step("wf-1", 2, ActivityCompleted(seq=1, output="ok")))
    record = await store.load("wf-1")
    assert record is not None
    assert record.state.version == 3
    assert record.history == (started("wf-1"), scheduled, ActivityCompleted(seq=1, output="ok"))


async def test_stale_version_conflicts_and_writes_nothing(store: WorkflowStore) -> None:
    await store.commit(
        step(
            "wf-1",
            0,
            started("wf-1"),
            outbox=(OutboxEntry("wf-1", "e1", message()),),
            add_timers=(timer("wf-1", 1, T0),),
        )
    )
    await store.commit(step("wf-1", 1))
    before = (await store.load("wf-1"), await store.list_outbox(), await store.next_timer_at())

    stale = Commit(
        instance_id="wf-1",
        expected_version=1,
        state=state("wf-1", 2, WorkflowStatus.COMPLETED),
        append=(EventRaised("late"),),
        replace_history=True,
        outbox=(OutboxEntry("wf-1", "e2", message(b"other")),),
        add_timers=(timer("wf-1", 2, T0 - timedelta(hours=1)),),
        cancel_timers=(1,),
    )
    with pytest.raises(VersionConflictError):
        await store.commit(stale)

    after = (await store.load("wf-1"), await store.list_outbox(), await store.next_timer_at())
    assert after == before
    assert await store.list_instances(WorkflowStatus.COMPLETED) == []


async def test_of_concurrent_commits_with_the_same_version_exactly_one_wins(
    stores: StoreFactory,
) -> None:
    replicas = [await stores() for _ in range(2)]
    await replicas[0].commit(step("wf-1", 0, started("wf-1")))
    attempts = [
        replicas[i % 2].commit(step("wf-1", 1, EventRaised(f"writer-{i}"))) for i in range(20)
    ]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)

    winners = [i for i, outcome in enumerate(outcomes) if outcome == []]
    assert len(winners) == 1
    losers = [o for i, o in enumerate(outcomes) if i not in winners]
    assert all(isinstance(o, VersionConflictError) for o in losers)
    record = await replicas[0].load("wf-1")
    assert record is not None
    assert record.history == (started("wf-1"), EventRaised(f"writer-{winners[0]}"))
    assert record.state.version == 2


async def test_replace_history_replaces_the_history(store: WorkflowStore) -> None:
    await store.commit(step("wf-1", 0, started("wf-1"), StepStarted(T0)))
    fresh = WorkflowStarted(name="checkout", instance_id="wf-1", app_id="orders", input=2)
    await store.commit(step("wf-1", 1, fresh, replace_history=True))
    record = await store.load("wf-1")
    assert record is not None
    assert record.history == (fresh,)
    assert record.state.version == 2


async def test_outbox_entries_are_listed_then_removed_idempotently(store: WorkflowStore) -> None:
    first, second = message(b"one", message_id="m1"), message(b"two", message_id="m2")
    outbox = (OutboxEntry("wf-1", "e1", first), OutboxEntry("wf-1", "e2", second))
    await store.commit(step("wf-1", 0, started("wf-1"), outbox=outbox))
    assert await store.list_outbox() == list(outbox)

    await store.remove_outbox("wf-1", ["e1"])
    assert await store.list_outbox() == [outbox[1]]
    await store.remove_outbox("wf-1", ["e1", "e2", "never-existed"])
    await store.remove_outbox("wf-1", ["e1", "e2"])
    await store.remove_outbox("unknown-instance", ["e1"])
    assert await store.list_outbox() == []


async def test_outbox_lists_instances_by_oldest_pending_commit_each_in_commit_order(
    store: WorkflowStore,
) -> None:
    def entry(instance_id: str, entry_id: str) -> OutboxEntry:
        return OutboxEntry(instance_id, entry_id, message(entry_id.encode()))

    # Entry IDs are chosen to sort against the commit order, so a store sorting by ID fails.
    await store.commit(step("b", 0, outbox=(entry("b", "z1"), entry("b", "y2"))))
    await store.commit(step("a", 0, outbox=(entry("a", "x1"),)))
    await store.commit(step("b", 1, outbox=(entry("b", "a3"),)))
    expected = [entry("b", "z1"), entry("b", "y2"), entry("b", "a3"), entry("a", "x1")]
    assert await store.list_outbox() == expected
    assert await store.list_outbox(limit=2) == expected[:2]
    assert await store.list_outbox(limit=0) == []

    # Once b's backlog is published, b's next entry queues behind a's.
    await store.remove_outbox("b", ["z1", "y2", "a3"])
    await store.commit(step("b", 2, outbox=(entry("b", "b4"),)))
    assert await store.list_outbox() == [entry("a", "x1"), entry("b", "b4")]


async def test_outbox_listing_skips_the_first_instances_so_a_sweeper_can_move_on(
    store: WorkflowStore,
) -> None:
    """``skip`` counts instances, not entries: a relay's cursor moves past instances it
    cannot publish for, and past the end the listing is empty."""
    for instance_id in ("p", "q", "r"):
        entries = tuple(
            OutboxEntry(instance_id, f"{instance_id}{n}", message(b"%d" % n)) for n in range(2)
        )
        await store.commit(step(instance_id, 0, outbox=entries))

    assert [e.entry_id for e in await store.list_outbox(skip=1)] == ["q0", "q1", "r0", "r1"]
    assert [e.entry_id for e in await store.list_outbox(limit=1, skip=2)] == ["r0"]
    assert await store.list_outbox(skip=3) == []


async def test_publish_problems_are_noted_read_forgotten_and_expire(
    store: WorkflowStore,
) -> None:
    assert await store.publish_problem("wf-1") == ""
    await store.note_publish_problems(
        [("wf-1", "cannot publish to app 'x': access refused"), ("wf-2", "other")],
        timedelta(seconds=60),
    )
    assert await store.publish_problem("wf-1") == "cannot publish to app 'x': access refused"
    assert await store.publish_problem("wf-2") == "other"

    await store.note_publish_problems([("wf-1", "")], timedelta(seconds=60))
    await store.note_publish_problems([], timedelta(seconds=60))
    assert await store.publish_problem("wf-1") == ""
    assert await store.publish_problem("wf-2") == "other"

    await store.note_publish_problems([("wf-3", "brief")], timedelta(seconds=1))
    await asyncio.sleep(1.1)
    assert await store.publish_problem("wf-3") == ""


async def test_due_timers_are_claimed_and_not_due_ones_are_not(store: WorkflowStore) -> None:
    timers = (timer("wf-1", 1, T0), timer("wf-1", 2, T0 + timedelta(minutes=5)))
    await store.commit(step("wf-1", 0, add_timers=timers))
    await store.commit(step("wf-2", 0, add_timers=(timer("wf-2", 7, T0 - timedelta(days=1)),)))

    assert await store.claim_due_timers(T0 - timedelta(days=2), LEASE) == []
    claimed = await store.claim_due_timers(T0, LEASE)
    assert claimed == [timer("wf-2", 7, T0 - timedelta(days=1)), timer("wf-1", 1, T0)]


async def test_claim_respects_its_limit(store: WorkflowStore) -> None:
    timers = tuple(timer("wf-1", seq, T0 + timedelta(seconds=seq)) for seq in range(5))
    await store.commit(step("wf-1", 0, add_timers=timers))
    claimed = await store.claim_due_timers(T0 + timedelta(minutes=1), LEASE, limit=3)
    assert claimed == list(timers[:3])
    assert await store.claim_due_timers(T0 + timedelta(minutes=1), LEASE, limit=0) == []


async def test_claimed_timer_is_not_claimed_again_within_the_lease_but_is_after_it(
    store: WorkflowStore,
) -> None:
    await store.commit(step("wf-1", 0, add_timers=(timer("wf-1", 1, T0),)))
    assert await store.claim_due_timers(T0, LEASE) == [timer("wf-1", 1, T0)]
    assert await store.claim_due_timers(T0 + LEASE - timedelta(milliseconds=1), LEASE) == []
    # Reclaimed after the lease, still reporting the fire time the workflow asked for.
    assert await store.claim_due_timers(T0 + LEASE, LEASE) == [timer("wf-1", 1, T0)]


async def test_cancelling_a_timer_in_a_commit_removes_it(store: WorkflowStore) -> None:
    await store.commit(step("wf-1", 0, add_timers=(timer("wf-1", 1, T0), timer("wf-1", 2, T0))))
    await store.claim_due_timers(T0, LEASE)
    await store.commit(step("wf-1", 1, cancel_timers=(1, 99)))
    assert await store.claim_due_timers(T0 + LEASE * 2, LEASE) == [timer("wf-1", 2, T0)]


async def test_adding_a_timer_again_replaces_its_fire_time(store: WorkflowStore) -> None:
    await store.commit(step("wf-1", 0, add_timers=(timer("wf-1", 1, T0),)))
    later = T0 + timedelta(hours=1)
    await store.commit(step("wf-1", 1, add_timers=(timer("wf-1", 1, later),)))
    assert await store.claim_due_timers(T0, LEASE) == []
    assert await store.next_timer_at() == later
    assert await store.claim_due_timers(later, LEASE) == [timer("wf-1", 1, later)]


async def test_next_timer_at_is_the_earliest_claimable_time(store: WorkflowStore) -> None:
    assert await store.next_timer_at() is None
    later = T0 + timedelta(hours=1)
    await store.commit(step("wf-1", 0, add_timers=(timer("wf-1", 1, later), timer("wf-1", 2, T0))))
    assert await store.next_timer_at() == T0
    await store.claim_due_timers(T0, timedelta(hours=2))
    assert await store.next_timer_at() == later
    await store.commit(step("wf-1", 1, cancel_timers=(1, 2)))
    assert await store.next_timer_at() is None


async def test_timer_due_times_are_rounded_up_to_the_millisecond(store: WorkflowStore) -> None:
    """A timer fires late by less than a millisecond, never early: the store keeps its due
    time as fire_at rounded up to the millisecond (history keeps the microseconds)."""
    precise = T0 + timedelta(microseconds=123_456)
    await store.commit(step("wf-1", 0, add_timers=(timer("wf-1", 1, precise),)))
    assert await store.next_timer_at() == T0 + timedelta(milliseconds=124)
    assert await store.claim_due_timers(precise, LEASE) == []
    [claimed] = await store.claim_due_timers(T0 + timedelta(milliseconds=124), LEASE)
    assert claimed.fire_at == T0 + timedelta(milliseconds=124)
    assert claimed.fire_at.tzinfo is not None


async def test_a_400_day_timer_is_stored_exactly_and_fires_only_when_due(
    store: WorkflowStore,
) -> None:
    """Nothing in the store limits a timer's length: one 400 days (and a few ms) ahead keeps
    its exact millisecond (a Redis score is a double, exact for integers below 2^53 ms, i.e.
    beyond the model's year-9000 bound) and is claimed then, not a millisecond before."""
    fire_at = T0 + timedelta(days=400, milliseconds=7)
    await store.commit(step("wf-1", 0, add_timers=(timer("wf-1", 1, fire_at),)))
    assert await store.next_timer_at() == fire_at
    assert await store.claim_due_timers(fire_at - timedelta(milliseconds=1), LEASE) == []
    assert await store.claim_due_timers(fire_at, LEASE) == [timer("wf-1", 1, fire_at)]
    far = datetime(8999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)  # just below the bound
    await store.commit(step("wf-1", 1, cancel_timers=(1,)))
    await store.commit(step("wf-2", 0, add_timers=(timer("wf-2", 1, far),)))
    assert await store.claim_due_timers(far - timedelta(milliseconds=1), LEASE) == []
    assert await store.claim_due_timers(far, LEASE) == [timer("wf-2", 1, far)]


async def test_load_history_reads_a_slice_with_its_run_and_whether_more_follow(
    store: WorkflowStore,
) -> None:
    """load_history(start, limit) returns events start..start+limit-1, the run, and ``more``
    when the history goes on; None for an unknown (or purged) instance."""
    events = [StepStarted(T0 + timedelta(seconds=i)) for i in range(5)]
    await store.commit(Commit("wf-1", 0, state("wf-1", 1, run_id="run-a"), append=tuple(events)))
    first = await store.load_history("wf-1", 0, 2)
    assert first is not None
    assert (first.run_id, first.events, first.more) == ("run-a", tuple(events[:2]), True)
    last = await store.load_history("wf-1", 3, 2)
    assert last is not None and (last.events, last.more) == (tuple(events[3:]), False)
    beyond = await store.load_history("wf-1", 9, 2)
    assert beyond is not None and (beyond.events, beyond.more) == ((), False)
    assert await store.load_history("nobody", 0, 2) is None
    await store.purge("wf-1")
    assert await store.load_history("wf-1", 0, 2) is None


async def test_replicas_claiming_concurrently_never_get_the_same_timer_within_the_lease(
    stores: StoreFactory,
) -> None:
    replicas = [await stores() for _ in range(2)]
    timers = tuple(timer(f"wf-{n}", seq, T0) for n in range(10) for seq in range(5))
    for n in range(10):
        await replicas[0].commit(step(f"wf-{n}", 0, add_timers=timers[n * 5 : n * 5 + 5]))

    claims = [replicas[i % 2].claim_due_timers(T0, LEASE, limit=7) for i in range(10)]
    claimed = [entry for batch in await asyncio.gather(*claims) for entry in batch]
    assert sorted(claimed, key=lambda t: (t.instance_id, t.seq)) == list(timers)


async def test_add_waiter_to_running_instance_returns_state_and_take_returns_addresses(
    store: WorkflowStore,
) -> None:
    await store.commit(step("wf-1", 0, started("wf-1")))
    assert await store.add_waiter("wf-1", waiter("b")) == state("wf-1", 1)
    assert await store.add_waiter("wf-1", waiter("a")) == state("wf-1", 1)
    assert await store.add_waiter("wf-1", waiter("a")) == state("wf-1", 1)
    assert sorted(await store.take_waiters("wf-1")) == [waiter("a"), waiter("b")]
    assert await store.take_waiters("wf-1") == []


async def test_waiters_keep_their_correlation_ids_one_per_pair(store: WorkflowStore) -> None:
    """One inbox waiting under two correlation IDs is two waiters, each answered with its own
    ID; re-registering the same pair (a client re-asking) adds nothing."""
    await store.commit(step("wf-1", 0, started("wf-1")))
    first, second = Waiter("fm.inbox.a", "c1"), Waiter("fm.inbox.a", "c2")
    for registered in (second, first, second):
        await store.add_waiter("wf-1", registered)
    done = step("wf-1", 1, status=WorkflowStatus.COMPLETED, take_waiters=True)
    assert await store.commit(done) == [first, second]


async def test_an_instance_keeps_at_most_max_waiters_and_always_the_newest(
    store: WorkflowStore,
) -> None:
    """Waiters are bounded: past MAX_WAITERS an earlier one is dropped (its client re-asks),
    never the one just added."""
    await store.commit(step("wf-1", 0, started("wf-1")))
    for n in range(MAX_WAITERS + 5):
        await store.add_waiter("wf-1", waiter(f"{n:04}"))
    await store.add_waiter("wf-1", waiter("0001"))  # kept or dropped, still within the bound
    kept = await store.take_waiters("wf-1")
    assert len(kept) == MAX_WAITERS
    assert waiter(f"{MAX_WAITERS + 4:04}") in kept
    assert waiter("0001") in kept


@pytest.mark.parametrize("final", [WorkflowStatus.FAILED, WorkflowStatus.STALLED])
async def test_add_waiter_to_finished_or_stalled_instance_returns_its_state_and_stores_nothing(
    store: WorkflowStore, final: WorkflowStatus
) -> None:
    """A stalled instance is answered at once too (it needs a fix and a deployment, not a
    wait), so no waiter is left stored for it."""
    await store.commit(step("wf-1", 0, started("wf-1")))
    await store.commit(step("wf-1", 1, status=final))
    finished = await store.add_waiter("wf-1", waiter("a"))
    assert finished == state("wf-1", 2, final)
    assert await store.take_waiters("wf-1") == []


async def test_add_waiter_to_missing_instance_returns_none(store: WorkflowStore) -> None:
    assert await store.add_waiter("nope", waiter("a")) is None
    assert await store.take_waiters("nope") == []


async def test_purge_removes_everything_and_returns_false_the_second_time(
    store: WorkflowStore,
) -> None:
    await store.commit(
        step(
            "wf-1",
            0,
            started("wf-1"),
            outbox=(OutboxEntry("wf-1", "e1", message()),),
            add_timers=(timer("wf-1", 1, T0),),
        )
    )
    await store.add_waiter("wf-1", waiter("a"))
    await store.commit(step("wf-2", 0, add_timers=(timer("wf-2", 1, T0 + LEASE),)))

    assert await store.purge("wf-1") is True
    assert await store.load("wf-1") is None
    assert await store.load_state("wf-1") is None
    assert await store.list_outbox() == []
    assert await store.claim_due_timers(T0, LEASE) == []
    assert await store.take_waiters("wf-1") == []
    assert [s.instance_id for s in await store.list_instances()] == ["wf-2"]
    assert await store.purge("wf-1") is False
    # The ID is free again, and a new run continues the version numbering: a writer that
    # still counts from 0 (or holds a view of the purged run) conflicts.
    with pytest.raises(VersionConflictError) as conflict:
        await store.commit(step("wf-1", 0, started("wf-1")))
    assert conflict.value.stored_version == 1
    await store.commit(step("wf-1", 1, started("wf-1")))
    assert (await store.load_state("wf-1")) == state("wf-1", 2)


async def test_a_commit_for_another_run_conflicts_even_at_the_same_version(
    store: WorkflowStore,
) -> None:
    """Runs are fenced: the stored run must be the one the step was computed for."""
    first = Commit("wf-1", 0, state("wf-1", 1, run_id="run-a"), append=(started("wf-1"),))
    await store.commit(first)
    stale = Commit("wf-1", 1, state("wf-1", 2, run_id="run-b"), expected_run_id="run-b")
    with pytest.raises(VersionConflictError):
        await store.commit(stale)
    assert (await store.load_state("wf-1")) == state("wf-1", 1, run_id="run-a")
    await store.commit(Commit("wf-1", 1, state("wf-1", 2, run_id="run-a"), expected_run_id="run-a"))


def held(body: bytes, at: datetime, user: str = "") -> HeldMessage:
    return HeldMessage(body, at, user, f"m-{body.decode()}")


async def test_messages_are_held_for_an_instance_until_the_creating_commit_takes_them(
    store: WorkflowStore,
) -> None:
    assert await store.hold("wf-1", held(b"e1", T0, "alice")) is True
    assert await store.hold("wf-1", held(b"e2", T0 + LEASE)) is True
    assert await store.held("wf-1") == [held(b"e1", T0, "alice"), held(b"e2", T0 + LEASE)]
    # Creating without applying them conflicts (they would be left behind) ...
    with pytest.raises(VersionConflictError):
        await store.commit(step("wf-1", 0, started("wf-1")))
    with pytest.raises(VersionConflictError):
        await store.commit(step("wf-1", 0, started("wf-1"), take_held=1))
    # ... applying exactly what is held creates the instance and forgets them.
    await store.commit(step("wf-1", 0, started("wf-1"), take_held=2))
    assert await store.held("wf-1") == []
    assert await store.expired_held(T0 + LEASE * 10) == []
    # Once the instance exists nothing more is held: the caller applies the message to it.
    assert await store.hold("wf-1", held(b"e3", T0)) is False
    assert await store.held("wf-1") == []


async def test_held_messages_past_their_bound_are_listed_and_dropped_by_arrival(
    store: WorkflowStore,
) -> None:
    await store.hold("old", held(b"o1", T0))
    await store.hold("old", held(b"o2", T0 + LEASE * 2))
    await store.hold("new", held(b"n1", T0 + LEASE * 3))
    expired = await store.expired_held(T0 + LEASE)
    assert expired == [("old", [held(b"o1", T0), held(b"o2", T0 + LEASE * 2)])]
    await store.drop_held("old", T0 + LEASE)
    await store.drop_held("old", T0 + LEASE)  # idempotent
    assert await store.held("old") == [held(b"o2", T0 + LEASE * 2)]
    # The oldest message left decides when the instance expires next.
    assert await store.expired_held(T0 + LEASE * 2) == []
    assert [i for i, _ in await store.expired_held(T0 + LEASE * 4)] == ["old", "new"]
    assert await store.expired_held(T0 + LEASE * 4, limit=1) == [
        ("old", [held(b"o2", T0 + LEASE * 2)])
    ]
    await store.drop_held("old", T0 + LEASE * 4)
    assert await store.held("old") == []
    assert [i for i, _ in await store.expired_held(T0 + LEASE * 4)] == ["new"]


async def test_timers_carry_the_run_that_created_them(store: WorkflowStore) -> None:
    await store.commit(step("wf-1", 0, add_timers=(TimerEntry("wf-1", 1, T0, "run-a"),)))
    assert await store.claim_due_timers(T0, LEASE) == [TimerEntry("wf-1", 1, T0, "run-a")]


async def test_list_instances_filters_by_status_newest_first(store: WorkflowStore) -> None:
    await store.commit(step("a", 0))
    await store.commit(step("b", 0))
    await store.commit(step("c", 0))
    await store.commit(step("a", 1, status=WorkflowStatus.COMPLETED))
    await store.commit(step("c", 1, status=WorkflowStatus.SUSPENDED))
    await store.commit(step("c", 2, status=WorkflowStatus.COMPLETED))

    assert [s.instance_id for s in await store.list_instances()] == ["c", "b", "a"]
    assert [s.instance_id for s in await store.list_instances(limit=2)] == ["c", "b"]
    completed = await store.list_instances(WorkflowStatus.COMPLETED)
    assert [(s.instance_id, s.version) for s in completed] == [("c", 3), ("a", 2)]
    assert [s.instance_id for s in await store.list_instances(WorkflowStatus.RUNNING)] == ["b"]
    assert await store.list_instances(WorkflowStatus.SUSPENDED) == []
    assert await store.list_instances(limit=0) == []


async def test_load_state_equals_the_state_load_returns(store: WorkflowStore) -> None:
    await store.commit(step("wf-1", 0, started("wf-1")))
    await store.commit(step("wf-1", 1, status=WorkflowStatus.SUSPENDED))
    record = await store.load("wf-1")
    assert record is not None
    assert await store.load_state("wf-1") == record.state


async def test_bytes_unicode_and_nested_values_survive_the_store(store: WorkflowStore) -> None:
    value = {
        "raw": b"\x00\xff\xfe",
        "text": "héllo ✓ 日本 \U0001f680",
        "nested": {"list": [1, -(2**63), 2.5, None, True, {"deep": ["x", b""]}], "empty": {}},
    }
    rich_state = state(
        "wf-1",
        1,
        input=value,
        custom_status={"phase": "ünïcode"},
        created_at=T0,
        waiting_on=(PendingTask("timer", "nap", seq=3, since=T0),),
    )
    body = b"\x80\x81 not utf-8 \xc3\x28"
    outgoing = Outgoing("payments", QueueKind.REPLY, body, "m-1", "inbox.ü", "corr-✓")
    commit = Commit(
        instance_id="wf-1",
        expected_version=0,
        state=rich_state,
        append=(
            WorkflowStarted("checkout", "wf-1", "orders", input=value),
            TimerCreated(seq=3, fire_at=T0),
            EventRaised("data", value),
        ),
        outbox=(OutboxEntry("wf-1", "e-1", outgoing),),
    )
    await store.commit(commit)
    record = await store.load("wf-1")
    assert record is not None
    assert record.state == rich_state
    assert record.history == commit.append
    assert await store.list_outbox() == [OutboxEntry("wf-1", "e-1", outgoing)]


async def test_malformed_commits_are_rejected_before_touching_the_store(
    store: WorkflowStore,
) -> None:
    with pytest.raises(ValueError, match="expected_version \\+ 1"):
        await store.commit(Commit("wf-1", 0, state("wf-1", 5)))
    with pytest.raises(ValueError, match="state of 'other'"):
        await store.commit(Commit("wf-1", 0, state("other", 1)))
    with pytest.raises(ValueError, match="TimerEntry of 'other'"):
        await store.commit(step("wf-1", 0, add_timers=(timer("other", 1, T0),)))
    with pytest.raises(ValueError, match="invalid instance ID"):
        await store.commit(step("bad|id", 0))
    assert await store.list_instances() == []


async def test_remove_outbox_many_forgets_entries_of_several_instances_at_once(
    store: WorkflowStore,
) -> None:
    """One call clears published entries of many instances; unknown IDs are ignored."""
    for instance_id in ("batch-a", "batch-b"):
        await store.commit(
            Commit(
                instance_id,
                0,
                state(instance_id, 1),
                outbox=(
                    OutboxEntry(instance_id, "1:0", message(b"x")),
                    OutboxEntry(instance_id, "1:1", message(b"y")),
                ),
            )
        )
    await store.remove_outbox_many(
        [("batch-a", ["1:0", "1:1"]), ("batch-b", ["1:0", "nope"]), ("ghost", ["1:0"])]
    )
    left = [(e.instance_id, e.entry_id) for e in await store.list_outbox()]
    assert left == [("batch-b", "1:1")]


async def test_a_commit_can_clear_earlier_published_outbox_entries(store: WorkflowStore) -> None:
    """clear_outbox removes the instance's earlier entries in the same atomic commit."""
    first = (
        OutboxEntry("fold-a", "1:0", message(b"x")),
        OutboxEntry("fold-a", "1:1", message(b"y")),
    )
    await store.commit(Commit("fold-a", 0, state("fold-a", 1), outbox=first))
    await store.commit(
        Commit(
            "fold-a",
            1,
            state("fold-a", 2),
            outbox=(OutboxEntry("fold-a", "2:0", message(b"z")),),
            clear_outbox=("1:0", "1:1", "unknown"),
        )
    )
    assert [e.entry_id for e in await store.list_outbox()] == ["2:0"]
    await store.commit(Commit("fold-a", 2, state("fold-a", 3), clear_outbox=("2:0",)))
    assert await store.list_outbox() == []


async def test_a_commit_taking_waiters_returns_them_sorted_and_removes_them(
    store: WorkflowStore,
) -> None:
    assert await store.commit(step("wf-1", 0, started("wf-1"), take_waiters=True)) == []
    for name in ("b", "c", "a"):
        await store.add_waiter("wf-1", waiter(name))
    taken = await store.commit(step("wf-1", 1, take_waiters=True))
    assert taken == [waiter("a"), waiter("b"), waiter("c")]
    assert await store.commit(step("wf-1", 2, take_waiters=True)) == []
    assert await store.take_waiters("wf-1") == []
    state_now = await store.load_state("wf-1")
    assert state_now is not None
    assert state_now.version == 3


async def test_a_commit_not_taking_waiters_returns_none_of_them_and_leaves_them(
    store: WorkflowStore,
) -> None:
    await store.commit(step("wf-1", 0, started("wf-1")))
    await store.add_waiter("wf-1", waiter("b"))
    await store.add_waiter("wf-1", waiter("a"))
    assert await store.commit(step("wf-1", 1)) == []
    assert await store.take_waiters("wf-1") == [waiter("a"), waiter("b")]


async def test_a_conflicting_commit_taking_waiters_leaves_them_in_place(
    store: WorkflowStore,
) -> None:
    await store.commit(step("wf-1", 0, started("wf-1")))
    await store.commit(step("wf-1", 1))
    await store.add_waiter("wf-1", waiter("a"))
    with pytest.raises(VersionConflictError):
        await store.commit(step("wf-1", 1, status=WorkflowStatus.COMPLETED, take_waiters=True))
    with pytest.raises(VersionConflictError):
        await store.commit(step("wf-2", 3, take_waiters=True))  # absent instance
    assert await store.take_waiters("wf-1") == [waiter("a")]


async def test_no_waiter_is_added_after_the_commit_that_finished_the_instance_took_them(
    store: WorkflowStore,
) -> None:
    """A waiter is either taken by the finishing commit or sees the finished state."""
    await store.commit(step("wf-1", 0, started("wf-1")))
    await store.add_waiter("wf-1", waiter("a"))
    done = step("wf-1", 1, status=WorkflowStatus.COMPLETED, take_waiters=True)
    assert await store.commit(done) == [waiter("a")]
    assert await store.add_waiter("wf-1", waiter("b")) == done.state
    assert await store.take_waiters("wf-1") == []


async def test_remove_outbox_many_over_several_chunks_removes_exactly_the_listed_entries(
    store: WorkflowStore,
) -> None:
    """450 instances (more than one batch of the Redis script), one with 9000 entries (more
    than Lua can unpack at once).

    Every instance loses e0 and e1 (and unknown IDs are ignored); even-numbered ones lose e2
    as well, so only the odd ones stay listed, each with e2 alone, in their original order.
    """
    ids = [f"ob-{n:03}" for n in range(450)]
    big = tuple(OutboxEntry(ids[0], f"big-{n}", message(b"b")) for n in range(9000))
    for n, instance_id in enumerate(ids):
        entries = tuple(OutboxEntry(instance_id, f"e{k}", message(b"%d" % k)) for k in range(3))
        await store.commit(step(instance_id, 0, outbox=(*entries, *(big if n == 0 else ()))))

    batch: list[tuple[str, list[str]]] = [("ghost", ["e0"])]
    for n, instance_id in enumerate(ids):
        removed = ["e0", "nope", "e1"] + (["e2"] if n % 2 == 0 else [])
        if n == 0:
            removed += [entry.entry_id for entry in big[:-1]]
        batch.append((instance_id, removed))
    batch.append((ids[3], []))
    await store.remove_outbox_many(batch)

    left = [(e.instance_id, e.entry_id) for e in await store.list_outbox(limit=10_000)]
    assert left == [(ids[0], "big-8999")] + [(i, "e2") for i in ids[1::2]]
    await store.remove_outbox_many([(ids[0], ["big-8999"]), (ids[1], ["e2"])])
    left = [(e.instance_id, e.entry_id) for e in await store.list_outbox(limit=10_000)]
    assert left == [(i, "e2") for i in ids[3::2]]


async def _forget_functions(store: WorkflowStore) -> None:
    """What a restart of a Redis without persistence does to the store's server-side code:
    ``FUNCTION DELETE`` of its library (nothing for other stores).

    A least-privilege user (tests/security runs this suite as one) may not delete it, nor load
    it again: such a user relies on the library ``flowmesh security apply`` loaded, which
    Redis persists, so for it there is nothing to forget.
    """
    if not isinstance(store, RedisStore):
        return
    client = redis_client(store.config)
    try:
        await client.function_delete(library().name)  # type: ignore[misc]  # redis-py types it for both clients
    except redis.exceptions.NoPermissionError:
        pass
    except redis.exceptions.ResponseError as exc:
        if "library not found" not in str(exc).lower():
            raise
    finally:
        await client.aclose()


async def test_commits_and_outbox_removal_survive_a_lost_function_library(
    store: WorkflowStore,
) -> None:
    """The Redis store loads its function library again where it may; the memory store has
    none to lose, and must give the same answers."""
    ids = [f"fl-{n:03}" for n in range(250)]
    for instance_id in ids:
        outbox = (
            OutboxEntry(instance_id, "e0", message()),
            OutboxEntry(instance_id, "e1", message()),
        )
        await store.commit(step(instance_id, 0, outbox=outbox))
    await store.add_waiter(ids[0], waiter("a"))

    await _forget_functions(store)
    assert await store.commit(step(ids[0], 1, take_waiters=True)) == [waiter("a")]
    await _forget_functions(store)
    await store.remove_outbox_many([(instance_id, ["e0"]) for instance_id in ids])  # 2 chunks
    await _forget_functions(store)
    await store.remove_outbox_many([(ids[0], ["e1"])])  # 1 chunk
    left = [(e.instance_id, e.entry_id) for e in await store.list_outbox(limit=1000)]
    assert left == [(instance_id, "e1") for instance_id in ids[1:]]
