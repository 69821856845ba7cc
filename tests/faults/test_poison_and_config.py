"""Poison activities, bad input at the client API, and unsafe configuration refused at start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from flowmesh import (
    Client,
    InvalidInstanceIdError,
    PayloadTooLargeError,
    SerializationError,
    WorkflowStatus,
)
from flowmesh.model import ActivityFailed, ActivityScheduled
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.faults.apps import chain_result
from tests.harness.ledger import Ledger
from tests.harness.processes import REPO, Services, WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(150)]

APPS = "tests.faults.apps"
MAX_DELIVERIES = 5  # WorkerOptions.max_deliveries default
T = TypeVar("T")


def _json_lines(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


# -- 4. poison activity ----------------------------------------------------------------------------


class Supervisor:
    """Restarts fault-act whenever no replica of it is alive (like a process manager), bounded."""

    def __init__(self, workers: WorkerProcesses, limit: int = 20) -> None:
        self.workers = workers
        self.limit = limit
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def until(self, work: Awaitable[T]) -> T:
        """Await ``work``; fail at once if the restart budget runs out first."""
        assert self._task is not None
        waiter = asyncio.ensure_future(work)
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            pytest.fail(f"fault-act restarted {self.limit} times: the poison task never gave up")
        return waiter.result()

    async def _run(self) -> None:
        while not self._stop.is_set():
            if not self.workers.alive("fault-act"):
                if self.restarts >= self.limit:
                    return
                self.restarts += 1
                self.workers.start("fault-act", module=APPS)
            await asyncio.sleep(0.1)


def poison_log_lines(workers: WorkerProcesses) -> list[dict[str, object]]:
    return [
        e
        for app, _, path in workers.processes
        if app == "fault-act"
        for e in _json_lines(path)
        if e.get("event") == "poison activity task failed"
    ]


async def test_poison_activity_fails_after_max_deliveries_and_the_app_recovers(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """``crash_worker`` SIGKILLs its fault-act replica every time it runs; a supervisor here
    restarts the replica (at most 20 times). Each kill returns the unacked task to its quorum
    queue, which counts the redelivery in x-delivery-count (verified on the real broker: the
    delivery after the 5th kill carries count 6); that delivery fails the attempt with
    flowmesh.PoisonTaskError instead of running it. With the retry policy (2 attempts) that
    is exactly 10 kills, then the workflow returns "gave up: ActivityFailedError". Chain
    workflows on the same app afterwards complete exactly once.
    """
    workers.wait_ready(workers.start("fault-host", module=APPS))
    workers.wait_ready(workers.start("fault-act", module=APPS))
    supervisor = Supervisor(workers)
    supervisor.start()
    ledger = Ledger("fault-host", workers)
    try:
        await ledger.start(
            client, "poison", None, "gave up: ActivityFailedError", instance_id="poison-alone"
        )
        await supervisor.until(ledger.wait_all(client, timeout=90))
        kills = supervisor.restarts
        for i in range(10):
            await ledger.start(client, "chain", 3, chain_result(3), instance_id=f"after-poison-{i}")
        await ledger.wait_all(client, timeout=60)
    finally:
        await supervisor.stop()
    store = await store_for("fault-host")
    report = await ledger.verify(store)
    print(f"ledger: {report}")
    print(f"fault-act killed and restarted {kills} times")
    assert report.ok, report.explain()

    record = await store.load("poison-alone")
    assert record is not None
    attempts = [e for e in record.history if isinstance(e, ActivityScheduled)]
    failures = [e for e in record.history if isinstance(e, ActivityFailed)]
    assert [a.attempt for a in attempts] == [1, 2]
    assert [f.failure.error_type for f in failures] == ["flowmesh.PoisonTaskError"] * 2
    print(f"poison failure: {failures[0].failure.message}")
    assert f"delivered {MAX_DELIVERIES + 1} times" in failures[0].failure.message
    # Per attempt: one kill on the work queue, then MAX_DELIVERIES kills in quarantine.
    assert kills == 2 * (MAX_DELIVERIES + 1), "each kill must count as exactly one redelivery"
    # The side-effect log agrees: every kill was one run, all but each attempt's first re-runs.
    assert report.reexecuted_by_activity["crash_worker"] == kills - 2, report.explain()
    assert [(e["instance_id"], e["deliveries"]) for e in poison_log_lines(workers)] == [
        ("poison-alone", MAX_DELIVERIES + 1)
    ] * 2


async def test_work_queued_beside_a_poison_task_is_not_failed_as_poison(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """Ten chain workflows whose first tasks wait on fault-act's queue right behind the poison
    task still complete. The restarted replica takes the poison task and its neighbours in one
    prefetch window and the kill returns all of them; redelivered tasks then move to the
    quarantine queue, where each replica runs one at a time, so only the poison task's own
    deaths count toward its limit and the innocent tasks run normally.
    """
    workers.wait_ready(workers.start("fault-host", module=APPS))
    ledger = Ledger("fault-host", workers)
    await ledger.start(client, "poison", None, "gave up: ActivityFailedError", instance_id="p-2")
    for i in range(10):
        await ledger.start(client, "chain", 3, chain_result(3), instance_id=f"beside-poison-{i}")
    supervisor = Supervisor(workers)
    supervisor.start()  # no fault-act yet: it starts with the poison task and its neighbours
    try:
        await supervisor.until(ledger.wait_all(client, timeout=90))
    finally:
        await supervisor.stop()
    store = await store_for("fault-host")
    report = await ledger.verify(store)
    victims = {
        str(e["instance_id"]) for e in poison_log_lines(workers) if e["instance_id"] != "p-2"
    }
    print(f"ledger: {report}")
    print(f"restarts: {supervisor.restarts}; failed as poison: {sorted(victims)}")
    assert report.ok, report.explain()


# -- 5. bad input at the client API ----------------------------------------------------------------


class Opaque:
    """Not serialisable."""


async def test_bad_input_at_the_api_is_refused_and_writes_nothing(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """Against the real broker: a non-serialisable input raises SerializationError naming the
    type and "input of workflow"; a 5 MiB input raises PayloadTooLargeError naming the 4 MiB
    limit; malformed instance IDs raise InvalidInstanceIdError -- all before anything is
    published (fault-host's work queue depth is unchanged, no host needed). With a host
    running, a start of an unknown workflow name is kept for a deployment that has it, and
    the handle and describe() say so. No instance is stored for any of them, and good
    workflows started afterwards complete.
    """
    ids: list[str] = []
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        depth = (await transport.queue_stats("fault-host")).work_messages

        bad_values: list[tuple[object, str]] = [
            (Opaque(), f"{__name__}.Opaque"),
            ({"ok": [1, {2, 3}]}, "builtins.set"),
            ([b"x", object()], "builtins.object"),
        ]
        for n, (value, type_name) in enumerate(bad_values):
            ids.append(f"bad-input-ser-{n}")
            with pytest.raises(SerializationError) as caught:
                await client.start_workflow(
                    "chain", value, app_id="fault-host", instance_id=ids[-1]
                )
            print(f"SerializationError: {caught.value}")
            assert "input of workflow 'chain'" in str(caught.value)
            assert type_name in str(caught.value)

        ids.append("bad-input-big")
        started = time.monotonic()
        with pytest.raises(PayloadTooLargeError) as too_large:
            await client.start_workflow(
                "chain", b"\x00" * (5 * 1024 * 1024), app_id="fault-host", instance_id=ids[-1]
            )
        print(f"PayloadTooLargeError: {too_large.value}")
        assert "4194304-byte limit" in str(too_large.value)
        assert "input of workflow 'chain'" in str(too_large.value)
        assert time.monotonic() - started < 3, "refused only after a round trip?"

        bad_ids = ("-leading-dash", "has space", "a/b", "x" * 201, "new\nline", "ümlaut", "a\x00")
        for bad_id in bad_ids:
            with pytest.raises(InvalidInstanceIdError):
                await client.start_workflow("chain", 1, app_id="fault-host", instance_id=bad_id)

        assert (await transport.queue_stats("fault-host")).work_messages == depth, (
            "something was published"
        )

        host = workers.start("fault-host", module=APPS)
        act = workers.start("fault-act", module=APPS)
        for process in (host, act):
            workers.wait_ready(process)
        ids.append("bad-input-unknown")
        # Not refused (a replica of a newer deployment may have it): kept, and said so.
        waiting = await client.start_workflow(
            "no_such_workflow", 1, app_id="fault-host", instance_id=ids[-1]
        )
        print(f"waiting_reason: {waiting.waiting_reason}")
        assert "workflow 'no_such_workflow' is not registered" in waiting.waiting_reason
        pending = await waiting.describe()
        assert pending.status is WorkflowStatus.PENDING
        assert pending.waiting_on[0].kind == "deployment"

        ledger = Ledger("fault-host", workers)
        for i in range(3):
            await ledger.start(client, "chain", 3, chain_result(3), instance_id=f"bad-input-ok-{i}")
        await ledger.wait_all(client, timeout=30)
        store = await store_for("fault-host")
        report = await ledger.verify(store)
        print(f"ledger: {report}")
        assert report.ok, report.explain()
        # Only the kept start of the unregistered workflow may be in the queue.
        assert (await transport.queue_stats("fault-host")).work_messages <= 1

    for instance_id in ids:
        assert await store.load(instance_id) is None, f"{instance_id} was stored"
    listed = {s.instance_id for s in await store.list_instances(limit=100_000)}
    assert listed.isdisjoint(ids)


async def test_empty_instance_id_is_refused(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """An explicit empty instance ID is malformed (IDs are 1-200 characters; get_workflow('')
    refuses it) and must raise InvalidInstanceIdError instead of silently starting the
    workflow under a random ID, which defeats deduplication by ID. (``chain(0)`` finishes at
    once, so the stray instance the bug creates leaves nothing pending.)"""
    with pytest.raises(InvalidInstanceIdError):
        client.get_workflow("", app_id="fault-host")
    workers.wait_ready(workers.start("fault-host", module=APPS))
    store = await store_for("fault-host")
    before = {s.instance_id for s in await store.list_instances(limit=100_000)}
    ledger = Ledger("fault-host", workers)
    try:
        with pytest.raises(InvalidInstanceIdError):
            await client.start_workflow("chain", 0, app_id="fault-host", instance_id="")
    finally:
        await asyncio.sleep(1.0)
        created = {s.instance_id for s in await store.list_instances(limit=100_000)} - before
        for instance_id in created:  # what the bug started: it must still finish cleanly
            ledger.expected[instance_id] = 0
        await ledger.wait_all(client, timeout=20)
        report = await ledger.verify(store)
        print(f"ledger: {report}")
        print(f"instances created by the empty ID: {sorted(created)}")
        assert report.ok, report.explain()


# -- 6. unsafe Redis refused; activity-only apps need no Redis -------------------------------------


def _worker_command(app_id: str) -> list[str]:
    return [
        sys.executable, "-m", "flowmesh.cli", "--log-format", "json", "--log-level", "debug",
        "worker", "--app-id", app_id, "--module", APPS, "--drain-timeout", "5",
    ]  # fmt: skip


def _start_raw(
    workers: WorkerProcesses, app_id: str, services: Services, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a worker without the harness's --allow-unsafe-redis (the same env otherwise);
    registered with ``workers`` so it is stopped and its log shown on failure."""
    full_env = {
        **os.environ,
        "FLOWMESH_AMQP_URL": services.amqp_url,
        "FLOWMESH_REDIS_URL": services.redis_url,
        "FLOWMESH_REDIS_PREFIX": services.key_prefix,
        **workers.effects_env,
        **env,
    }
    full_env.pop("FLOWMESH_ALLOW_UNSAFE_REDIS", None)
    full_env.update(env)
    log_path = workers.log_dir / f"raw-{app_id}-{len(workers.processes)}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _worker_command(app_id), cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    workers.processes.append((app_id, process, log_path))
    return process, log_path


def _redis_is_unsafe(url: str) -> bool:
    server = redis.Redis.from_url(url)
    try:
        settings: dict[str, str] = server.config_get("appendonly")  # type: ignore[assignment]
    finally:
        server.close()
    return settings.get("appendonly") in ("no", b"no")


async def test_unsafe_redis_is_refused_unless_allowed(
    workers: WorkerProcesses, services: Services
) -> None:
    """A workflow-hosting worker against the dev Redis (appendonly no, save "") exits non-zero
    within 20 s with one error line about persistence and the --allow-unsafe-redis escape
    hatch, without serving; with FLOWMESH_ALLOW_UNSAFE_REDIS=1 it starts and logs a
    structured warning, and stops cleanly on SIGTERM."""
    if not _redis_is_unsafe(services.redis_url):
        pytest.skip("the test Redis has persistence on: nothing unsafe to refuse")
    refused, log_path = _start_raw(workers, "fault-host", services)
    try:
        code = refused.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not refuse the unsafe Redis within 20 s")
    output = log_path.read_text(errors="replace")
    plain = [line for line in output.splitlines() if line.strip() and not line.startswith("{")]
    print(f"exit {code}; error output: {plain}")
    assert code != 0
    assert "worker started" not in output
    assert len(plain) == 1, f"expected one error line, got {plain}"
    assert plain[0].startswith("Error: ConfigurationError: Redis may lose workflow histories")
    assert "persistence" in plain[0] and "--allow-unsafe-redis" in plain[0]

    allowed, log_path = _start_raw(workers, "fault-host", services, FLOWMESH_ALLOW_UNSAFE_REDIS="1")
    workers.wait_ready(allowed)
    warnings = [e for e in _json_lines(log_path) if e.get("event") == "unsafe redis configuration"]
    print(f"warnings: {[w.get('problem') for w in warnings]}")
    assert warnings and all(w.get("level") == "warning" for w in warnings)
    assert any("persistence" in str(w.get("problem")) for w in warnings)
    allowed.send_signal(signal.SIGTERM)
    assert allowed.wait(timeout=20) == 0


async def test_activity_only_app_needs_neither_the_flag_nor_redis(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """fault-act (activities only) starts without --allow-unsafe-redis and with a Redis URL
    where nothing listens (redis://127.0.0.1:1/0), logs nothing about Redis, and serves the
    activities of chain workflows hosted by a normal fault-host: all complete once (and the
    host logs one "workflow completed" line each, the evidence the ledger counts)."""
    host = workers.start("fault-host", module=APPS)
    act, log_path = _start_raw(
        workers, "fault-act", services, FLOWMESH_REDIS_URL="redis://127.0.0.1:1/0"
    )
    for process in (host, act):
        workers.wait_ready(process)
    ledger = Ledger("fault-host", workers)
    for i in range(5):
        await ledger.start(client, "chain", 3, chain_result(3), instance_id=f"act-only-{i}")
    await ledger.wait_all(client, timeout=30)
    report = await ledger.verify(await store_for("fault-host"))
    print(f"ledger: {report}")
    assert report.ok, report.explain()
    assert act.poll() is None
    assert "redis" not in log_path.read_text(errors="replace").lower()
    completed = [e for e in _json_lines(log_path) if e.get("event") == "activity completed"]
    assert len(completed) == 15, "the activities did not run on the Redis-less replica"
    assert workers.completions("fault-host") == dict.fromkeys(ledger.expected, 1)
