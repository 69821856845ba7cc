"""Sharding of an app's Redis keys: the shard function, hash tags, the layout check, the ACL
patterns, the cluster URL and FCALL routing (no server needed)."""

from __future__ import annotations

import asyncio
from collections import Counter
from fnmatch import fnmatchcase

import pytest

from flowmesh._errors import ConfigurationError
from flowmesh.ops import SecurityPlan
from flowmesh.store._redis_cluster import FlowmeshCluster, cluster_nodes, is_cluster_url
from flowmesh.store._redis_scans import _shares
from flowmesh.store._redis_shards import (
    ShardedKeys,
    check_layout,
    layout_value,
    merge_scored,
    shard_of,
    shard_tag,
)
from flowmesh.store.redis import RedisStoreConfig


def test_the_shard_of_an_instance_is_stable_across_processes_and_versions() -> None:
    """CRC-32, not hash(): these values must never change (stored data depends on them)."""
    assert [shard_of(i, 16) for i in ("order-1", "order-2", "wf-1", "a")] == [15, 5, 14, 3]
    assert shard_of("anything", 1) == 0


def test_instances_spread_evenly_over_the_shards() -> None:
    counts = Counter(shard_of(f"order-{n}", 16) for n in range(16_000))
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 900 and max(counts.values()) < 1100


def test_one_shard_keeps_the_original_layout_and_more_shards_tag_each() -> None:
    assert ShardedKeys("fm", "pay", 1).of("x").instance("x") == "fm:{pay}:i:x"
    assert ShardedKeys("fm", "pay", 1).shards[0].timers == "fm:{pay}:timers"
    sharded = ShardedKeys("fm", "pay", 16)
    assert [keys.timers for keys in sharded.shards[:2]] == [
        "fm:{pay#0}:timers",
        "fm:{pay#1}:timers",
    ]
    assert sharded.of("order-1").instance("order-1") == "fm:{pay#15}:i:order-1"
    assert sharded.layout == "fm:{pay}:layout"
    assert shard_tag("pay", 3, 16) == "pay#3"


def test_a_store_written_with_another_shard_count_is_refused_saying_both() -> None:
    check_layout(None, 16, "store")  # empty: anything goes
    check_layout(layout_value(16), 16, "store")
    with pytest.raises(ConfigurationError, match=r"written with 16 shard.*configured for 4"):
        check_layout(layout_value(16), 4, "store")
    with pytest.raises(ConfigurationError, match="does not know"):
        check_layout("v9 shards=16", 16, "store")
    with pytest.raises(ConfigurationError, match=r"1\.\.1024"):
        RedisStoreConfig(url="redis://h", app_id="pay", shards=0)


@pytest.mark.parametrize("other", ["pay-1", "payments", "pa", "p", "ay", "xpay"])
def test_an_apps_acl_patterns_match_its_keys_and_no_other_apps(other: str) -> None:
    """Redis ACL key patterns are globs; App IDs have no '#' or braces, so ``{pay#*}`` cannot
    reach ``pay-1`` or ``payments`` (sharded or not)."""
    plan = SecurityPlan.build(calls={"pay": [], other: []}, clients={})
    [user] = [u for u in plan.redis_users() if u.app_id == "pay"]
    assert user.key_patterns == ("fm:{pay}:*", "fm:{pay#*}:*")

    def allowed(key: str) -> bool:
        return any(fnmatchcase(key, pattern) for pattern in user.key_patterns)

    for shards in (1, 16):
        own = ShardedKeys("fm", "pay", shards)
        assert all(allowed(keys.instance("i-1")) for keys in own.shards)
        assert allowed(own.layout)
        foreign = ShardedKeys("fm", other, shards)
        assert not any(allowed(keys.instance("i-1")) for keys in foreign.shards)
        assert not any(allowed(keys.timers) for keys in foreign.shards)
        assert not allowed(foreign.layout)


def test_merging_shards_orders_by_score_ties_by_shard() -> None:
    runs = [[(b"a", 1.0), (b"c", 5.0)], [(b"b", 2.0), (b"d", 5.0)]]
    assert [m for _, m, _ in merge_scored(runs)] == [b"a", b"b", b"c", b"d"]
    newest = [[(b"c", 5.0), (b"a", 1.0)], [(b"d", 5.0), (b"b", 2.0)]]
    assert [m for _, m, _ in merge_scored(newest, newest_first=True)] == [b"c", b"d", b"b", b"a"]


def test_a_timer_claim_shares_its_limit_fairly_and_rotates_the_first_shard() -> None:
    assert _shares([0, 0, 0], 10, 0) == []
    assert _shares([100, 0, 100], 10, 0) == [(0, 5), (2, 5)]
    assert _shares([1, 50, 50], 10, 0) == [(0, 1), (1, 5), (2, 4)]
    assert _shares([1, 50, 50], 10, 1) == [(0, 1), (1, 5), (2, 4)]
    # More shards with due timers than the limit: the rotation decides who goes first.
    assert _shares([5, 5, 5, 5], 2, 0) == [(0, 1), (1, 1)]
    assert _shares([5, 5, 5, 5], 2, 2) == [(2, 1), (3, 1)]
    assert sum(n for _, n in _shares([3, 900, 7], 100, 5)) == 100


def test_cluster_urls_list_their_nodes_and_credentials() -> None:
    url = "rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001/0"
    assert is_cluster_url(url) and not is_cluster_url("rediss://h:1/0")
    assert cluster_nodes(url) == ([("10.0.0.1", 7000), ("10.0.0.2", 7001)], "app", "s@cret")
    with pytest.raises(ConfigurationError, match="host:port"):
        cluster_nodes("redis+cluster://h1:7000,h2")
    with pytest.raises(ConfigurationError, match="database 0"):
        cluster_nodes("redis+cluster://h1:7000/3")
    config = RedisStoreConfig(url=url, app_id="pay")
    assert config.is_cluster and config.default_shards == 16
    assert config.effective_tls is not None
    assert RedisStoreConfig(url="redis://h:1/0", app_id="pay").default_shards == 1


def test_fcall_is_routed_by_its_first_key_without_asking_a_server() -> None:
    """No COMMAND GETKEYS round trip: the slot comes from the arguments (a client that never
    connected could not ask)."""
    client = FlowmeshCluster(host="127.0.0.1", port=1)
    key = "fm:{pay#3}:i:x"
    # The overridden method itself is what is under test.
    determine = client._determine_slot  # noqa: SLF001
    slot = asyncio.run(determine("FCALL", "fm_x_commit", 2, key, "fm:{pay#3}:h:x", 1))
    assert slot == client.keyslot(key)


def test_every_node_of_a_cluster_client_packs_commands_linearly() -> None:
    from flowmesh.store._redis_packing import _LinearPacking
    from flowmesh.store.redis import redis_client

    client = redis_client(
        RedisStoreConfig(url="redis+cluster://127.0.0.1:1,127.0.0.1:2", app_id="a")
    )
    assert isinstance(client, FlowmeshCluster)
    connection_class = client.get_connection_kwargs()["connection_class"]
    assert isinstance(connection_class, type) and issubclass(connection_class, _LinearPacking)
    nodes = client.nodes_manager.startup_nodes.values()
    assert all(issubclass(node.connection_class, _LinearPacking) for node in nodes)
