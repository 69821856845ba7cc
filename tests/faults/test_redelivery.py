"""Fault 5: bounded redelivery - outages and missing deployments never become requeue loops.

* A 60 s Redis outage under load, on queues with a delivery limit of 20 (RabbitMQ 4's default,
  set here by policy as RabbitMQ 4.x would): steps that fail for lack of the store are
  republished with a growing delay and an attempt count in a header, never requeued, so no
  message reaches the limit and nothing is lost.
* A long activity (on a lease) whose result publish meets a 15 s broker outage: the runner
  keeps renewing the lease and retries the publish until it is confirmed, so the activity is
  not run again.
* A task for an activity no deployment registers: its retry delay grows (attempts counted in
  the message), the host's instance is not rewritten by every retry, and the task stops once
  its workflow was terminated.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowmesh import Client, ClientOptions, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.harness.effects import read_runs
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.servers import PrivateRabbitMQ, PrivateRedis

pytestmark = [pytest.mark.real_services, pytest.mark.slow, pytest.mark.timeout(240)]

APPS = "tests.faults.apps"
DELIVERY_LIMIT = 20


@pytest.fixture
def delivery_limit(services: Services) -> Iterator[int]:
    """A policy giving the fault apps' queues a delivery limit of 20 and no dead-letter
    target: what RabbitMQ 4.x does by default to every quorum queue (flowmesh's own
    arguments, where the queues carry them, say the same limit and add the target)."""
    name = "fmtest-delivery-limit"
    definition = json.dumps({"delivery-limit": DELIVERY_LIMIT})
    subprocess.run(
        ["rabbitmqctl", "set_policy", "-p", services.vhost, "--apply-to", "queues",
         name, r"^fm\.fault-(host|act)\.", definition],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        yield DELIVERY_LIMIT
    finally:
        subprocess.run(
            ["rabbitmqctl", "clear_policy", "-p", services.vhost, name],
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip


def log_events(workers: WorkerProcesses, app_id: str, event: str) -> list[dict[str, object]]:
    """The JSON log lines ``event`` of ``app_id``'s replicas, in time order."""
    found = []
    for app, _, path in workers.processes:
        if app != app_id or not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or event not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == event:
                found.append(record)
    return sorted(found, key=lambda r: str(r.get("timestamp", "")))


async def test_a_60s_redis_outage_under_a_delivery_limit_of_20_loses_nothing(
    private_redis: PrivateRedis,
    services: Services,
    workers: WorkerProcesses,
    host_store: RedisStore,
    delivery_limit: int,
) -> None:
    """Redis goes down for 60 s just after 100 workflows dispatched a 2 s activity each, on
    queues that drop a message after 20 redeliveries: the results arrive during the outage,
    wait without reaching the limit, and every workflow completes once.

    The hosts take 64 messages each at once, so every result is tried again and again during
    the outage (a requeue loop passes 20 deliveries within about 40 s, and a dropped result
    leaves its workflow waiting forever: nothing dispatches a short activity again).
    """
    outage, count = 60.0, 100
    target = Services(services.amqp_url, private_redis.url, services.key_prefix, services.vhost)
    replicas = [
        workers.start("fault-host", module=APPS, services=target, concurrency=64) for _ in range(2)
    ]
    replicas.append(workers.start("fault-act", module=APPS, services=target, concurrency=50))
    for process in replicas:
        workers.wait_ready(process)
    ledger = Ledger("fault-host", workers)
    async with Client(services.amqp_url, options=ClientOptions(start_ack_timeout=1.0)) as client:
        await asyncio.gather(
            *(
                ledger.start(client, "slow_one", 2.0, "slept 2.0", instance_id=f"dl-{i:03d}")
                for i in range(count)
            )
        )
        await asyncio.sleep(1.5)  # tasks dispatched, outbox entries cleared, activities run
        killed_at = time.monotonic()
        await asyncio.to_thread(private_redis.restart, hard=True, downtime=outage)
        print(f"\nRedis back after {time.monotonic() - killed_at:.1f}s")
        statuses = await ledger.wait_all(client, timeout=60)
        print(
            f"{len(statuses)}/{count} finished {time.monotonic() - killed_at:.1f}s after the kill"
        )
    report = await ledger.verify(host_store)
    print(f"ledger: {report}")
    retried = log_events(workers, "fault-host", "step retried later")
    highest = max((int(str(r.get("attempt", 0))) for r in retried), default=0)
    print(f"steps retried later: {len(retried)}, highest attempt {highest}")
    dead = [(app, p.pid, p.returncode) for app, p, _ in workers.processes if p.poll() is not None]
    assert not dead, f"workers died during the Redis outage: {dead}"
    assert report.ok, report.explain()
    assert len(statuses) == count
    assert all(s is WorkflowStatus.COMPLETED for s in statuses.values()), statuses


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    """A private RabbitMQ node, stopped (and its processes killed) after the test."""
    with PrivateRabbitMQ(tmp_path / "rabbitmq") as node:
        yield node


async def test_a_long_activity_whose_result_meets_a_15s_broker_outage_runs_once(
    rabbit: PrivateRabbitMQ, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """The activity runs on a lease (ack deadline 1 s, lease 30 s) and finishes while the
    broker is away for 15 s: its result is published once the broker is back, before the
    lease expires, and the task is never dispatched again."""
    services = Services(rabbit.url, private_redis.url, "fmredeliv", "/")
    fleet = WorkerProcesses(services, tmp_path)
    lease_env = {"FLOWMESH_ACK_DEADLINE": "1", "FLOWMESH_ACTIVITY_LEASE": "30"}
    try:
        for app_id in ("fault-host", "fault-act"):
            fleet.wait_ready(fleet.start(app_id, module=APPS, env=lease_env))
        store = RedisStore(
            RedisStoreConfig(url=private_redis.url, app_id="fault-host", key_prefix="fmredeliv"),
            Codec(),
        )
        await store.connect()
        try:
            async with Client(rabbit.url) as client:
                handle = await client.start_workflow(
                    "slow_one", 6.0, app_id="fault-host", instance_id="long-1"
                )
                await asyncio.sleep(3.0)  # on its lease now; it finishes 3 s into the outage
                await asyncio.to_thread(rabbit.stop_app)
                await asyncio.sleep(15.0)
                await asyncio.to_thread(rabbit.start_app)
                back = time.monotonic()
                deadline = back + 60
                state = None
                while time.monotonic() < deadline:
                    state = await store.load_state("long-1")
                    if state is not None and state.status.is_terminal:
                        break
                    await asyncio.sleep(0.5)
                print(f"\nfinished {time.monotonic() - back:.1f}s after the broker came back")
                assert state is not None and state.status is WorkflowStatus.COMPLETED, state
                assert await handle.result(timeout=30) == "slept 6.0"
        finally:
            await store.close()
        runs, _ = read_runs(fleet.effects_path)
        print(f"activity runs: {len(runs)}")
        assert len(runs) == 1, f"the activity ran {len(runs)} times: {runs}"
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.stop_all()


async def test_an_unregistered_activity_backs_off_writes_little_and_stops_when_terminated(
    private_redis: PrivateRedis,
    services: Services,
    workers: WorkerProcesses,
    host_store: RedisStore,
) -> None:
    """Two runner replicas lack the activity: the delay doubles per attempt (1, 2, 4, 8 s,
    whichever replica takes it), the host's instance version stays put while the task
    bounces, and after a terminate the next attempt drops the task."""
    target = Services(services.amqp_url, private_redis.url, services.key_prefix, services.vhost)
    processes = [workers.start("fault-host", module=APPS, services=target)]
    processes += [workers.start("fault-act", module=APPS, services=target) for _ in range(2)]
    for process in processes:
        workers.wait_ready(process)
    event = "activity not registered here; task kept for a deployment that has it"
    async with Client(services.amqp_url) as client:
        handle = await client.start_workflow(
            "needs_missing", None, app_id="fault-host", instance_id="missing-1"
        )
        deadline = time.monotonic() + 30
        versions: list[int] = []
        while time.monotonic() < deadline:
            seen = log_events(workers, "fault-act", event)
            if len(seen) in (2, 4) and len(versions) < len(seen) // 2:
                await asyncio.sleep(0.5)  # the attempt's note reaches the host
                state = await host_store.load_state("missing-1")
                assert state is not None
                versions.append(state.version)
            if len(seen) >= 4:
                break
            await asyncio.sleep(0.1)
        delays = [record.get("retry_in") for record in seen]
        print(f"\nretry delays: {delays}; host versions after attempts 2 and 4: {versions}")
        assert delays[:4] == [1.0, 2.0, 4.0, 8.0], delays
        assert len(versions) == 2 and versions[0] == versions[1], versions
        state = await handle.describe()
        assert state.waiting_on and "not registered" in state.waiting_on[0].detail, state

        await handle.terminate(reason="nobody deploys it")
        dropped: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not dropped:
            dropped = log_events(
                workers, "fault-act", "task dropped: its workflow no longer waits for it"
            )
            await asyncio.sleep(0.2)
        assert dropped, "the task kept bouncing after its workflow was terminated"
        before = len(log_events(workers, "fault-act", event))
        await asyncio.sleep(3.0)
        assert len(log_events(workers, "fault-act", event)) == before
