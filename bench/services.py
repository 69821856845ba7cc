"""A private RabbitMQ vhost and Redis key prefix per run, and what the run ran on."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from bench import loops

AMQP_URL = os.environ.get("FLOWMESH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("FLOWMESH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True, slots=True)
class Services:
    """Where workers, floor processes and the client connect for this run."""

    amqp_url: str
    redis_url: str
    key_prefix: str
    vhost: str


def _rabbitmqctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=timeout
    )
    return done.stdout


def create(amqp_url: str = AMQP_URL, redis_url: str = REDIS_URL) -> Services:
    """A fresh vhost (guest may do anything in it) and a fresh Redis key prefix."""
    if shutil.which("rabbitmqctl") is None:
        raise SystemExit("bench: rabbitmqctl is needed to create a private vhost")
    suffix = uuid.uuid4().hex[:8]
    vhost = f"fmbench-{suffix}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(amqp_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    return Services(url, redis_url, f"fmbench{suffix}", vhost)


def destroy(services: Services) -> dict[str, Any]:
    """Delete the vhost (and with it every queue) and every key under the prefix."""
    report: dict[str, Any] = {"vhost": services.vhost, "prefix": services.key_prefix}
    try:
        _rabbitmqctl("delete_vhost", services.vhost)
        report["vhost_deleted"] = True
    except (subprocess.SubprocessError, OSError) as exc:
        report["vhost_deleted"] = False
        report["vhost_error"] = str(exc)
    # redis-py's sync and async clients share annotations (``Awaitable[Any] | Any``).
    client: Any = redis.Redis.from_url(services.redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{services.key_prefix}:*", count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        report["redis_keys_deleted"] = deleted
    finally:
        client.close()
    return report


def versions(redis_url: str = REDIS_URL) -> dict[str, Any]:
    """Versions of everything the numbers depend on."""

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    try:
        rabbit = _rabbitmqctl("version", timeout=30).strip()
        rabbit_pid = json.loads(_rabbitmqctl("status", "--formatter", "json")).get("pid")
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        rabbit, rabbit_pid = f"unknown ({exc})", None
    client: Any = redis.Redis.from_url(redis_url)
    try:
        server = client.info("server")
        config = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    finally:
        client.close()
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "flowmesh": dist("flowmesh"),
        "aio-pika": dist("aio-pika"),
        "aiormq": dist("aiormq"),
        "redis-py": dist("redis"),
        "msgpack": dist("msgpack"),
        "uvloop": dist("uvloop"),
        "structlog": dist("structlog"),
        "rabbitmq": rabbit,
        "redis": server.get("redis_version"),
        "rabbitmq_pid": rabbit_pid,  # to read the servers' CPU time from /proc
        "redis_pid": server.get("process_id"),
        "redis_appendonly": config.get("appendonly"),
        "redis_appendfsync": config.get("appendfsync"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
        "uvloop_used": loops.worker_uses_uvloop(),  # by workers, floor and client alike
        "platform": platform.platform(),
    }
