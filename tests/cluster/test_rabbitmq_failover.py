"""The RabbitMQ transport on a 3-node cluster: failover when its node dies, quorum queues
replicated on 3 nodes, and queues created with another replication factor still usable.

Each test works in a virtual host of its own (the cluster may be shared with other test
sessions), deleted afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import json
import operator
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from flowmesh import Client, ClientOptions, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from flowmesh.transport import Delivery, Outgoing, QueueKind, queue_name
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.cluster.conftest import LocalCluster
from tests.faults.apps import chain_result
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

MESSAGES = 2000
KILL_AFTER = 300
"""Confirmed messages before the node is killed: the publisher is well under way."""
RESUME_BOUND = 20.0
"""Seconds within which publishing and consuming must resume on another node."""


@pytest.fixture
def vhost(cluster: LocalCluster) -> Iterator[str]:
    """A fresh virtual host on the cluster, deleted after the test."""
    name = f"i17-{uuid.uuid4().hex[:8]}"
    cluster.rabbitmqctl(1, "add_vhost", name)
    cluster.rabbitmqctl(1, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        for node in (1, 2, 3):  # any live node will do
            try:
                cluster.rabbitmqctl(node, "delete_vhost", name)
                break
            except RuntimeError:
                continue


def url_list(cluster: LocalCluster, vhost: str) -> str:
    """The 3 nodes as one URL list (the short form) in ``vhost``."""
    first, *others = cluster.amqp_urls
    return ",".join([f"{first.rstrip('/')}/{vhost}", *(u.split("@", 1)[1] for u in others)])


@pytest.fixture
async def transport(cluster: LocalCluster, vhost: str) -> AsyncIterator[RabbitMQTransport]:
    config = RabbitMQConfig(
        url=url_list(cluster, vhost), publish_timeout=10.0, operation_timeout=10.0
    )
    async with RabbitMQTransport(config) as opened:
        yield opened


async def poll(check: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> None:
    """Return once ``check()`` is true, or after ``timeout`` seconds (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(interval)


def node_number(address: str) -> int:
    """1-3 from ``127.0.0.1:570N``."""
    return int(address.rsplit(":", 1)[1]) - 5700


def members(cluster: LocalCluster, vhost: str, *, node: int = 1) -> dict[str, int]:
    """Quorum queue name -> number of members, as ``rabbitmqctl list_queues`` reports."""
    output = cluster.rabbitmqctl(
        node, "list_queues", "-p", vhost, "name", "type", "members", "--no-table-headers"
    )
    result = {}
    for line in output.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] == "quorum":
            result[parts[0]] = parts[2].count("@")
    return result


def cluster_state(cluster: LocalCluster, vhost: str, victim: int) -> list[str]:
    """Queue leaders and members, and connection states, as the surviving nodes see them."""
    state = []
    for node in (1, 2, 3):
        if node == victim:
            continue
        for args in (
            ("list_queues", "-p", vhost, "name", "leader", "members"),
            ("list_connections", "name", "state", "blocked_by"),
        ):
            try:
                state.append(cluster.rabbitmqctl(node, *args))
            except RuntimeError as exc:
                state.append(str(exc)[-500:])
    return state


async def test_transport_fails_over_when_its_node_is_killed_and_loses_no_message(
    cluster: LocalCluster, transport: RabbitMQTransport, vhost: str
) -> None:
    """Publish 2000 confirmed messages while consuming; SIGKILL the node the transport is
    connected to after 300. Publishing and consuming resume on another node within the
    bound, every confirmed message is consumed (duplicates counted, allowed), and the
    client's inbox works again on the new node."""
    app = "failover"
    await transport.declare_app(app)
    received: Counter[str] = Counter()
    received_at: list[float] = []

    async def handler(delivery: Delivery) -> None:
        received[delivery.message_id] += 1
        received_at.append(time.monotonic())
        await delivery.ack()

    subscription = await transport.consume(app, QueueKind.WORK, handler, prefetch=100)
    inbox = await transport.open_inbox()
    before = transport.nodes
    assert before[0] == before[1], "both connections start at the same node"
    confirmed: list[str] = []
    confirmed_at: list[float] = []
    failures: Counter[str] = Counter()
    last_failure: list[str] = []

    async def publisher() -> None:
        sent = 0
        while sent < MESSAGES:
            batch = [
                Outgoing(app, QueueKind.WORK, b"x", message_id=f"m-{sent + i}")
                for i in range(min(10, MESSAGES - sent))
            ]
            outcomes = await transport.publish_each(batch)
            now = time.monotonic()
            for message, outcome in zip(batch, outcomes, strict=True):
                if outcome is None:
                    confirmed.append(message.message_id)
                    confirmed_at.append(now)
                else:
                    failures[type(outcome).__name__] += 1
            sent += len(batch)
            # Like the outbox relay: what failed is published again (here at once).
            retry = [m for m, o in zip(batch, outcomes, strict=True) if o is not None]
            while retry:
                await asyncio.sleep(0.2)
                outcomes = await transport.publish_each(retry)
                for message, outcome in zip(retry, outcomes, strict=True):
                    if outcome is None:
                        confirmed.append(message.message_id)
                        confirmed_at.append(time.monotonic())
                    else:
                        last_failure[:] = [f"{type(outcome).__name__}: {outcome}"]
                retry = [m for m, o in zip(retry, outcomes, strict=True) if o is not None]

    task = asyncio.create_task(publisher())
    await poll(lambda: len(confirmed) >= KILL_AFTER or task.done(), timeout=60, interval=0.01)
    victim = node_number(before[0])
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.kill_rabbit, victim)
    dead_at = time.monotonic()  # the VM is gone
    try:
        await asyncio.wait_for(task, timeout=120)
    except TimeoutError:
        # Say why publishing did not resume: the transport's last error and what the
        # surviving nodes report about the queue and their connections.
        state = cluster_state(cluster, vhost, victim)
        pytest.fail(
            f"publishing did not resume within 120 s of killing fmc{victim}: "
            f"{len(set(confirmed))}/{MESSAGES} confirmed, last failure {last_failure}, "
            f"transport on {transport.nodes}; cluster: {state}"
        )
    await poll(lambda: not set(confirmed) - received.keys(), timeout=60)

    after = transport.nodes
    publish_resumed = min((t for t in confirmed_at if t > dead_at), default=float("inf"))
    consume_resumed = min((t for t in received_at if t > dead_at), default=float("inf"))
    lost = set(confirmed) - received.keys()
    duplicates = sum(n - 1 for n in received.values())
    print(
        f"\nkilled fmc{victim} ({before[0]}), kill took {dead_at - killed_at:.2f}s; now on "
        f"{after}; publishing resumed {publish_resumed - dead_at:.2f}s and consuming "
        f"{consume_resumed - dead_at:.2f}s after the node was gone; confirmed "
        f"{len(set(confirmed))}/{MESSAGES}, failed publishes retried: {dict(failures)}, "
        f"consumed {len(received)}, duplicates {duplicates}, lost {len(lost)}"
    )
    assert node_number(after[0]) != victim and node_number(after[1]) != victim
    assert len(set(confirmed)) == MESSAGES
    assert not lost, f"{len(lost)} confirmed messages never consumed: {sorted(lost)[:10]}"
    assert publish_resumed - dead_at < RESUME_BOUND
    assert consume_resumed - dead_at < RESUME_BOUND

    # The inbox (exclusive, auto-deleted) went with the node; the transport declared it
    # again, under the same address, on the new node.
    with inbox.expecting("after-failover"):
        await transport.send_reply(inbox.address, "after-failover", b"answer")
        assert await inbox.receive("after-failover", timeout=10) == b"answer"
    await inbox.close()
    await subscription.cancel()


async def test_quorum_queues_get_3_members_from_a_3_node_list(
    cluster: LocalCluster, transport: RabbitMQTransport, vhost: str
) -> None:
    """With 3 node URLs, x-quorum-initial-group-size is 3: every app queue has 3 members."""
    await transport.declare_app("replicated")
    counts = members(cluster, vhost)
    assert counts == {queue_name("replicated", kind): 3 for kind in QueueKind}, counts


async def test_a_queue_created_with_another_group_size_is_used_as_it_is(
    cluster: LocalCluster, vhost: str
) -> None:
    """RabbitMQ compares x-quorum-initial-group-size on every declaration: queues created
    with 2 members, or with none given (a single-URL process), are declared and consumed by
    a transport configured for 3 without PRECONDITION_FAILED, and keep their size."""
    urls = url_list(cluster, vhost)
    single = f"{cluster.amqp_urls[0].rstrip('/')}/{vhost}"
    async with RabbitMQTransport(RabbitMQConfig(url=urls, quorum_size=2)) as two:
        await two.declare_app("sized-two")
    async with RabbitMQTransport(RabbitMQConfig(url=single)) as standalone:
        # No group size: the broker's default, every cluster member.
        await standalone.declare_app("sized-none")
    got: list[str] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.message_id)
        await delivery.ack()

    async with RabbitMQTransport(RabbitMQConfig(url=urls, quorum_size=3)) as three:
        for app in ("sized-two", "sized-none"):
            await three.declare_app(app)
            subscription = await three.consume(app, QueueKind.WORK, handler, prefetch=1)
            await three.publish([Outgoing(app, QueueKind.WORK, b"x", message_id=app)])
            await poll(functools.partial(operator.contains, got, app), timeout=10)
            await subscription.cancel()
    # A standalone (single URL) process uses the size-3 queues too.
    async with RabbitMQTransport(RabbitMQConfig(url=single)) as standalone:
        await standalone.declare_app("sized-two")
    async with RabbitMQTransport(RabbitMQConfig(url=urls)) as default:
        await default.declare_app("sized-three")
        await default.declare_app("sized-none")
    assert got == ["sized-two", "sized-none"]
    counts = members(cluster, vhost)
    assert counts[queue_name("sized-two", QueueKind.WORK)] == 2
    assert counts[queue_name("sized-none", QueueKind.WORK)] == 3  # all 3 nodes: the default
    assert counts[queue_name("sized-three", QueueKind.WORK)] == 3


# -- workers ---------------------------------------------------------------------------------

WORKFLOWS = 200
STEPS = 3
APPS = "tests.faults.apps"


@pytest.fixture
def fleet(
    cluster: LocalCluster,
    vhost: str,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcesses]:
    """Worker processes on the cluster's 3 RabbitMQ nodes (one URL list) and the machine's
    standalone Redis (a private key prefix, deleted afterwards)."""
    prefix = f"fmc17{uuid.uuid4().hex[:8]}"
    processes = WorkerProcesses(
        Services(url_list(cluster, vhost), redis_url, prefix, vhost), tmp_path
    )
    try:
        yield processes
    finally:
        processes.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(processes.logs())
        with redis.Redis.from_url(redis_url) as client:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)


def connected_nodes(fleet: WorkerProcesses) -> Counter[str]:
    """How many worker transports connected to each node (their ``transport.connected``)."""
    nodes: Counter[str] = Counter()
    for _, _, path in fleet.processes:
        for line in path.read_text(errors="replace").splitlines():
            if '"transport.connected"' in line:
                nodes[json.loads(line)["node"]] += 1
    return nodes


async def completed(ledger: Ledger, store: RedisStore) -> int:
    """How many of the ledger's instances the store shows as completed."""
    states = await store.list_instances(WorkflowStatus.COMPLETED, limit=len(ledger.expected) + 50)
    return len({s.instance_id for s in states} & ledger.expected.keys())


async def test_workers_of_two_apps_finish_200_workflows_across_a_node_kill_and_restart(
    cluster: LocalCluster, fleet: WorkerProcesses
) -> None:
    """2 replicas of fault-host and 2 of fault-act, with the 3-node URL list, run 200
    ``chain(3)`` workflows (3 activities on the other app and a timer each) while the node
    most of them are connected to is SIGKILLed, and restarted 5 s later. All complete with
    the right result, the ledger finds nothing lost and nothing applied twice, and no worker
    died; re-executions are reported."""
    services = fleet.services
    replicas = [fleet.start(app, module=APPS) for app in ("fault-host", "fault-act") * 2]
    for process in replicas:
        fleet.wait_ready(process)
    nodes = connected_nodes(fleet)
    victim = node_number(nodes.most_common(1)[0][0])
    config = RedisStoreConfig(
        url=services.redis_url, app_id="fault-host", key_prefix=services.key_prefix
    )
    ledger = Ledger("fault-host", fleet)
    began = time.monotonic()
    async with (
        RedisStore(config, Codec()) as store,
        Client(services.amqp_url, options=ClientOptions(start_ack_timeout=1.0)) as client,
    ):
        await asyncio.gather(
            *(
                ledger.start(client, "chain", STEPS, chain_result(STEPS), instance_id=f"w-{i:03d}")
                for i in range(WORKFLOWS)
            )
        )
        # Kill once the run is under way (the first completions), with most work in flight.
        under_way = time.monotonic() + 5.0
        before = await completed(ledger, store)
        while before == 0 and time.monotonic() < under_way:
            await asyncio.sleep(0.05)
            before = await completed(ledger, store)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill_rabbit, victim)
        await asyncio.sleep(5.0)
        restart = asyncio.create_task(asyncio.to_thread(cluster.start_rabbit, victim))
        deadline = time.monotonic() + 180
        done = before
        while done < WORKFLOWS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            done = await completed(ledger, store)
        finished_at = time.monotonic()
        await restart
        statuses = await ledger.wait_all(client, timeout=60)
        report = await ledger.verify(store)
    lost_connections = sum(
        path.read_text(errors="replace").count('"transport.connection_lost"')
        for _, _, path in fleet.processes
    )
    print(
        f"\nworkers on nodes {dict(nodes)}; killed fmc{victim} with {before}/{WORKFLOWS} "
        f"done; all {done} done {finished_at - killed_at:.1f}s after the kill "
        f"({finished_at - began:.1f}s in all); {lost_connections} worker connections failed "
        f"over; ledger: {report}"
    )
    dead = [(app, p.pid, p.returncode) for app, p, _ in fleet.processes if p.poll() is not None]
    assert not dead, f"workers died: {dead}"
    assert lost_connections >= 2, "no worker was connected to the killed node"
    assert report.ok, report.explain()
    not_completed = {i: s for i, s in statuses.items() if s is not WorkflowStatus.COMPLETED}
    assert len(statuses) == WORKFLOWS and not not_completed, not_completed
