"""Fault 7: an activity running longer than RabbitMQ's consumer_timeout completes exactly once.

A private RabbitMQ node gets ``consumer_timeout`` = 3 s (and a 1 s channel tick, so the broker
checks it promptly); the activities run 8 s. Without the worker's ack deadline the broker would
close the channel holding each delivery and redeliver it, running the activity again.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flowmesh import Client
from flowmesh.codec import Codec
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.servers import PrivateRabbitMQ

pytestmark = [pytest.mark.real_services, pytest.mark.slow, pytest.mark.timeout(240)]

APPS = "tests.faults.apps"
ACTIVITY_SECONDS = 8.0


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    """A private RabbitMQ node with a 3 s consumer_timeout, checked every second."""
    with PrivateRabbitMQ(tmp_path / "rabbitmq") as node:
        node.ctl("eval", "application:set_env(rabbit, consumer_timeout, 3000).")
        node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
        yield node


async def test_activity_longer_than_consumer_timeout_completes_exactly_once(
    rabbit: PrivateRabbitMQ, redis_url: str, tmp_path: Path
) -> None:
    """Workers ack at a 1.5 s deadline and hold the task on a lease renewed with the host:
    every 8 s activity runs once, and every workflow completes once with the right output."""
    assert "3000" in rabbit.ctl("eval", "application:get_env(rabbit, consumer_timeout).")
    services = Services(rabbit.url, redis_url, f"fmct{uuid.uuid4().hex[:8]}", "/")
    workers = WorkerProcesses(services, tmp_path)
    lease_env = {"FLOWMESH_ACK_DEADLINE": "1.5", "FLOWMESH_ACTIVITY_LEASE": "6"}
    try:
        workers.wait_ready(workers.start("fault-host", module=APPS, env=lease_env))
        workers.wait_ready(workers.start("fault-act", module=APPS, env=lease_env))
        ledger = Ledger("fault-host", workers)
        async with Client(rabbit.url) as client:
            for i in range(3):
                await ledger.start(
                    client, "slow_one", ACTIVITY_SECONDS, f"slept {ACTIVITY_SECONDS}",
                    instance_id=f"long-{i}",
                )  # fmt: skip
            await ledger.wait_all(client, timeout=90)
        config = RedisStoreConfig(
            url=redis_url, app_id="fault-host", key_prefix=services.key_prefix
        )
        # Give any redelivery (the broker cancelling a held delivery) time to run again: the
        # side-effect log would show the second run.
        await asyncio.sleep(ACTIVITY_SECONDS)
        store = RedisStore(config, Codec())
        await store.connect()
        try:
            report = await ledger.verify(store)
        finally:
            await store.close()
        redelivered = _log_events(workers, "fault-act", "redelivered task moved to quarantine")
        leases = _log_events(workers, "fault-act", "long activity now runs on a lease")
        print(f"ledger: {report}")
        print(f"switched to a lease: {len(leases)}")
        assert report.ok, report.explain()
        assert len(leases) == 3  # every activity outlived the ack deadline...
        assert (report.tasks, report.runs) == (3, 3), report.explain()  # ...and ran once
        assert redelivered == []  # the broker never took a delivery back
    finally:
        workers.stop_all()
        _delete_prefix(redis_url, services.key_prefix)


def _log_events(workers: WorkerProcesses, app_id: str, event: str) -> list[dict[str, object]]:
    found = []
    for app, _, path in workers.processes:
        if app != app_id:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{event}"' in line:
                found.append(json.loads(line))
    return found


def _delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
