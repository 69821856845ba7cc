"""Workflows end to end on the local cluster (scripts/cluster.sh), with real worker processes:
Redis Cluster as the store (``redis+cluster://``, 16 shards per app), RabbitMQ from the cluster.

* the multi-app chain, child workflows on another app, timers and external events;
* one app's instances spread over all 3 masters;
* 1,000 workflows in flight on two hosting apps while a RabbitMQ node, or a Redis master, is
  SIGKILLed and later restarted (a master's replica is promoted meanwhile): all complete with
  the right results, the ledger shows nothing lost or applied twice. Commits wait for a
  replica (``WAIT``, replica_acks 1 by default on a cluster); the test prints how many
  commits were logged "not yet on a replica".
  Run it with ``FLOWMESH_REDIS_REPLICA_ACKS=0`` to see what asynchronous replication loses
  without the wait (not part of the suite: it may fail by design).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from flowmesh import Client, ClientOptions, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.cluster.apps import chain_result
from tests.cluster.conftest import LocalCluster
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses

pytestmark = pytest.mark.cluster

APPS = "tests.cluster.apps"
HOSTS = ("cl-host", "cl-host2")
IN_FLIGHT = 1000
STEPS = 3


def amqp_url(urls: list[str], vhost: str) -> str:
    """The broker URL the workers and clients use: every node of the cluster, comma-separated
    (the first with the vhost, the others as ``host:port`` taking the rest from it), so a
    process fails over to another node when its node dies."""
    first, *others = urls
    return ",".join(
        [f"{first.rstrip('/')}/{vhost}", *(u.split("@")[-1].rstrip("/") for u in others)]
    )


@pytest.fixture(scope="module")
def cluster_services(
    local_cluster: LocalCluster, cluster_amqp_urls: list[str], cluster_redis_url: str
) -> Iterator[Services]:
    """A private vhost on the RabbitMQ cluster and a key prefix on the Redis Cluster."""
    suffix = uuid.uuid4().hex[:8]
    vhost, prefix = f"fmcl-{suffix}", f"fmcl{suffix}"
    _rabbitmqctl(local_cluster, "add_vhost", vhost)
    _rabbitmqctl(local_cluster, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield Services(amqp_url(cluster_amqp_urls, vhost), cluster_redis_url, prefix, vhost)
    finally:
        _rabbitmqctl(local_cluster, "delete_vhost", vhost)
        _delete_keys(local_cluster, prefix)


def _rabbitmqctl(cluster: LocalCluster, *args: str) -> None:
    """On the first node that answers (vhosts are cluster-wide; another test may have
    stopped a node)."""
    failures = []
    for node in (1, 2, 3):
        try:
            cluster.rabbitmqctl(node, *args)
            return
        except RuntimeError as exc:
            failures.append(str(exc)[-300:])
    raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed on every node: {failures}")


def _delete_keys(cluster: LocalCluster, prefix: str) -> None:
    for port in cluster.redis_masters():
        with redis.Redis(port=port, socket_timeout=10) as client:
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)


@pytest.fixture
def cl_workers(cluster_services: Services, tmp_path: Path) -> Iterator[WorkerProcesses]:
    processes = WorkerProcesses(cluster_services, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
async def stores(cluster_services: Services) -> AsyncIterator[dict[str, RedisStore]]:
    """The hosting apps' stores on the cluster (to check histories)."""
    opened = {}
    for app_id in (*HOSTS, "cl-child"):
        config = RedisStoreConfig(
            url=cluster_services.redis_url, app_id=app_id, key_prefix=cluster_services.key_prefix
        )
        opened[app_id] = RedisStore(config, Codec())
        await opened[app_id].connect()
    yield opened
    for store in opened.values():
        await store.close()


def start_workers(workers: WorkerProcesses, apps: tuple[str, ...]) -> None:
    started = [workers.start(app_id, module=APPS, concurrency=64) for app_id in apps]
    for process in started:
        workers.wait_ready(process, timeout=60)


@pytest.mark.timeout(180)
async def test_chain_children_timers_and_events_on_the_cluster(
    local_cluster: LocalCluster,
    cl_workers: WorkerProcesses,
    cluster_services: Services,
    stores: dict[str, RedisStore],
) -> None:
    """A handful of each: the multi-app chain (with a timer), a child workflow on another app,
    an external event followed by a timer; and one app's 300 instances on all 3 masters."""
    start_workers(cl_workers, ("cl-host", "cl-act", "cl-child"))
    async with Client(cluster_services.amqp_url) as client:
        chains = [await client.start_workflow("chain", 4, app_id="cl-host") for _ in range(5)]
        parents = [
            await client.start_workflow("parent", i, app_id="cl-host", instance_id=f"par-{i}")
            for i in range(5)
        ]
        waiting = [
            await client.start_workflow("wait_go", i, app_id="cl-host", instance_id=f"go-{i}")
            for i in range(5)
        ]
        for i, handle in enumerate(waiting):
            await handle.raise_event("go", {"n": i})
        for handle in chains:
            assert await handle.result(timeout=60) == chain_result(4)
        for i, handle in enumerate(parents):
            assert await handle.result(timeout=60) == {"child": 2 * i, "own": 2 * i}
            child = await stores["cl-child"].load_state(f"par-{i}-child")
            assert child is not None and child.status is WorkflowStatus.COMPLETED
        for i, handle in enumerate(waiting):
            assert await handle.result(timeout=60) == {"value": i, "go": {"n": i}}

        quick = [
            await client.start_workflow("quick", i, app_id="cl-host", instance_id=f"q-{i:03d}")
            for i in range(300)
        ]
        for i, handle in enumerate(quick):
            assert await handle.result(timeout=60) == i + 1
    assert_spread(local_cluster, cluster_services.key_prefix, "cl-host", minimum=315)


def assert_spread(cluster: LocalCluster, prefix: str, app_id: str, minimum: int) -> None:
    """Every master holds some of the app's instance keys (scanned master by master)."""
    masters = cluster.redis_masters()
    per_master = {}
    for port in masters:
        with redis.Redis(port=port, socket_timeout=10) as client:
            keys = client.scan_iter(match=f"{prefix}:{{{app_id}#*}}:i:*", count=1000)
            per_master[port] = sum(1 for _ in keys)
    print(f"\n{app_id} instances per master: {per_master}")
    assert len(masters) == 3 and sum(per_master.values()) >= minimum, per_master
    assert all(count > 0 for count in per_master.values()), per_master


def not_on_replica(workers: WorkerProcesses) -> tuple[int, int]:
    """``(warnings, commits)``: the workers' "not yet on a replica" warnings and the commits
    they count (the rate-limited rest is logged when a worker closes its store)."""
    warnings = commits = 0
    for _, _, path in workers.processes:
        for line in path.read_text(errors="replace").splitlines():
            if '"store.commit_not_on_replica"' not in line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            warnings += 1
            commits += int(event.get("commits", 0))
    return warnings, commits


def busiest_rabbit_node(workers: WorkerProcesses) -> int:
    """The RabbitMQ node (1-3) most workers are connected to, from their ``transport.connected``
    log lines: each process picks a node at random, and killing one nobody uses tests nothing."""
    counts = dict.fromkeys((1, 2, 3), 0)
    for _, _, path in workers.processes:
        for line in path.read_text(errors="replace").splitlines():
            if '"transport.connected"' not in line:
                continue
            try:
                node = str(json.loads(line).get("node", ""))
            except json.JSONDecodeError:
                continue
            port = node.rsplit(":", 1)[-1]
            if port in ("5701", "5702", "5703"):
                counts[int(port) - 5700] += 1
    print(f"\nworker connections per RabbitMQ node: {counts}")
    return max(counts, key=lambda n: counts[n])


async def completed(ledgers: dict[str, Ledger], stores: dict[str, RedisStore]) -> int:
    done = 0
    for app_id, ledger in ledgers.items():
        states = await stores[app_id].list_instances(
            WorkflowStatus.COMPLETED, limit=len(ledger.expected) + 100
        )
        done += len({s.instance_id for s in states} & ledger.expected.keys())
    return done


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("fault", ["redis-master", "rabbitmq-node"])
async def test_a_thousand_workflows_survive_a_node_loss(
    fault: str,
    cluster: LocalCluster,
    cl_workers: WorkerProcesses,
    cluster_services: Services,
    stores: dict[str, RedisStore],
) -> None:
    """SIGKILL a node with 1,000 workflows in flight, then start it again: a Redis master (its
    replica is promoted; the old node comes back as a replica) or a RabbitMQ node (clients
    and workers on it fail over to another node; its quorum queue leaders are re-elected).
    All complete once, with the right results."""
    began = time.monotonic()
    start_workers(cl_workers, (*HOSTS, "cl-act"))
    ledgers = {app_id: Ledger(app_id, cl_workers) for app_id in HOSTS}
    options = ClientOptions(start_ack_timeout=1.0)
    async with Client(cluster_services.amqp_url, options=options) as client:
        starting = time.monotonic()

        async def start_one(i: int) -> None:
            ledger = ledgers[HOSTS[i % 2]]
            instance_id = f"fo-{fault}-{i:04d}"
            await ledger.start(client, "chain", STEPS, chain_result(STEPS), instance_id=instance_id)

        await asyncio.gather(*(start_one(i) for i in range(IN_FLIGHT)))
        started_in = time.monotonic() - starting
        await asyncio.sleep(1.0)
        before = await completed(ledgers, stores)
        killed_at = time.monotonic()
        if fault == "redis-master":
            victim = await asyncio.to_thread(cluster.kill_redis_master)
            what = f"Redis {victim}"
        else:
            victim = busiest_rabbit_node(cl_workers)
            await asyncio.to_thread(cluster.kill_rabbit, victim)
            what = f"RabbitMQ node {victim}"
        failed_over_in = time.monotonic() - killed_at
        await asyncio.sleep(3.0)
        # Progress while the node is still down (the other nodes carry the load).
        during = await completed(ledgers, stores)
        during_at = time.monotonic() - killed_at
        if fault == "redis-master":
            await asyncio.to_thread(cluster.start_redis, victim)
        else:
            await asyncio.to_thread(cluster.start_rabbit, victim)
        back_in = time.monotonic() - killed_at
        print(
            f"\nworkers ready in {starting - began:.1f}s; {IN_FLIGHT} started in "
            f"{started_in:.1f}s; {before} done when {what} was killed; "
            f"kill returned after {failed_over_in:.1f}s; {during} done {during_at:.1f}s after the "
            f"kill with the node still down; the node back after {back_in:.1f}s"
        )
        deadline = time.monotonic() + 180
        done = 0
        while time.monotonic() < deadline:
            done = await completed(ledgers, stores)
            if done == IN_FLIGHT:
                break
            await asyncio.sleep(1.0)
        print(f"{done}/{IN_FLIGHT} completed {time.monotonic() - killed_at:.1f}s after the kill")
        statuses: dict[str, WorkflowStatus] = {}
        for ledger in ledgers.values():
            statuses.update(await ledger.wait_all(client, timeout=30 if done == IN_FLIGHT else 5))

    cl_workers.stop_all()  # each worker logs the shortfalls not reported yet when it closes
    reports = {app_id: await ledger.verify(stores[app_id]) for app_id, ledger in ledgers.items()}
    for app_id, report in reports.items():
        print(f"{app_id} ledger: {report}")
    warnings, commits = not_on_replica(cl_workers)
    print(f"commits logged 'not yet on a replica': {commits} (in {warnings} warnings)")
    print(f"{time.monotonic() - began:.1f}s in all")
    assert before < IN_FLIGHT, "everything finished before the kill: it tested nothing"
    for report in reports.values():
        assert report.ok, report.explain()
    not_completed = {i: s for i, s in statuses.items() if s is not WorkflowStatus.COMPLETED}
    assert len(statuses) == IN_FLIGHT and not not_completed, not_completed
