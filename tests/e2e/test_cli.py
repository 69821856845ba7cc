"""The operator CLI against real RabbitMQ, Redis and worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from flowmesh.transport import Delivery, Outgoing, QueueKind
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.harness.processes import REPO, Services, WorkerProcesses

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(180)]


def flowmesh(
    services: Services, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with the session's broker, Redis and key prefix."""
    env = {
        **os.environ,
        "FLOWMESH_AMQP_URL": services.amqp_url,
        "FLOWMESH_REDIS_URL": services.redis_url,
        "FLOWMESH_REDIS_PREFIX": services.key_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "flowmesh.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_operator_commands_start_inspect_and_control_workflows(
    services: Services, workers: WorkerProcesses
) -> None:
    """start --wait, status, history (through the broker only), restart, purge and apps
    all work."""
    for app_id in ("app1", "app2", "app3"):
        workers.start(app_id)
    done = flowmesh(
        services, "start", "pipeline", "--app-id", "app1", "--instance-id", "cli-1",
        "--input", json.dumps({"text": "from the cli"}), "--wait", "--timeout", "60",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "started pipeline as cli-1 on app1" in done.stdout
    assert "FROM THE CLI" in done.stdout

    status = flowmesh(services, "status", "cli-1", "--app-id", "app1")
    assert status.returncode == 0, status.stderr
    assert "status:        COMPLETED" in status.stdout

    history = flowmesh(services, "history", "cli-1", "--app-id", "app1")
    assert history.returncode == 0, history.stderr
    for kind in ("WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "WorkflowCompleted"):
        assert kind in history.stdout

    apps = flowmesh(services, "apps", "app1", "app2", "app3")
    assert apps.returncode == 0, apps.stderr
    rows = {line.split()[0]: line.split() for line in apps.stdout.splitlines()[2:]}
    assert rows["app2"][2] == "1"  # one consumer (replica) on app2's work queue
    assert rows["app1"][4] == "1"  # app1 hosts workflows: one consumer on its reply queue

    restart = flowmesh(
        services, "restart", "cli-1", "--app-id", "app1", "--new-instance-id", "cli-2"
    )
    assert restart.returncode == 0, restart.stderr
    assert "restarted cli-1 as cli-2 on app1" in restart.stdout
    refused = flowmesh(services, "restart", "nobody", "--app-id", "app1")
    assert refused.returncode == 1 and "WorkflowNotFoundError" in refused.stderr

    purge = flowmesh(services, "purge", "cli-1", "--app-id", "app1")
    assert purge.returncode == 0, purge.stderr
    assert "cli-1 purged: 1 instance deleted" in purge.stdout  # waited for the host: gone now
    gone = flowmesh(services, "status", "cli-1", "--app-id", "app1")
    assert "WorkflowNotFoundError" in gone.stderr


def test_event_suspend_resume_terminate_from_the_cli(
    services: Services, workers: WorkerProcesses
) -> None:
    """An instance waiting on nothing but its child can be suspended, resumed and terminated."""
    workers.start("e2e-host", module="tests.e2e.apps")
    workers.start("e2e-child", module="tests.e2e.apps")
    started = flowmesh(
        services, "start", "parent_of_waiter", "--app-id", "e2e-host", "--instance-id", "cli-parent"
    )
    assert started.returncode == 0, started.stderr
    # Control commands wait for the host's commit and show the status it left.
    for verb, status in (("suspend", "SUSPENDED"), ("resume", "RUNNING")):
        result = flowmesh(services, verb, "cli-parent", "--app-id", "e2e-host", "--reason", "ops")
        assert result.returncode == 0, result.stderr
        assert f"{verb}: cli-parent is {status}" in result.stdout
    event = flowmesh(
        services,
        "raise-event",
        "cli-parent-child",
        "never",
        "--app-id",
        "e2e-child",
        "--data",
        '{"a": 1}',
    )
    assert event.returncode == 0, event.stderr
    child = flowmesh(services, "status", "cli-parent-child", "--app-id", "e2e-child")
    assert "status:        COMPLETED" in child.stdout  # the event released the child
    parent = flowmesh(services, "status", "cli-parent", "--app-id", "e2e-host")
    deadline = time.monotonic() + 20
    while "COMPLETED" not in parent.stdout and time.monotonic() < deadline:
        time.sleep(0.3)
        parent = flowmesh(services, "status", "cli-parent", "--app-id", "e2e-host")
    assert "status:        COMPLETED" in parent.stdout
    assert "unreachable" in parent.stdout


def test_cli_errors_are_one_clear_line(services: Services) -> None:
    """Unknown instance, bad JSON and an unreachable broker: exit 1, one line, no traceback."""
    missing = flowmesh(services, "status", "nope", "--app-id", "app1", timeout=60)
    bad_json = flowmesh(services, "start", "pipeline", "--app-id", "app1", "--input", "{not json")
    env_url = "amqp://guest:s3cr3t-pw@127.0.0.1:1/"
    unreachable = subprocess.run(
        [sys.executable, "-m", "flowmesh.cli", "status", "x", "--app-id", "app1",
         "--amqp-url", env_url],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    for result in (missing, bad_json, unreachable):
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert len(error_lines) == 1, result.stderr
    assert "AppUnavailableError" in missing.stderr
    assert "not valid JSON" in bad_json.stderr
    assert "s3cr3t-pw" not in unreachable.stderr


def test_a_history_past_its_limit_fails_the_run_and_names_continue_as_new(
    services: Services, workers: WorkerProcesses
) -> None:
    """A workflow that never continues-as-new, on a host with --max-history-events 30 (env),
    fails at the step after its history reached 30 events: status FAILED, error type
    flowmesh.HistoryLimitExceeded, a message naming continue_as_new, and a history that ends
    with the failure just past the limit. (On main it ran on and on.)"""
    workers.start("e2e-host", module="tests.e2e.apps", env={"FLOWMESH_MAX_HISTORY_EVENTS": "30"})
    workers.start("e2e-crunch", module="tests.e2e.apps")
    started = flowmesh(
        services, "start", "endless", "--app-id", "e2e-host", "--instance-id", "long-1"
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    status = flowmesh(services, "status", "long-1", "--app-id", "e2e-host")
    while "FAILED" not in status.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        status = flowmesh(services, "status", "long-1", "--app-id", "e2e-host")
    print(status.stdout)
    assert "status:        FAILED" in status.stdout
    assert "HistoryLimitExceeded" in status.stdout
    assert "continue_as_new" in status.stdout
    history = flowmesh(services, "history", "long-1", "--app-id", "e2e-host")
    rows = [line for line in history.stdout.splitlines() if line[:1].isdigit()]
    print(f"history: {len(rows)} events, last: {rows[-1]}")
    assert 30 < len(rows) <= 30 + 4  # at most one step past the limit, then the failure
    assert "WorkflowCompleted" in rows[-1] and "FAILED" in rows[-1]


async def _dead_letter(services: Services, app_id: str, bodies: dict[str, bytes]) -> None:
    """Put ``bodies`` (message ID -> body) through app_id's work queue into its dead queue,
    the way a worker dead-letters (with a reason and the original queue)."""
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        await transport.declare_app(app_id)
        for message_id, body in bodies.items():
            await transport.publish([Outgoing(app_id, QueueKind.WORK, body, message_id)])
        done = asyncio.Event()
        seen: list[str] = []

        async def refuse(delivery: Delivery) -> None:
            await transport.dead_letter(delivery, app_id, f"test: refused {delivery.message_id}")
            seen.append(delivery.message_id)
            if len(seen) == len(bodies):
                done.set()

        subscription = await transport.consume(app_id, QueueKind.WORK, refuse, prefetch=10)
        await asyncio.wait_for(done.wait(), 20)
        await subscription.cancel()


async def _queue_counts(services: Services, app_id: str) -> tuple[int, int]:
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        stats = await transport.queue_stats(app_id)
    return stats.work_messages, stats.dead_messages


async def test_dead_letters_are_listed_shown_redriven_and_dropped(services: Services) -> None:
    """`flowmesh dead-letters` lists an app's dead letters (table and JSON: reason, original
    queue, size), shows one decoded or says why it does not decode, redrives one to the
    queue it came from (the dead copy goes), drops the rest with --all --yes, and refuses a
    bulk command without IDs or --all. Listing changes nothing."""
    app_id = f"dl-{uuid.uuid4().hex[:8]}"
    await _dead_letter(services, app_id, {"dl-1": b"\xc1garbage", "dl-2": b"x" * 100, "dl-3": b""})
    assert await _queue_counts(services, app_id) == (0, 3)

    listed = flowmesh(services, "dead-letters", "list", "--app-id", app_id, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    print(listed.stdout)
    assert [row["message_id"] for row in rows] == ["dl-1", "dl-2", "dl-3"]
    assert rows[1]["reason"] == "test: refused dl-2" and rows[1]["bytes"] == 100
    assert {row["original_queue"] for row in rows} == {f"fm.{app_id}.work"}
    table = flowmesh(services, "dead-letters", "list", "--app-id", app_id)
    assert table.returncode == 0 and "test: refused dl-3" in table.stdout
    assert await _queue_counts(services, app_id) == (0, 3)  # listing took nothing

    shown = flowmesh(services, "dead-letters", "show", "dl-1", "--app-id", app_id)
    assert shown.returncode == 0, shown.stderr
    assert "undecodable" in shown.stdout and "test: refused dl-1" in shown.stdout
    missing = flowmesh(services, "dead-letters", "show", "nope", "--app-id", app_id)
    assert missing.returncode != 0 and "no dead-lettered message 'nope'" in missing.stderr

    redriven = flowmesh(services, "dead-letters", "redrive", "dl-2", "--app-id", app_id)
    assert redriven.returncode == 0, redriven.stderr
    assert f"dl-2: redriven to fm.{app_id}.work" in redriven.stdout
    assert await _queue_counts(services, app_id) == (1, 2)

    vague = flowmesh(services, "dead-letters", "drop", "--app-id", app_id)
    assert vague.returncode != 0 and "--all" in vague.stderr
    dropped = flowmesh(services, "dead-letters", "drop", "--all", "--yes", "--app-id", app_id)
    assert dropped.returncode == 0, dropped.stderr
    assert "[2/2] dl-3: dropped" in dropped.stdout
    assert await _queue_counts(services, app_id) == (1, 0)
    empty = flowmesh(services, "dead-letters", "list", "--app-id", app_id, "-o", "json")
    assert json.loads(empty.stdout) == []
