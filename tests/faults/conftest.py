"""Fixtures shared by the fault tests that run workflows on a Redis of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.harness.processes import Services
from tests.harness.servers import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private, durable Redis, stopped after the test (after the workers: fixture order).

    A test module that needs other settings defines its own fixture of this name.
    """
    with PrivateRedis(tmp_path / "redis", appendonly=True) as server:
        yield server


@pytest.fixture
async def host_store(private_redis: PrivateRedis, services: Services) -> AsyncIterator[RedisStore]:
    """fault-host's store on the private Redis; its client lives through restarts too."""
    config = RedisStoreConfig(
        url=private_redis.url, app_id="fault-host", key_prefix=services.key_prefix
    )
    store = RedisStore(config, Codec())
    await store.connect()
    yield store
    await store.close()
