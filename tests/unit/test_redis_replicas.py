"""The replica acknowledgement of commits (``flowmesh/store/_redis_replicas.py``): which
``WAIT`` each batch sends, how shortfalls are counted, shortened and reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio.connection
import structlog

from flowmesh._errors import ConfigurationError
from flowmesh.store._redis_replicas import DEGRADED_FOR, WARN_EVERY, ReplicaAcks, check_replica_acks
from flowmesh.store.redis import RedisStoreConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_wait_per_master_covering_its_calls() -> None:
    acks = ReplicaAcks(1, 1.0, "app")
    waits = acks.plan(["a:1", "b:2", "a:1"])
    assert [(w.node, w.calls, w.args) for w in waits] == [
        ("a:1", (0, 2), (1, 1000)),
        ("b:2", (1,), (1, 1000)),
    ]


def test_a_shortfall_is_counted_warned_once_and_shortens_the_next_waits() -> None:
    clock = Clock()
    acks = ReplicaAcks(1, 1.0, "app", clock=clock)
    with structlog.testing.capture_logs() as logs:
        waits = acks.plan(["a", "a", "b"])
        acks.settle(waits, [0, 1], [False, False, False])
        assert acks.unreplicated == 2
        (wait_a, wait_b) = acks.plan(["a", "b"])
        assert wait_a.timeout_ms == 100 and wait_b.timeout_ms == 1000  # a is degraded
        acks.settle([wait_a], [0], [False, False])
    assert acks.unreplicated == 3
    warnings = [e for e in logs if e["event"] == "store.commit_not_on_replica"]
    assert len(warnings) == 1  # rate-limited
    assert warnings[0]["node"] == "a" and warnings[0]["commits"] == 2
    assert "a failover now could lose it" in warnings[0]["detail"]

    clock.now += WARN_EVERY
    with structlog.testing.capture_logs() as logs:
        acks.settle(acks.plan(["a"]), [RuntimeError("NOPERM")], [False])
    assert [e["commits"] for e in logs] == [2]  # the one held back, and this one
    assert "NOPERM" in logs[0]["detail"]


def test_degraded_ends_with_an_acknowledged_wait_or_after_a_while() -> None:
    clock = Clock()
    acks = ReplicaAcks(1, 1.0, "app", clock=clock)
    acks.settle(acks.plan(["a"]), [0], [False])
    assert acks.plan(["a"])[0].timeout_ms == 100
    acks.settle(acks.plan(["a"]), [1], [False])
    assert acks.plan(["a"])[0].timeout_ms == 1000
    acks.settle(acks.plan(["a"]), [0], [False])
    clock.now += DEGRADED_FOR
    assert acks.plan(["a"])[0].timeout_ms == 1000


def test_failed_calls_wrote_nothing_to_lose_and_close_reports_the_rest() -> None:
    acks = ReplicaAcks(2, 0.5, "app")
    with structlog.testing.capture_logs() as logs:
        acks.settle(acks.plan(["a", "a"]), [1], [True, True])
        assert acks.unreplicated == 0 and logs == []
        acks.settle(acks.plan(["a"]), [1], [False])  # 1 of 2 wanted: short, warned
        acks.settle(acks.plan(["a", "a"]), [1], [False, False])  # rate-limited away
        acks.report()
        acks.report()  # nothing left
    assert [e["commits"] for e in logs] == [1, 2] and acks.unreplicated == 3


def test_defaults_and_validation() -> None:
    assert RedisStoreConfig(url="redis://h", app_id="a").effective_replica_acks == 0
    assert RedisStoreConfig(url="redis+cluster://h:1", app_id="a").effective_replica_acks == 1
    assert RedisStoreConfig(url="redis://h", app_id="a", replica_acks=2).effective_replica_acks == 2
    with pytest.raises(ConfigurationError, match="replica_acks"):
        RedisStoreConfig(url="redis://h", app_id="a", replica_acks=-1)
    with pytest.raises(ConfigurationError, match="below socket_timeout"):
        RedisStoreConfig(url="redis://h", app_id="a", replica_ack_timeout=10.0)
    check_replica_acks(None, 0.001, 10.0)


def test_connection_closed_under_a_command_is_a_store_error_a_bug_is_not() -> None:
    """redis-py's cluster client closes connections other commands are using; what they
    raise then is a StoreError (retried), while an AttributeError of flowmesh's own is not."""
    from flowmesh._errors import StoreError
    from flowmesh.store.redis import RedisStore

    store = RedisStore(RedisStoreConfig(url="redis://127.0.0.1:1", app_id="a"), codec=None)  # type: ignore[arg-type]

    class Closed:
        writer = None

    def write_in_client() -> None:
        Closed.writer.writelines([])  # type: ignore[attr-defined]

    write_in_client.__code__ = write_in_client.__code__.replace(
        co_filename=str(Path(redis.asyncio.connection.__file__))
    )
    with pytest.raises(StoreError, match="writelines"), store._translating("commit"):  # noqa: SLF001
        write_in_client()
    with pytest.raises(AttributeError), store._translating("commit"):  # noqa: SLF001
        None.missing  # type: ignore[attr-defined]  # noqa: B018
