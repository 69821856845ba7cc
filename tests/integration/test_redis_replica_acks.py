"""Replica acknowledgement on a standalone Redis with one replica (two private servers):
``WAIT`` sent in the commits' pipeline counts the commits of that connection, and a master
whose replica stops answering still commits, after the timeout, with the shortfall counted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from flowmesh.codec import Codec
from flowmesh.store import HeldMessage
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.contract.test_store_contract import step
from tests.harness.servers import PrivateRedis

pytestmark = pytest.mark.real_services


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    """A master and its replica (linked, bounded wait for the link)."""
    with (
        PrivateRedis(tmp_path / "master", appendonly=False) as master,
        PrivateRedis(tmp_path / "replica", appendonly=False) as replica,
    ):
        with redis.Redis(port=replica.port) as client:
            client.execute_command("REPLICAOF", "127.0.0.1", master.port)
            deadline = time.monotonic() + 20
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not link"
                time.sleep(0.1)
        yield master, replica


async def test_commits_wait_for_the_replica_and_pass_on_without_it(
    pair: tuple[PrivateRedis, PrivateRedis],
) -> None:
    master, replica = pair
    config = RedisStoreConfig(
        url=master.url, app_id="acks", replica_acks=1, replica_ack_timeout=0.3
    )
    async with RedisStore(config, Codec()) as store:
        await store.commit(step("one", 0))
        await asyncio.gather(*(store.commit(step(f"many-{i}", 0)) for i in range(50)))
        assert await store.hold("held-1", _held()) is True
        assert store._replica_acks.unreplicated == 0  # noqa: SLF001 - what the log counts
        with redis.Redis(port=replica.port) as client:  # the replica has them
            assert client.hget("fm:{acks}:i:many-49", "v") == b"1"

        assert replica.process is not None
        os.killpg(replica.process.pid, signal.SIGSTOP)  # alive, but acknowledges nothing
        try:
            began = time.monotonic()
            await store.commit(step("alone", 0))  # fail-open: it stands
            assert 0.25 < time.monotonic() - began < 3
            await asyncio.gather(*(store.commit(step(f"alone-{i}", 0)) for i in range(10)))
        finally:
            os.killpg(replica.process.pid, signal.SIGCONT)
        assert store._replica_acks.unreplicated == 11  # noqa: SLF001
        assert (await store.load("alone-9")) is not None


def _held() -> HeldMessage:
    return HeldMessage(body=b"x", held_at=datetime.now(UTC), user_id="u", message_id="m-1")
