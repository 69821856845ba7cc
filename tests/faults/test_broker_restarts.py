"""Fault 3: the broker goes away under load, and comes back by itself.

A private RabbitMQ node (the shared one serves everybody else) carries 500 ``chain(3)``
workflows for 2 ``fault-host`` and 2 ``fault-act`` replicas. Mid-run the node is taken away:

* ``stop_app``/``start_app``: the broker closes every connection and refuses new ones for 5 s;
  queues and messages stay.
* SIGKILL of the whole node, then a start on the same data dir: no goodbye on any connection;
  what the broker had confirmed (persistent messages in quorum queues) survives, publishes in
  flight are lost and must be retried by the runtime: the orchestrator commits its outbox
  before publishing and the outbox relay republishes what a failed publish left behind.

Nothing restarts the workers: their robust connections reconnect and restore their consumers.
Every workflow must complete exactly once (ledger), and every worker must still be running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flowmesh import Client, ClientOptions, FlowmeshError, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.model import StepStarted, TimerCreated, TimerFired
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.faults.apps import chain_result
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.servers import PrivateRabbitMQ, PrivateRedis

pytestmark = [pytest.mark.real_services, pytest.mark.slow, pytest.mark.timeout(240)]

APPS = "tests.faults.apps"
PREFIX = "fmfault"
WORKFLOWS = 500
STEPS = 3
OUTAGE_SECONDS = 5.0
TIMER_LEASE_SECONDS = 30.0
"""WorkerOptions.timer_lease: a timer whose claim is waited out fires at least this late."""
CATCH_UP_SECONDS = 18.0
"""How much later than the outage's end a timer may fire: reconnect, a settle stuck on the
dead connection (bounded by the 10 s operation timeout), the backlog."""


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    """A private RabbitMQ node, stopped (and its processes killed) after the test."""
    with PrivateRabbitMQ(tmp_path / "rabbitmq") as node:
        yield node


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis (this test leaves it alone; it only keeps the shared one clean)."""
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def fleet(
    rabbit: PrivateRabbitMQ,
    private_redis: PrivateRedis,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcesses]:
    """Worker processes wired to the private servers; stopped before the servers are."""
    services = Services(rabbit.url, private_redis.url, PREFIX, "/")
    processes = WorkerProcesses(services, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(processes.logs())
            print(f"--- private RabbitMQ {rabbit.node} ---\n{rabbit.log_tail()}")


@pytest.fixture
async def host_store(private_redis: PrivateRedis) -> AsyncIterator[RedisStore]:
    """fault-host's store on the private Redis, to follow progress and verify histories."""
    config = RedisStoreConfig(url=private_redis.url, app_id="fault-host", key_prefix=PREFIX)
    store = RedisStore(config, Codec())
    await store.connect()
    yield store
    await store.close()


async def start_all(ledger: Ledger, client: Client, count: int, tag: str) -> None:
    """Start ``count`` chain workflows at once (the client waits at most 1 s for each ack)."""

    async def start_one(i: int) -> None:
        await ledger.start(
            client, "chain", STEPS, chain_result(STEPS), instance_id=f"{tag}-{i:04d}"
        )

    await asyncio.gather(*(start_one(i) for i in range(count)))


async def completed(ledger: Ledger, store: RedisStore) -> int:
    """How many of the ledger's instances the store shows as completed."""
    states = await store.list_instances(WorkflowStatus.COMPLETED, limit=len(ledger.expected) + 100)
    return len({s.instance_id for s in states} & ledger.expected.keys())


async def wait_completed(ledger: Ledger, store: RedisStore, timeout: float) -> int:
    """Poll the store (cheap, and independent of the broker) until all completed or timeout."""
    deadline = time.monotonic() + timeout
    done = 0
    last_print = 0.0
    while time.monotonic() < deadline:
        done = await completed(ledger, store)
        if done == len(ledger.expected):
            break
        if time.monotonic() - last_print > 5:
            print(f"  {done}/{len(ledger.expected)} completed")
            last_print = time.monotonic()
        await asyncio.sleep(0.5)
    return done


async def client_statuses(
    ledger: Ledger, client: Client, timeout: float
) -> dict[str, WorkflowStatus]:
    """``Ledger.wait_all`` through the client, which itself lived through the outage: a
    describe may fail while its connection recovers, so keep asking until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await ledger.wait_all(client, timeout=max(deadline - time.monotonic(), 1.0))
        except (FlowmeshError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            print(f"  describe failed ({type(exc).__name__}: {exc}); asking again")
            await asyncio.sleep(1.0)


async def latest_timer(ledger: Ledger, store: RedisStore) -> float:
    """The longest delay, in seconds, between a timer's due time and the step that applied
    its firing, over the ledger's instances."""
    worst = 0.0
    for instance_id in ledger.expected:
        record = await store.load(instance_id)
        if record is None:
            continue
        due = {e.seq: e.fire_at for e in record.history if isinstance(e, TimerCreated)}
        step_time = None
        for event in record.history:
            if isinstance(event, StepStarted):
                step_time = event.timestamp
            elif isinstance(event, TimerFired) and step_time is not None and event.seq in due:
                worst = max(worst, (step_time - due[event.seq]).total_seconds())
    return worst


def consumers(rabbit: PrivateRabbitMQ) -> dict[str, int]:
    """Consumers per queue, as the broker sees them."""
    output = rabbit.ctl("list_queues", "name", "consumers", "--no-table-headers", "--quiet")
    counts: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


async def wait_consumers(rabbit: PrivateRabbitMQ, expected: dict[str, int], timeout: float) -> None:
    """Wait until every queue in ``expected`` has that many consumers again."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(consumers, rabbit)
        if all(seen.get(name, 0) == n for name, n in expected.items()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"consumers did not come back: expected {expected}, broker has {seen}")


EXPECTED_CONSUMERS = {"fm.fault-host.work": 2, "fm.fault-host.reply": 2, "fm.fault-act.work": 2}


@pytest.mark.parametrize("outage", ["stop_app", "sigkill"])
async def test_broker_outage_under_500_workflows_loses_and_duplicates_nothing(
    outage: str,
    rabbit: PrivateRabbitMQ,
    fleet: WorkerProcesses,
    host_store: RedisStore,
) -> None:
    """Take the broker away mid-run; consumers come back by themselves; all complete once."""
    began = time.monotonic()
    replicas = [fleet.start("fault-host", module=APPS) for _ in range(2)]
    replicas += [fleet.start("fault-act", module=APPS) for _ in range(2)]
    for process in replicas:
        fleet.wait_ready(process)
    await wait_consumers(rabbit, EXPECTED_CONSUMERS, timeout=10)

    ledger = Ledger("fault-host", fleet)
    starting = time.monotonic()
    # Starts are durable once published; a short ack wait lets all 500 go out at once, so
    # that most are in flight when the broker goes away.
    async with Client(rabbit.url, options=ClientOptions(start_ack_timeout=1.0)) as client:
        await start_all(ledger, client, WORKFLOWS, outage)
        started_in = time.monotonic() - starting
        # Begin the outage as soon as the run is under way (the first completions), not after
        # a fixed pause: a fast enough fleet would finish everything during the pause.
        before = await completed(ledger, host_store)
        under_way = time.monotonic() + 5.0
        while before == 0 and time.monotonic() < under_way:
            await asyncio.sleep(0.02)
            before = await completed(ledger, host_store)
        print(
            f"\n[{outage}] workers ready in {starting - began:.1f}s; {WORKFLOWS} started in "
            f"{started_in:.1f}s; {before} done when the outage begins"
        )

        outage_began = time.monotonic()
        if outage == "stop_app":
            await asyncio.to_thread(rabbit.stop_app)
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(rabbit.start_app)
        else:
            await asyncio.to_thread(rabbit.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(rabbit.start)  # a boot on the same data dir takes ~5 s
        back_at = time.monotonic()
        outage_seconds = back_at - outage_began
        print(f"[{outage}] broker back after {outage_seconds:.1f}s")

        # No worker was restarted: their consumers must come back by themselves.
        await wait_consumers(rabbit, EXPECTED_CONSUMERS, timeout=30)
        done = await wait_completed(ledger, host_store, timeout=120)
        print(
            f"[{outage}] {done}/{WORKFLOWS} completed {time.monotonic() - back_at:.1f}s "
            "after the broker came back"
        )
        statuses = await client_statuses(ledger, client, timeout=60)

    report = await ledger.verify(host_store)
    late = await latest_timer(ledger, host_store)
    print(f"[{outage}] ledger: {report}")
    print(f"[{outage}] {time.monotonic() - began:.1f}s in all")
    print(f"[{outage}] latest timer fired {late:.1f}s after it was due")
    dead = [(app, p.pid, p.returncode) for app, p, _ in fleet.processes if p.poll() is not None]
    assert not dead, f"workers died during the outage: {dead}"
    assert before < WORKFLOWS, "everything finished before the outage: it tested nothing"
    assert report.ok, report.explain()
    # A timer claimed while the broker was down is published when it is back, not after the
    # claim's lease ran out. (After a slow outage the limit no longer tells the two apart;
    # it then only bounds the lag.)
    limit = max(outage_seconds + CATCH_UP_SECONDS, TIMER_LEASE_SECONDS - 2)
    assert late < limit, f"a timer fired {late:.1f}s late (> {limit:.1f}s): it waited out its claim"
    not_completed = {i: s for i, s in statuses.items() if s is not WorkflowStatus.COMPLETED}
    assert len(statuses) == WORKFLOWS and not not_completed, (
        f"the client saw {len(statuses)} finished, not completed: {not_completed}"
    )
