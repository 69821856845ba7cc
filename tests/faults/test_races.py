"""Races between host replicas, a stale writer, and duplicate/reordered/stray deliveries.

Invariant 1 (single writer: the version-checked commit) and invariant 3 (idempotent apply).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from flowmesh import Client, VersionConflictError, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityCompleted,
    ActivityResult,
    ActivityScheduled,
    FailureDetails,
    HistoryEvent,
    StepStarted,
    TimerCreated,
    TimerDue,
)
from flowmesh.store import Commit
from flowmesh.transport import Outgoing, QueueKind
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.faults.apps import chain_result
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(150)]

APPS = "tests.faults.apps"
DEBUG = {"FLOWMESH_LOG_LEVEL": "debug"}  # "step committed" lines carry the committed version


# -- helpers ---------------------------------------------------------------------------------------


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of one worker (other output, e.g. tracebacks, is skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def commits_by_replica(
    workers: WorkerProcesses, app_id: str, instance_ids: set[str]
) -> dict[int, list[tuple[str, int | None]]]:
    """pid -> (instance_id, version) of every commit the replica logged for ``instance_ids``.

    Non-final commits log "step committed" with the version (at debug level); the final one
    logs "workflow completed" without it (None here).
    """
    result: dict[int, list[tuple[str, int | None]]] = {}
    for app, process, path in workers.processes:
        if app != app_id:
            continue
        commits = result.setdefault(process.pid, [])
        for event in log_events(path):
            instance_id = event.get("instance_id")
            if instance_id not in instance_ids:
                continue
            if event.get("event") == "step committed":
                commits.append((str(instance_id), int(event["version"])))
            elif event.get("event") == "workflow completed":
                commits.append((str(instance_id), None))
    return result


def check_one_writer_per_version(
    commits: dict[int, list[tuple[str, int | None]]], final_versions: dict[str, int]
) -> list[str]:
    """Problems if a version was committed twice, skipped, or completion logged twice."""
    problems = []
    for instance_id, final in final_versions.items():
        versions = Counter(
            v for c in commits.values() for i, v in c if i == instance_id and v is not None
        )
        completions = sum(
            1 for c in commits.values() for i, v in c if i == instance_id and v is None
        )
        twice = sorted(v for v, n in versions.items() if n > 1)
        if twice:
            problems.append(f"{instance_id}: versions committed twice: {twice}")
        if sorted(versions) != list(range(1, final)):
            problems.append(f"{instance_id}: versions {sorted(versions)} != 1..{final - 1}")
        if completions != 1:
            problems.append(f"{instance_id}: completion logged {completions} times")
    return problems


def rabbitmqctl_json(*args: str) -> list[dict[str, Any]]:
    """Run a rabbitmqctl listing and parse its JSON output."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args, "--formatter", "json"],
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    rows: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return rows


def queue_messages(vhost: str, queue: str) -> int:
    """Ready plus unacknowledged messages of ``queue`` (0 once everything was settled)."""
    for row in rabbitmqctl_json("list_queues", "-p", vhost, "name", "messages"):
        if row["name"] == queue:
            return int(row["messages"])
    return 0


async def wait_settled(vhost: str, queue: str, timeout: float = 30.0) -> None:
    """Wait until every message published to ``queue`` so far was consumed and acked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(queue_messages, vhost, queue) == 0:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{queue} still holds messages after {timeout}s")


def unacked_on_connections_with_heartbeat(vhost: str, heartbeat: int) -> int:
    """Unacked deliveries held by the connections that negotiated ``heartbeat`` seconds."""
    connections = {
        str(row["pid"])
        for row in rabbitmqctl_json("list_connections", "-p", vhost, "pid", "timeout")
        if row["timeout"] == heartbeat
    }
    return sum(
        int(row["messages_unacknowledged"])
        for row in rabbitmqctl_json(
            "list_channels", "-p", vhost, "connection", "messages_unacknowledged"
        )
        if str(row["connection"]) in connections
    )


def connections_with_heartbeat(vhost: str, heartbeat: int) -> int:
    """How many connections of ``vhost`` negotiated ``heartbeat`` seconds."""
    rows = rabbitmqctl_json("list_connections", "-p", vhost, "timeout")
    return sum(1 for row in rows if row["timeout"] == heartbeat)


def with_heartbeat(url: str, seconds: int) -> str:
    """``url`` with an AMQP heartbeat of ``seconds`` (aiormq reads the query)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=f"heartbeat={seconds}"))


# -- 1. two replicas racing on one history ---------------------------------------------------------


async def test_fan_in_of_500_results_at_once_on_two_host_replicas(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """Two fan-ins of 500 activities; their 1000 results arrive in one burst at two host
    replicas, which both commit steps of the same histories. Every version of each history is
    committed by exactly one replica (debug "step committed" lines of both replicas), both
    replicas did commit (so they really raced), every result is applied once, one completion.
    """
    hosts = [workers.start("fault-host", module=APPS, env=DEBUG) for _ in range(2)]
    for process in hosts:
        workers.wait_ready(process)
    ledger = Ledger("fault-host", workers)
    ids = [f"fanin500-{i}" for i in range(2)]
    for instance_id in ids:
        await ledger.start(client, "fan_in", 500, chain_result(500), instance_id=instance_id)
    # Hold the activity app back until all 1000 tasks are queued: then results come at once.
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        deadline = time.monotonic() + 30
        while (await transport.queue_stats("fault-act")).work_messages < 1000:
            assert time.monotonic() < deadline, "the fan-out did not reach fault-act's queue"
            await asyncio.sleep(0.2)
    for _ in range(2):
        workers.start("fault-act", module=APPS, concurrency=64)
    await ledger.wait_all(client, timeout=60)
    store = await store_for("fault-host")
    report = await ledger.verify(store)
    print(f"ledger: {report}")
    assert report.ok, report.explain()

    finals: dict[str, int] = {}
    for instance_id in ids:
        record = await store.load(instance_id)
        assert record is not None
        finals[instance_id] = record.state.version
        kinds = Counter(type(e).__name__ for e in record.history)
        assert kinds["ActivityScheduled"] == 500 and kinds["ActivityCompleted"] == 500, kinds
    commits = commits_by_replica(workers, "fault-host", set(ids))
    print(
        "commits per replica: "
        + ", ".join(f"pid {pid}: {len(c)}" for pid, c in commits.items())
        + f"; final versions: {finals}"
    )
    assert check_one_writer_per_version(commits, finals) == []
    writers = {pid for pid, c in commits.items() for i, _ in c if i in ids}
    assert len(writers) == 2, "only one replica committed: the race did not happen"


async def test_stopped_replica_resumes_as_a_stale_writer_and_is_fenced(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """SIGSTOP host replica A while it holds in-flight deliveries of 50 running workflows.
    A's AMQP heartbeat is 5 s, so the broker drops its connection and replica B gets A's
    deliveries: every workflow completes while A is still frozen. Then SIGCONT: A resumes with
    executions and deliveries that are behind the store. Its commits on old versions are
    rejected by the version check (silently, VersionConflictError -> reload -> re-run, where
    the results are duplicates and commit nothing): no instance's version or history moves
    after A resumes, no version was committed twice (debug "step committed" lines of A and B),
    and a stale commit made here directly on the real store raises VersionConflictError.
    A's resumed stale work shows in its log as "transport.settle_failed" (acks of deliveries
    the broker had already handed to B).
    """
    stale_url = with_heartbeat(services.amqp_url, 5)
    a = workers.start("fault-host", module=APPS, env={**DEBUG, "FLOWMESH_AMQP_URL": stale_url})
    b = workers.start("fault-host", module=APPS, env=DEBUG)
    act = workers.start("fault-act", module=APPS)
    for process in (a, b, act):
        workers.wait_ready(process)
    ledger = Ledger("fault-host", workers)
    ids = [f"stale-{i}" for i in range(50)]
    await asyncio.gather(
        *(ledger.start(client, "chain", 6, chain_result(6), instance_id=i) for i in ids)
    )
    os.kill(a.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        await asyncio.sleep(1.0)  # results keep being pushed to the frozen A up to its prefetch
        held = await asyncio.to_thread(unacked_on_connections_with_heartbeat, services.vhost, 5)
        print(f"A (pid {a.pid}) holds {held} unacked deliveries while stopped")
        assert held > 0, "A held no in-flight work when stopped: nothing stale to test"
        # The broker drops A after missed heartbeats and redelivers its work to B.
        statuses = await ledger.wait_all(client, timeout=60)
        assert a.poll() is None, "A must still be alive (frozen)"
        assert len(statuses) == len(ids), "B did not finish A's work while A was frozen"
        assert await asyncio.to_thread(connections_with_heartbeat, services.vhost, 5) == 0
        print(f"all done by B {time.monotonic() - stopped_at:.1f}s after stopping A")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    store = await store_for("fault-host")
    before = {i: await store.load(i) for i in ids}
    # A resumes: reconnects, handles what it still had buffered, sweeps outbox and timers.
    deadline = time.monotonic() + 20
    reconnected = 0
    while reconnected < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        reconnected = await asyncio.to_thread(connections_with_heartbeat, services.vhost, 5)
    assert reconnected == 2, "A did not reconnect after SIGCONT"
    await asyncio.sleep(3.0)
    assert a.poll() is None, "A died after SIGCONT"
    report = await ledger.verify(store)
    print(f"ledger: {report}")
    assert report.ok, report.explain()
    moved = []
    for instance_id in ids:
        after = await store.load(instance_id)
        old = before[instance_id]
        assert after is not None and old is not None
        if after.state.version != old.state.version or after.history != old.history:
            moved.append(instance_id)
    assert moved == [], f"histories changed after the stale replica resumed: {moved}"

    finals = {i: r.state.version for i, r in before.items() if r is not None}
    commits = commits_by_replica(workers, "fault-host", set(ids))
    a_log = next(path for _, process, path in workers.processes if process is a)
    a_settle_failed = [e for e in log_events(a_log) if e.get("event") == "transport.settle_failed"]
    print(
        f"commits: A {len(commits.get(a.pid, []))}, B {len(commits.get(b.pid, []))}; "
        f"A's acks refused after resume: {len(a_settle_failed)}"
    )
    assert check_one_writer_per_version(commits, finals) == []

    # The fence itself, on the real store: a commit on an old version is refused.
    target = before[ids[0]]
    assert target is not None
    stale = target.state.version - 1
    with pytest.raises(VersionConflictError):
        await store.commit(
            Commit(
                ids[0],
                stale,
                dataclasses.replace(target.state, version=stale + 1),
                append=(StepStarted(datetime.now(UTC)),),
            )
        )
    assert await store.load(ids[0]) == target


# -- 2. duplicate, reordered and stray results -----------------------------------------------------


def _scheduled(history: tuple[HistoryEvent, ...], name: str) -> list[ActivityScheduled]:
    return [e for e in history if isinstance(e, ActivityScheduled) and e.name == name]


async def test_duplicate_reordered_and_stray_results_leave_histories_unchanged(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """Results are applied once. For finished chain and fan-in workflows, every result is
    replayed with its true output and with a forged one, as a failure, and as a timer, in
    reverse order, plus results for seqs never scheduled: history and version stay exactly as
    they were. For a running workflow (one result applied, one task open, one not yet
    scheduled) forged duplicates of the applied result, results for unknown seqs and for the
    seq it will schedule next change nothing, and it finishes with the real outputs.
    """
    for process in (
        workers.start("fault-host", module=APPS),
        workers.start("fault-host", module=APPS),
        workers.start("fault-act", module=APPS),
    ):
        workers.wait_ready(process)
    codec = Codec()
    store = await store_for("fault-host")
    ledger = Ledger("fault-host", workers)
    await ledger.start(client, "chain", 5, chain_result(5), instance_id="dup-chain")
    await ledger.start(client, "fan_in", 20, chain_result(20), instance_id="dup-fanin")
    await ledger.wait_all(client, timeout=30)
    finished = {i: await store.load(i) for i in ("dup-chain", "dup-fanin")}

    forged_failure = FailureDetails("builtins.RuntimeError", "forged", app_id="fault-act")
    bodies: list[bytes] = []
    for instance_id, record in finished.items():
        assert record is not None and record.state.status is WorkflowStatus.COMPLETED
        results = [e for e in record.history if isinstance(e, ActivityCompleted)]
        for event in reversed(results):  # reordered: last result first
            bodies.append(
                codec.encode_message(ActivityResult(instance_id, event.seq, 1, event.output))
            )
            bodies.append(codec.encode_message(ActivityResult(instance_id, event.seq, 1, -999)))
            bodies.append(
                codec.encode_message(
                    ActivityResult(instance_id, event.seq, 2, None, forged_failure)
                )
            )
            bodies.append(codec.encode_message(TimerDue(instance_id, event.seq)))
        for timer in (e for e in record.history if isinstance(e, TimerCreated)):
            bodies.append(codec.encode_message(TimerDue(instance_id, timer.seq)))
        for seq in (999, 10_000):
            bodies.append(codec.encode_message(ActivityResult(instance_id, seq, 1, -1)))

    await ledger.start(
        client, "double_then_sleep", 8.0, [42, "slept 8.0", 100], instance_id="dup-live"
    )
    live_id = "dup-live"
    deadline = time.monotonic() + 10
    while True:
        record = await store.load(live_id)
        if record is not None and _scheduled(record.history, "sleep_for"):
            break
        assert time.monotonic() < deadline, "dup-live never reached its sleep"
        await asyncio.sleep(0.1)
    [applied] = _scheduled(record.history, "double")
    [sleeping] = _scheduled(record.history, "sleep_for")
    assert any(isinstance(e, ActivityCompleted) and e.seq == applied.seq for e in record.history)
    upcoming = sleeping.seq + 1
    live_bodies = [
        codec.encode_message(ActivityResult(live_id, applied.seq, 1, -5)),
        codec.encode_message(ActivityResult(live_id, applied.seq, 1, 42)),
        codec.encode_message(ActivityResult(live_id, applied.seq, 1, None, forged_failure)),
        codec.encode_message(TimerDue(live_id, applied.seq)),
        codec.encode_message(ActivityResult(live_id, upcoming, 1, -100)),  # not scheduled yet
        codec.encode_message(ActivityResult(live_id, 4242, 1, -7)),
        codec.encode_message(TimerDue(live_id, 4243)),
    ]

    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        await transport.publish(
            [Outgoing("fault-host", QueueKind.REPLY, body) for body in live_bodies + bodies]
        )
    await wait_settled(services.vhost, "fm.fault-host.reply")
    during = await store.load(live_id)
    assert during is not None
    assert during.state.status is WorkflowStatus.RUNNING, "the check must run while it sleeps"
    assert during.history == record.history and during.state.version == record.state.version

    for instance_id, old in finished.items():
        now = await store.load(instance_id)
        assert now is not None and old is not None
        assert now.history == old.history, f"{instance_id}: history changed"
        assert now.state == old.state, f"{instance_id}: state/version changed"

    await ledger.wait_all(client, timeout=30)
    report = await ledger.verify(store)
    print(f"ledger: {report}")
    assert report.ok, report.explain()
    final = await store.load(live_id)
    assert final is not None
    [_, _, last] = sorted(e.seq for e in final.history if isinstance(e, ActivityScheduled))
    assert last == upcoming, "the forged 'future' result did not target the seq used later"


async def test_result_for_the_open_seq_but_another_attempt_is_not_applied(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """(instance, seq, attempt) identifies a task (ActivityTask's docstring, DESIGN 3.3). While
    ``sleep_for`` (seq 1, attempt 1) runs, a result for seq 1 *attempt 2* is injected: it is not
    this task's result and must leave history unchanged; the workflow must return the real
    output. Today it is applied and the workflow returns the forged one."""
    for process in (
        workers.start("fault-host", module=APPS),
        workers.start("fault-act", module=APPS),
    ):
        workers.wait_ready(process)
    store = await store_for("fault-host")
    ledger = Ledger("fault-host", workers)
    instance_id = "forged-attempt"
    await ledger.start(
        client, "double_then_sleep", 4.0, [42, "slept 4.0", 100], instance_id=instance_id
    )
    deadline = time.monotonic() + 10
    while True:
        record = await store.load(instance_id)
        if record is not None and _scheduled(record.history, "sleep_for"):
            break
        assert time.monotonic() < deadline, "never reached its sleep"
        await asyncio.sleep(0.1)
    [sleeping] = _scheduled(record.history, "sleep_for")
    forged = ActivityResult(instance_id, sleeping.seq, sleeping.attempt + 1, "forged")
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        await transport.publish(
            [Outgoing("fault-host", QueueKind.REPLY, Codec().encode_message(forged))]
        )
    await wait_settled(services.vhost, "fm.fault-host.reply")
    await ledger.wait_all(client, timeout=30)
    report = await ledger.verify(store)
    print(f"ledger: {report}")
    assert report.ok, report.explain()
