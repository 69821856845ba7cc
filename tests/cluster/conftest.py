"""Fixtures for the cluster suite (issue 17): a 3-node RabbitMQ cluster and a 6-node Redis Cluster.

The cluster is the one ``scripts/cluster.sh`` runs on this machine (state in
``$FLOWMESH_CLUSTER_DIR``, default ``/tmp/flowmesh-cluster``). If it is already up and healthy the
session uses it and leaves it up; otherwise the session brings it up and takes it down at the end
(set ``FLOWMESH_CLUSTER_KEEP=1`` to leave it running for the next session). When it cannot come
up the tests skip, except under ``CI=true``, where they fail: a CI run that skipped the cluster
suite would prove nothing.

Tests that kill nodes use the ``cluster`` fixture, which starts whatever they killed again after
the test, so one test's outage never leaks into the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
import redis

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
UP_TIMEOUT = 300  # the script's own waits are shorter; this only guards against a hang


# Why the cluster could not come up, once known: pytest sets a session fixture up again for every
# test after a failed setup, and a failing `up` can take minutes.
_unavailable_reason: list[str] = []


def _unavailable(message: str) -> NoReturn:
    _unavailable_reason[:] = [message]
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true the cluster suite must run, not skip")
    pytest.skip(message)


def _script(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _checked(*args: str, timeout: float = 180) -> str:
    result = _script(*args, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/cluster.sh {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


@dataclass(frozen=True)
class RedisNode:
    """One line of ``CLUSTER NODES`` as seen by a live node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # None for a master

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?"})


@dataclass
class LocalCluster:
    """The running cluster's URLs and the fault helpers (by RabbitMQ node number / Redis port)."""

    amqp_urls: list[str]
    redis_url: str
    redis_ports: list[int]
    _killed: set[str] = field(default_factory=set)

    # -- RabbitMQ -------------------------------------------------------------------------
    def rabbit_port(self, node: int) -> int:
        return 5700 + node

    def kill_rabbit(self, node: int) -> None:
        """SIGKILL RabbitMQ node ``node`` (1-3) and wait until its VM is gone."""
        self._killed.add(f"rabbit {node}")
        _checked("kill", "rabbit", str(node), timeout=60)

    def start_rabbit(self, node: int) -> None:
        """Start node ``node`` again and wait until it runs as a cluster member."""
        _checked("start", "rabbit", str(node), timeout=240)
        self._killed.discard(f"rabbit {node}")

    def rabbitmqctl(self, node: int, *args: str) -> str:
        """``rabbitmqctl -n fmc<node>@localhost ARGS`` in the cluster's environment."""
        return _checked("ctl", str(node), *args, timeout=150)

    # -- Redis ----------------------------------------------------------------------------
    def redis_nodes(self) -> list[RedisNode]:
        """The Redis Cluster's nodes as the first reachable node reports them (CLUSTER NODES)."""
        for port in self.redis_ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
                    # redis-py parses the reply into {"ip:port": {"node_id", "flags", ...}}.
                    table = client.execute_command("CLUSTER NODES")
            except redis.RedisError:
                continue
            return [_parse_node(address, fields) for address, fields in table.items()]
        raise RuntimeError("no Redis Cluster node answers")

    def redis_masters(self) -> list[int]:
        """Ports of the healthy masters that serve slots, in port order."""
        return sorted(n.port for n in self.redis_nodes() if n.is_master and not n.failed)

    def kill_redis(self, port: int) -> None:
        """SIGKILL the Redis node on ``port`` (no failover wait: see ``kill_redis_master``)."""
        self._killed.add(f"redis {port}")
        _checked("kill", "redis", str(port), timeout=60)

    def start_redis(self, port: int) -> None:
        """Start the node on ``port`` again (a former master rejoins as a replica)."""
        _checked("start", "redis", str(port), timeout=120)
        self._killed.discard(f"redis {port}")

    def kill_redis_master(self, port: int | None = None, failover_timeout: float = 45) -> int:
        """SIGKILL a master (the given one, or the first) and wait until its replica is promoted.

        Returns the killed port. Afterwards the cluster again has 3 healthy masters and
        ``cluster_state:ok`` on every surviving node.
        """
        masters = self.redis_masters()
        victim = masters[0] if port is None else port
        if victim not in masters:
            raise ValueError(f"Redis {victim} is not a master (masters: {masters})")
        self.kill_redis(victim)
        deadline = time.monotonic() + failover_timeout
        while time.monotonic() < deadline:
            masters = self.redis_masters()
            if victim not in masters and len(masters) == 3 and self._redis_ok(skip=victim):
                return victim
            time.sleep(0.5)
        raise TimeoutError(f"no replica of Redis {victim} was promoted in {failover_timeout} s")

    def wait_redis_ok(self, timeout: float = 60) -> None:
        """Wait until every running node reports ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while not self._redis_ok():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster not ok after {timeout} s")
            time.sleep(0.5)

    def _redis_ok(self, skip: int | None = None) -> bool:
        for port in self.redis_ports:
            if port == skip or f"redis {port}" in self._killed:
                continue
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
                    info = client.cluster("INFO")
            except redis.RedisError:
                return False
            if not isinstance(info, dict) or str(info.get("cluster_state")) != "ok":
                return False
        return True

    # -- both -----------------------------------------------------------------------------
    def restore(self) -> None:
        """Start every node a test killed (``up`` starts whatever is missing) and wait."""
        if self._killed:
            _checked("up", timeout=UP_TIMEOUT)
            self._killed.clear()


def _parse_node(address: str, fields: dict[str, object]) -> RedisNode:
    master_id = str(fields.get("master_id", "-"))
    return RedisNode(
        node_id=str(fields["node_id"]),
        port=int(address.rsplit(":", 1)[1]),
        flags=frozenset(str(fields["flags"]).split(",")),
        master_id=None if master_id == "-" else master_id,
    )


def _parse_urls(text: str) -> tuple[list[str], str]:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return values["FLOWMESH_AMQP_URL"].split(","), values["FLOWMESH_REDIS_URL"]


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """The local cluster, brought up for the session unless it already runs."""
    if _unavailable_reason:
        _unavailable(_unavailable_reason[0])
    missing = [
        what
        for what, present in [
            ("redis-server", shutil.which("redis-server") is not None),
            ("redis-cli", shutil.which("redis-cli") is not None),
            (str(RABBITMQ_SERVER), RABBITMQ_SERVER.exists()),
        ]
        if not present
    ]
    if missing:
        _unavailable(f"the local cluster needs {', '.join(missing)} (Debian packages)")
    started = False
    if _script("status", timeout=120).returncode != 0:
        result = _script("up", timeout=UP_TIMEOUT)
        if result.returncode != 0:
            _unavailable(
                "scripts/cluster.sh up could not start the local cluster:\n"
                + "\n".join(result.stderr.splitlines()[-15:])
            )
        started = True
    amqp_urls, redis_url = _parse_urls(_checked("env"))
    ports = [
        int(hostport.rsplit(":", 1)[1]) for hostport in redis_url.split("://", 1)[1].split(",")
    ]
    cluster = LocalCluster(amqp_urls, redis_url, ports)
    try:
        yield cluster
    finally:
        if started and os.environ.get("FLOWMESH_CLUSTER_KEEP") != "1":
            _script("down", timeout=120)


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The local cluster for one test; nodes the test killed are started again afterwards."""
    try:
        yield local_cluster
    finally:
        local_cluster.restore()


@pytest.fixture(scope="session")
def cluster_amqp_urls(local_cluster: LocalCluster) -> list[str]:
    """``amqp://guest:guest@127.0.0.1:5701`` and its two peers (5702, 5703)."""
    return list(local_cluster.amqp_urls)


@pytest.fixture(scope="session")
def cluster_redis_url(local_cluster: LocalCluster) -> str:
    """``redis+cluster://127.0.0.1:7101,...,127.0.0.1:7106``."""
    return local_cluster.redis_url
