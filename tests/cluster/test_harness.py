"""Smoke tests of the local cluster harness itself (scripts/cluster.sh), with raw clients only.

They check what the cluster suite relies on: Redis Cluster has 3 masters that each serve keys,
every RabbitMQ node takes connections, a quorum queue declared on one node is replicated to all
three and stays usable when a node is SIGKILLed. flowmesh's own store and transport are not used.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.cluster.conftest import LocalCluster

pytestmark = pytest.mark.cluster


def _cluster_client(redis_url: str) -> RedisCluster:
    hostports = redis_url.split("://", 1)[1].split(",")
    nodes = [ClusterNode(host, int(port)) for host, port in (h.rsplit(":", 1) for h in hostports)]
    return RedisCluster(startup_nodes=nodes, socket_timeout=5)


def test_redis_cluster_has_three_masters_serving_keys(
    cluster_redis_url: str, local_cluster: LocalCluster
) -> None:
    client = _cluster_client(cluster_redis_url)
    try:
        masters = {node.port for node in client.get_primaries()}
        assert len(masters) == 3
        assert masters == set(local_cluster.redis_masters())
        assert len(client.get_replicas()) == 3
        # One key per master: keys are hashed to slots, and every master owns a third of them.
        prefix = f"harness:{uuid.uuid4().hex[:8]}"
        keys_by_master: dict[int, str] = {}
        for i in range(1000):
            key = f"{prefix}:{i}"
            port = client.get_node_from_key(key).port
            keys_by_master.setdefault(port, key)
            if len(keys_by_master) == 3:
                break
        assert set(keys_by_master) == masters
        for port, key in keys_by_master.items():
            assert client.set(key, f"on {port}")
            assert client.get(key) == f"on {port}".encode()
        assert len({client.keyslot(key) for key in keys_by_master.values()}) == 3
        client.delete(*keys_by_master.values())
    finally:
        client.close()


async def test_every_rabbitmq_node_accepts_connections(cluster_amqp_urls: list[str]) -> None:
    assert [url.rsplit(":", 1)[1] for url in cluster_amqp_urls] == ["5701", "5702", "5703"]
    for url in cluster_amqp_urls:
        async with asyncio.timeout(30):
            connection = await aio_pika.connect(url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                assert queue.name


async def _publish(url: str, queue: str, body: bytes) -> None:
    """Publish and wait for the confirm, retrying a nack: while a quorum queue elects a new
    leader (its old one was killed) the broker refuses publishes, as any client sees it."""
    async with asyncio.timeout(60):
        while True:
            connection = await aio_pika.connect(url)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue,
                    )
                    return
                except aio_pika.exceptions.DeliveryError:
                    pass
            await asyncio.sleep(0.5)


async def _get(url: str, queue: str) -> bytes:
    async with asyncio.timeout(60):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.get_queue(queue, ensure=True)
            while True:
                message = await declared.get(no_ack=False, fail=False)
                if message is not None:
                    await message.ack()
                    return message.body
                await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_quorum_queue_is_replicated_and_survives_a_node(
    cluster: LocalCluster, cluster_amqp_urls: list[str]
) -> None:
    node1, node2, node3 = cluster_amqp_urls
    name = f"harness-{uuid.uuid4().hex[:8]}"
    async with asyncio.timeout(60):
        connection = await aio_pika.connect(node1)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(
                name,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 3},
            )
    try:
        # Visible from node 3, with a member on every node.
        async with asyncio.timeout(30):
            connection = await aio_pika.connect(node3)
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue(name, passive=True)
        listing = cluster.rabbitmqctl(
            3, "list_queues", "name", "type", "members", "--no-table-headers"
        )
        line = next(row for row in listing.splitlines() if row.startswith(name))
        assert "quorum" in line
        for member in ("fmc1@localhost", "fmc2@localhost", "fmc3@localhost"):
            assert member in line

        await _publish(node3, name, b"before")
        assert await _get(node2, name) == b"before"

        # Node 1 declared the queue, so it most likely leads it: killing it forces an election.
        cluster.kill_rabbit(1)
        await _publish(node3, name, b"after")
        assert await _get(node2, name) == b"after"
        cluster.start_rabbit(1)
        await _publish(node1, name, b"rejoined")
        assert await _get(node3, name) == b"rejoined"
    finally:
        cluster.restore()
        async with asyncio.timeout(60):
            connection = await aio_pika.connect(node2)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(name)


@pytest.mark.slow
def test_redis_master_failover_promotes_its_replica(
    cluster: LocalCluster, cluster_redis_url: str
) -> None:
    before = cluster.redis_masters()
    killed = cluster.kill_redis_master()
    after = cluster.redis_masters()
    assert killed in before
    assert killed not in after
    assert len(after) == 3
    client = _cluster_client(cluster_redis_url)
    try:
        key = f"harness:{uuid.uuid4().hex[:8]}"
        assert client.set(key, b"x")
        assert client.get(key) == b"x"
        client.delete(key)
    finally:
        client.close()
    cluster.start_redis(killed)
    # The restarted node learns from its peers that it was failed over: it turns replica
    # within a few cluster-bus rounds, not at once.
    deadline = time.monotonic() + 30
    while True:
        rejoined = next(node for node in cluster.redis_nodes() if node.port == killed)
        if (not rejoined.is_master and rejoined.master_id is not None) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    assert not rejoined.is_master
    assert rejoined.master_id is not None
