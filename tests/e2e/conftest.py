"""End-to-end harness: real RabbitMQ, real Redis, real ``flowmesh worker`` subprocesses.

Each test session gets its own RabbitMQ vhost and Redis key prefix, so runs never see each
other's queues or histories, and both are removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis

from flowmesh import Client
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.harness.processes import Services, WorkerProcesses


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def services(amqp_url: str, redis_url: str) -> Iterator[Services]:
    """A private vhost and Redis key prefix for the session."""
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is needed to create a test vhost"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    suffix = uuid.uuid4().hex[:8]
    vhost = f"fmtest-{suffix}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(amqp_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    prefix = f"fmtest{suffix}"
    try:
        yield Services(url, redis_url, prefix, vhost)
    finally:
        _rabbitmqctl("delete_vhost", vhost)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


@pytest.fixture
def workers(
    services: Services, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcesses]:
    """Worker subprocesses for one test; their logs are printed if the test fails."""
    processes = WorkerProcesses(services, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(processes.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
async def client(services: Services) -> AsyncIterator[Client]:
    """A broker-only client on the session's vhost."""
    async with Client(services.amqp_url) as connected:
        yield connected


StoreOpener = Callable[[str], Awaitable[RedisStore]]


@pytest.fixture
async def store_for(services: Services) -> AsyncIterator[StoreOpener]:
    """Open the Redis store of an app (to check histories); closed after the test."""
    opened: list[RedisStore] = []

    async def open_store(app_id: str) -> RedisStore:
        config = RedisStoreConfig(
            url=services.redis_url, app_id=app_id, key_prefix=services.key_prefix
        )
        store = RedisStore(config, Codec())
        await store.connect()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()
