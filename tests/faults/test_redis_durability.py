"""Acknowledgements are only as durable as Redis' fsync: the worker requires ``appendfsync
always``, accepts ``everysec`` only when told to, and re-checks the server while it runs.

Real worker processes against a private Redis (``tests/harness/servers.py``) whose
configuration the test changes at runtime with ``CONFIG SET``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.harness.processes import REPO, Services, WorkerProcesses
from tests.harness.servers import PrivateRedis

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(120)]

APPS = "tests.faults.apps"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A durable private Redis: AOF with ``appendfsync always``, ``noeviction``."""
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


def _start(
    workers: WorkerProcesses, services: Services, redis_url: str, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """A fault-host worker without the harness's --allow-unsafe-redis, on ``redis_url``."""
    full_env = {
        **os.environ,
        "FLOWMESH_AMQP_URL": services.amqp_url,
        "FLOWMESH_REDIS_URL": redis_url,
        "FLOWMESH_REDIS_PREFIX": services.key_prefix,
        **workers.effects_env,
    }
    for name in ("FLOWMESH_ALLOW_UNSAFE_REDIS", "FLOWMESH_ALLOW_REDIS_EVERYSEC"):
        full_env.pop(name, None)
    full_env.update(env)
    command = [
        sys.executable, "-m", "flowmesh.cli", "--log-format", "json", "worker",
        "--app-id", "fault-host", "--module", APPS, "--drain-timeout", "2",
    ]  # fmt: skip
    log_path = workers.log_dir / f"durability-{len(workers.processes)}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    workers.processes.append(("fault-host", process, log_path))
    return process, log_path


def _error_lines(log_path: Path) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if line.startswith("Error:")]


def _set(server: PrivateRedis, name: str, value: str) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set(name, value)
    finally:
        client.close()


def test_appendfsync_everysec_is_refused_unless_allowed(
    workers: WorkerProcesses, services: Services, private_redis: PrivateRedis
) -> None:
    """With ``appendfsync everysec`` (Redis' default, and compose's before) a hosting worker
    refuses to start, naming everysec and the flag; with FLOWMESH_ALLOW_REDIS_EVERYSEC=1 it
    starts. (On main it started without a word: everysec was considered safe.)"""
    _set(private_redis, "appendfsync", "everysec")
    refused, log_path = _start(workers, services, private_redis.url)
    try:
        code = refused.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not refuse appendfsync everysec within 30 s")
    errors = _error_lines(log_path)
    print(f"exit {code}: {errors}")
    assert code != 0
    assert len(errors) == 1 and "appendfsync is 'everysec'" in errors[0]
    assert "--allow-redis-everysec" in errors[0]

    allowed, _ = _start(workers, services, private_redis.url, FLOWMESH_ALLOW_REDIS_EVERYSEC="1")
    workers.wait_ready(allowed, timeout=30)


def test_a_running_worker_stops_when_its_redis_becomes_unsafe(
    workers: WorkerProcesses, services: Services, private_redis: PrivateRedis
) -> None:
    """The configuration is re-checked while the worker runs, not only at start: after
    ``CONFIG SET appendfsync everysec`` on its Redis a worker re-checking every 0.5 s drains
    and exits non-zero within seconds, saying its Redis became unsafe."""
    process, log_path = _start(
        workers, services, private_redis.url, FLOWMESH_REDIS_CHECK_INTERVAL="0.5"
    )
    workers.wait_ready(process, timeout=30)
    time.sleep(1.0)  # a couple of passing checks first
    assert process.poll() is None, "the worker stopped on a safe Redis"

    changed = time.monotonic()
    _set(private_redis, "appendfsync", "everysec")
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker kept running on a Redis with appendfsync everysec")
    took = time.monotonic() - changed
    errors = _error_lines(log_path)
    print(f"exit {code} {took:.1f} s after CONFIG SET: {errors}")
    assert code != 0
    assert len(errors) == 1
    assert "became unsafe" in errors[0] and "everysec" in errors[0]
    assert took < 15
