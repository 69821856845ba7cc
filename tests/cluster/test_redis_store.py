"""The Redis store on the local Redis Cluster (scripts/cluster.sh): the whole store contract
suite, the spread of one app's shards over the masters, the layout check, the function
library and the safety check on every master, and a master failover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import redis

from flowmesh._errors import ConfigurationError, StoreError, VersionConflictError
from flowmesh.codec import Codec
from flowmesh.store import WorkflowStore
from flowmesh.store import redis_function_library as library
from flowmesh.store._redis_shards import ShardedKeys, layout_value
from flowmesh.store.redis import RedisStore, RedisStoreConfig, redis_client
from tests.cluster.conftest import LocalCluster
from tests.contract.test_store_contract import *  # noqa: F403 - the contract suite, again
from tests.contract.test_store_contract import StoreFactory, redis_stores, step

pytestmark = pytest.mark.cluster


@pytest.fixture  # type: ignore[no-redef]  # replaces the suite's own fixture
async def stores(cluster_redis_url: str) -> AsyncIterator[StoreFactory]:
    """The contract suite's stores, on the cluster with the default 16 shards."""
    async with redis_stores(cluster_redis_url, f"s-{uuid4().hex[:8]}", None) as factory:
        yield factory


def _admin(url: str) -> redis.RedisCluster:
    hostports = url.split("://", 1)[1].split(",")
    nodes = [redis.cluster.ClusterNode(h, int(p)) for h, p in (x.rsplit(":", 1) for x in hostports)]
    return redis.RedisCluster(startup_nodes=nodes, socket_timeout=5)


async def test_one_apps_shards_spread_over_all_three_masters(cluster_redis_url: str) -> None:
    """16 shards of one app: every master serves some of them.

    Which slots an app's tags hash to depends on its ID, so the distribution is checked for
    fixed app IDs (the examples'), not a random one: with 16 shards a master may serve from
    3 to 10 of an app's shards (``app3``: 3, 3, 10), never none for these IDs. A random app's
    store is used to check that instances over all shards are listed."""
    admin = _admin(cluster_redis_url)
    try:
        masters = {node.name for node in admin.get_primaries()}
        assert len(masters) == 3
        for example in ("app1", "app2", "app3", "gpu-trainer"):
            by_master: dict[str, int] = dict.fromkeys(masters, 0)
            for keys in ShardedKeys("fm", example, 16).shards:
                by_master[admin.get_node_from_key(keys.index).name] += 1
            print(f"{example}: shards per master {by_master}")
            assert all(count >= 1 for count in by_master.values()), (example, by_master)
    finally:
        admin.close()
    app_id = f"s-{uuid4().hex[:8]}"
    async with redis_stores(cluster_redis_url, app_id, None) as factory:
        store = await factory()
        assert isinstance(store, RedisStore)
        assert store.shards == 16
        for n in range(64):
            await store.commit(step(f"wf-{n}", 0))
        assert len(await store.list_instances(limit=100)) == 64


async def test_a_store_of_another_shard_count_is_refused(cluster_redis_url: str) -> None:
    app_id = f"s-{uuid4().hex[:8]}"
    async with redis_stores(cluster_redis_url, app_id, None) as factory:
        store = await factory()
        assert isinstance(store, RedisStore)
        await store.record_layout()
        client = redis_client(store.config)
        try:
            assert await client.get(f"fm:{{{app_id}}}:layout") == layout_value(16).encode()
        finally:
            await client.aclose()
        other = RedisStore(
            RedisStoreConfig(url=cluster_redis_url, app_id=app_id, shards=4), Codec()
        )
        with pytest.raises(ConfigurationError, match=r"written with 16 shard.*configured for 4"):
            await other.connect()


async def test_the_library_is_on_every_master_and_the_safety_check_names_each(
    cluster_redis_url: str,
) -> None:
    async with redis_stores(cluster_redis_url, f"s-{uuid4().hex[:8]}", None) as factory:
        store = await factory()
        assert isinstance(store, RedisStore)
        await store.ensure_functions()
        admin = _admin(cluster_redis_url)
        try:
            for node in admin.get_primaries():
                listed = admin.execute_command(
                    "FUNCTION LIST", "LIBRARYNAME", library().name, target_nodes=node
                )
                assert listed, f"no flowmesh library on {node.name}"
            assert await store.check_safety() == []
            weak = admin.get_primaries()[1]
            admin.execute_command("CONFIG SET", "appendfsync", "everysec", target_nodes=weak)
            try:
                warnings = await store.check_safety()
            finally:
                admin.execute_command("CONFIG SET", "appendfsync", "always", target_nodes=weak)
        finally:
            admin.close()
        assert len(warnings) == 1
        assert warnings[0].startswith(f"Redis Cluster master {weak.name}:")
        assert "everysec" in warnings[0]


@pytest.mark.slow
async def test_the_store_works_again_after_a_master_is_killed_and_its_replica_promoted(
    cluster: LocalCluster, cluster_redis_url: str
) -> None:
    """SIGKILL a master: once its replica is promoted, the client's slot map is refreshed
    and commits succeed again within a bounded time; what was committed (and replicated)
    before is there."""
    async with redis_stores(cluster_redis_url, f"s-{uuid4().hex[:8]}", None) as factory:
        store = await factory()
        ids = [f"wf-{n}" for n in range(48)]  # 3 per shard on average: every master has some
        for instance_id in ids:
            await store.commit(step(instance_id, 0))
        await asyncio.sleep(1)  # replication is asynchronous: let the replicas catch up

        killed = time.monotonic()
        cluster.kill_redis_master()
        started = time.monotonic()
        print(f"replica promoted {started - killed:.1f} s after the SIGKILL")
        for instance_id in ids:  # every shard, so the killed master's slots too
            await _commit_within(store, instance_id, 60.0)
        recovered = time.monotonic() - started
        print(f"all 48 instances committed again {recovered:.1f} s after the promotion")
        states = {s.instance_id: s for s in await store.list_instances(limit=100)}
        assert set(states) == set(ids)
        assert all(s.version == 2 for s in states.values())


async def _commit_within(store: WorkflowStore, instance_id: str, seconds: float) -> None:
    """Commit the instance's second step, retrying while the cluster fails over."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await store.commit(step(instance_id, 1))
            return
        except VersionConflictError:  # applied, but the reply was lost: a retry conflicts
            stored = await store.load_state(instance_id)
            assert stored is not None and stored.version == 2
            return
        except StoreError:  # the slot map is stale until the promotion is seen
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
