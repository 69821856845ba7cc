"""Shared fixtures.

Real-service fixtures skip when RabbitMQ or Redis is unreachable on a laptop, but *fail* under
``CI=true``: a CI run that silently skipped the integration suite would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis

from flowmesh import Client
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

AMQP_URL = os.environ.get("FLOWMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("FLOWMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _require(url: str, default_port: int, what: str) -> str:
    if _reachable(url, default_port):
        return url
    message = f"{what} is not reachable at {url}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true real-service tests must run, not skip")
    pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the real RabbitMQ (skips locally when down, fails under CI=true)."""
    return _require(AMQP_URL, 5672, "RabbitMQ")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis (skips locally when down, fails under CI=true)."""
    return _require(REDIS_URL, 6379, "Redis")


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
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
async def client(services: Services) -> AsyncIterator[Client]:
    """A broker-only client on the session's vhost."""
    async with Client(services.amqp_url) as connected:
        yield connected


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
