"""End-to-end harness: real RabbitMQ, real Redis, real ``flowmesh worker`` subprocesses.

Each test session gets its own RabbitMQ vhost and Redis key prefix, so runs never see each
other's queues or histories, and both are removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis

from flowmesh import Client
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig

REPO = Path(__file__).resolve().parents[2]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Services:
    """Where this session's workers and clients connect."""

    amqp_url: str
    redis_url: str
    key_prefix: str
    vhost: str


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


@dataclass
class WorkerProcesses:
    """Starts and stops ``flowmesh worker`` subprocesses; logs go to files under tmp."""

    services: Services
    log_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(
        self,
        app_id: str,
        *,
        module: str | None = None,
        concurrency: int = 16,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one replica of ``app_id``."""
        log_path = self.log_dir / f"{app_id}-{len(self.processes)}.log"
        command = [
            sys.executable,
            "-m",
            "flowmesh.cli",
            "--log-format",
            "json",
            "worker",
            "--app-id",
            app_id,
            "--concurrency",
            str(concurrency),
            "--allow-unsafe-redis",
            "--drain-timeout",
            "5",
        ]
        if module:
            command += ["--module", module]
        full_env = {
            **os.environ,
            "FLOWMESH_AMQP_URL": self.services.amqp_url,
            "FLOWMESH_REDIS_URL": self.services.redis_url,
            "FLOWMESH_REDIS_PREFIX": self.services.key_prefix,
            **(env or {}),
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append((app_id, process, log_path))
        return process

    def stop_all(self) -> None:
        """SIGTERM every worker, then SIGKILL what did not exit in time."""
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def logs(self) -> str:
        """The tail of every worker's log, for failure reports."""
        parts = []
        for app_id, process, path in self.processes:
            text = path.read_text(errors="replace")[-3000:] if path.exists() else ""
            parts.append(f"--- {app_id} (pid {process.pid}, exit {process.poll()}) ---\n{text}")
        return "\n".join(parts)


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
