"""Fault 4: the workflow store (Redis) is killed under load and restarted on its AOF.

A private Redis (append-only file, ``appendfsync always``, ``noeviction``: what flowmesh asks of
production) holds fault-host's histories; the broker is the shared one, in the session's vhost.
2 ``fault-host`` replicas and 1 ``fault-act`` replica run 300 ``chain(3)`` workflows; mid-run
Redis gets SIGKILL, stays down for a few seconds and starts again on the same port and dir.

While it is down, steps fail with ``StoreError`` (after redis-py's bounded retries): their
deliveries must be handed back, not acked, and the workers must keep serving. A commit whose
reply was lost is retried and fails its version check, which is harmless. Every commit Redis
acknowledged is in the AOF, so after the restart every workflow completes exactly once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from flowmesh import Client, ClientOptions, WorkflowStatus
from flowmesh.store.redis import RedisStore
from tests.faults.apps import chain_result
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.servers import PrivateRedis

pytestmark = [pytest.mark.real_services, pytest.mark.slow, pytest.mark.timeout(240)]

APPS = "tests.faults.apps"
WORKFLOWS = 300
STEPS = 3
DOWNTIME = 3.0


async def start_all(ledger: Ledger, client: Client, count: int) -> None:
    """Start ``count`` chain workflows at once (the client waits at most 1 s for each ack)."""

    async def start_one(i: int) -> None:
        await ledger.start(
            client, "chain", STEPS, chain_result(STEPS), instance_id=f"redis-{i:04d}"
        )

    await asyncio.gather(*(start_one(i) for i in range(count)))


async def completed(ledger: Ledger, store: RedisStore) -> int:
    """How many of the ledger's instances the store shows as completed."""
    states = await store.list_instances(WorkflowStatus.COMPLETED, limit=len(ledger.expected) + 100)
    return len({s.instance_id for s in states} & ledger.expected.keys())


def log_counts(workers: WorkerProcesses) -> dict[str, int]:
    """How often the workers logged each kind of trouble (shows the outage was felt)."""
    text = "".join(path.read_text(errors="replace") for _, _, path in workers.processes)
    phrases = ("deliveries requeued", "timer poll failed", "outbox sweep failed", "Traceback")
    return {phrase: text.count(phrase) for phrase in phrases}


async def test_redis_killed_and_restarted_under_load_loses_and_duplicates_nothing(
    private_redis: PrivateRedis,
    services: Services,
    workers: WorkerProcesses,
    host_store: RedisStore,
) -> None:
    """SIGKILL Redis mid-run, restart it on its AOF; all 300 complete once, no worker dies."""
    assert await host_store.check_safety() == [], "the private Redis must be durable"
    began = time.monotonic()
    target = Services(services.amqp_url, private_redis.url, services.key_prefix, services.vhost)
    replicas = [workers.start("fault-host", module=APPS, services=target) for _ in range(2)]
    replicas.append(workers.start("fault-act", module=APPS, services=target))
    for process in replicas:
        workers.wait_ready(process)

    ledger = Ledger("fault-host", workers)
    starting = time.monotonic()
    # Starts are durable once published; a short ack wait lets all of them go out at once,
    # so that most are in flight when Redis dies.
    async with Client(services.amqp_url, options=ClientOptions(start_ack_timeout=1.0)) as client:
        await start_all(ledger, client, WORKFLOWS)
        started_in = time.monotonic() - starting
        await asyncio.sleep(0.2)
        before = await completed(ledger, host_store)
        print(
            f"\nworkers ready in {starting - began:.1f}s; {WORKFLOWS} started in "
            f"{started_in:.1f}s; {before} done when Redis is killed"
        )

        killed_at = time.monotonic()
        await asyncio.to_thread(private_redis.restart, hard=True, downtime=DOWNTIME)
        print(f"Redis back after {time.monotonic() - killed_at:.1f}s (AOF replayed)")

        # The store client in this test lost its connection too; redis-py reconnects.
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline:
            done = await completed(ledger, host_store)
            if done == WORKFLOWS:
                break
            await asyncio.sleep(0.5)
        print(f"{done}/{WORKFLOWS} completed {time.monotonic() - killed_at:.1f}s after the kill")
        statuses = await ledger.wait_all(client, timeout=60)

    report = await ledger.verify(host_store)
    print(f"ledger: {report}")
    print(f"{time.monotonic() - began:.1f}s in all")
    print(f"worker logs: {log_counts(workers)}")
    dead = [(app, p.pid, p.returncode) for app, p, _ in workers.processes if p.poll() is not None]
    assert not dead, f"workers died during the Redis outage: {dead}"
    assert before < WORKFLOWS, "everything finished before Redis was killed: it tested nothing"
    assert report.ok, report.explain()
    not_completed = {i: s for i, s in statuses.items() if s is not WorkflowStatus.COMPLETED}
    assert len(statuses) == WORKFLOWS and not not_completed, (
        f"the client saw {len(statuses)} finished, not completed: {not_completed}"
    )
