"""Fault 6: hostile bytes on every queue the runtime consumes never stop a consumer.

Each bad message ends in the app's dead-letter queue (exact counts), with one structured
"message dead-lettered" log line naming the queue and the reason, and workflows running at the
same time are unaffected.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from flowmesh import Client
from flowmesh.codec import Codec
from flowmesh.model import ActivityResult, ActivityTask, RaiseEvent, StartAck, StartWorkflow
from flowmesh.transport import Outgoing, QueueKind
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.faults.apps import chain_result
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(150)]

APPS = "tests.faults.apps"
CODEC_LIMIT = 4 * 1024 * 1024


def hostile_bodies() -> dict[str, bytes]:
    """Bodies no consumer may choke on, whatever the queue."""
    codec = Codec()
    valid = codec.encode_message(ActivityResult("victim", 0, 1, "x" * 100))
    start_fields = {"instance_id": "x", "name": "chain", "app_id": "fault-host", "input": 1}
    return {
        "garbage": b"\xc1\xff\x00garbage\x00\xff",
        "truncated": valid[: len(valid) // 2],
        "empty": b"",
        "oversized": b"\x00" * (CODEC_LIMIT + 1024),
        "deep-raw": b"\x91" * 100_000 + b"\xc0",
        "deep-wrapped": msgpack.packb([1, "ActivityResult", {"instance_id": "x", "seq": 0}])[:-1]
        + b"\x91" * 100_000
        + b"\xc0",
        "deep-within-limit": msgpack.packb(
            [1, "StartWorkflow", {**start_fields, "input": _nested(100)}]
        ),
        "ext": msgpack.packb(
            [1, "StartWorkflow", {**start_fields, "input": msgpack.ExtType(5, b"!")}]
        ),
        "timestamp-ext": b"\x93\x01\xadStartWorkflow\x81\xa5input\xd6\xff\x00\x00\x00\x01",
        "version-2": msgpack.packb([2, "ActivityTask", {"instance_id": "x"}]),
        "unknown-kind": msgpack.packb([1, "Nope", {}]),
        "not-an-envelope": msgpack.packb({"kind": "StartWorkflow"}),
        "bad-fields": msgpack.packb([1, "StartWorkflow", {"instance_id": 7}]),
        "history-event": msgpack.packb([1, "TimerFired", {"seq": 1}]),
        "trailing": valid + b"\x00",
    }


def _nested(depth: int) -> object:
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


def wrong_kind_bodies(queue: str) -> dict[str, bytes]:
    """Valid messages of a kind the given queue's consumer does not serve."""
    codec = Codec()
    task = ActivityTask("wk", "fault-host", "fault-act", 0, 1, "double", 1)
    result = ActivityResult("wk", 0, 1, 2)
    start = StartWorkflow("wk-start", "chain", "fault-host", 1)
    ack = StartAck("wk", True)
    kinds = {
        "fm.fault-host.work": {"result": result, "ack": ack},
        "fm.fault-host.reply": {"task": task, "start": start, "ack": ack},
        "fm.fault-act.work": {"start": start, "result": result, "ack": ack},
    }[queue]
    return {f"wrong-kind-{name}": codec.encode_message(m) for name, m in kinds.items()}  # type: ignore[arg-type]


def dead_letter_lines(workers: WorkerProcesses, app_id: str) -> list[dict[str, object]]:
    """The "message dead-lettered" log lines of every replica of ``app_id``."""
    lines = []
    for app, _, path in workers.processes:
        if app == app_id:
            lines += [e for e in _json_lines(path) if e.get("event") == "message dead-lettered"]
    return lines


def _json_lines(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


async def wait_dead(
    transport: RabbitMQTransport, expected: dict[str, int], timeout: float = 60.0
) -> dict[str, int]:
    """Wait until each app's dead queue holds the expected number, then a moment longer (to
    catch extra ones); returns the final counts."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = {app: (await transport.queue_stats(app)).dead_messages for app in expected}
        if all(counts[app] >= n for app, n in expected.items()):
            break
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)
    return {app: (await transport.queue_stats(app)).dead_messages for app in expected}


async def test_hostile_messages_on_every_consumed_queue_are_dead_lettered(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """Garbage, truncated, empty, oversized (> 4 MiB codec limit), deeply nested, ext-typed,
    wrong-version, unknown-kind and wrong-kind-for-the-queue messages on fm.fault-host.work,
    fm.fault-host.reply and fm.fault-act.work: each lands in its app's dead queue exactly
    once with one "message dead-lettered" log line (queue, reason), while 10 chain workflows
    started in between all complete exactly once.
    """
    hosts = [workers.start("fault-host", module=APPS) for _ in range(2)]
    act = workers.start("fault-act", module=APPS)
    for process in (*hosts, act):
        workers.wait_ready(process)
    plan: list[tuple[str, QueueKind, str, bytes]] = []
    for app_id, kind in (
        ("fault-host", QueueKind.WORK),
        ("fault-host", QueueKind.REPLY),
        ("fault-act", QueueKind.WORK),
    ):
        queue = f"fm.{app_id}.{kind.value}"
        for case, body in {**hostile_bodies(), **wrong_kind_bodies(queue)}.items():
            plan.append((app_id, kind, f"hostile:{queue}:{case}", body))
    expected = Counter(app_id for app_id, *_ in plan)

    ledger = Ledger("fault-host", workers)
    # No client-side size check: the shared broker keeps RabbitMQ's 128 MiB default, so the
    # oversized body reaches the workers, which must dead-letter it (a broker configured as
    # deploy/rabbitmq/flowmesh.conf refuses it: tests/faults/test_oversized_messages.py).
    config = RabbitMQConfig(url=services.amqp_url, max_message_bytes=None)
    async with RabbitMQTransport(config) as transport:
        before = {app: (await transport.queue_stats(app)).dead_messages for app in expected}
        for index, (app_id, kind, message_id, body) in enumerate(plan):
            await transport.publish([Outgoing(app_id, kind, body, message_id)])
            if index % 5 == 0:
                await ledger.start(
                    client, "chain", 3, chain_result(3), instance_id=f"hostile-chain-{index}"
                )
        after = await wait_dead(transport, {app: before[app] + n for app, n in expected.items()})
        for process in (*hosts, act):
            assert process.poll() is None, "a worker died on hostile input"
        statuses = await ledger.wait_all(client, timeout=60)
        report = await ledger.verify(await store_for("fault-host"))
        print(f"ledger: {report}")
        print(f"{len(statuses)} finished")
        print(f"dead-lettered: { {app: after[app] - before[app] for app in expected} }")
        assert report.ok, report.explain()
        assert {app: after[app] - before[app] for app in expected} == dict(expected)

    for app_id in expected:
        lines = dead_letter_lines(workers, app_id)
        by_id = Counter(str(line.get("message_id")) for line in lines)
        sent = {message_id for a, _, message_id, _ in plan if a == app_id}
        assert {m: n for m, n in by_id.items() if m in sent} == dict.fromkeys(sent, 1)
        for line in lines:
            if line.get("message_id") in sent:
                assert line.get("level") == "error" and line.get("reason"), line
                queue_kind = str(line["message_id"]).split(":")[1].rsplit(".", 1)[1]
                assert line.get("queue") == queue_kind, line
    reasons = {
        str(line["message_id"]).rsplit(":", 1)[1]: str(line["reason"])
        for line in dead_letter_lines(workers, "fault-host")
        if str(line.get("message_id", "")).startswith("hostile:fm.fault-host.reply:")
    }
    print("reasons on the reply queue:\n" + "\n".join(f"  {k}: {v}" for k, v in reasons.items()))
    assert "limit" in reasons["oversized"]
    assert "ext" in reasons["ext"] and "ext" in reasons["timestamp-ext"]
    assert "nesting" in reasons["deep-raw"] and "nesting" in reasons["deep-within-limit"]
    assert "version 2" in reasons["version-2"]
    assert "Nope" in reasons["unknown-kind"]
    assert "unexpected ActivityTask on a reply queue" in reasons["wrong-kind-task"]


async def test_200_random_byte_strings_on_the_reply_queue_are_all_dead_lettered(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """200 random byte strings (seeded; 0-600 bytes, some starting like an envelope) on
    fm.fault-host.reply: all 200 dead-lettered with a log line each, and 10 chain workflows
    running meanwhile complete exactly once."""
    host = workers.start("fault-host", module=APPS)
    act = workers.start("fault-act", module=APPS)
    for process in (host, act):
        workers.wait_ready(process)
    rng = random.Random(20261125)
    bodies = []
    for i in range(200):
        body = rng.randbytes(rng.randrange(0, 600))
        if i % 4 == 0:
            body = b"\x93\x01\xaeActivityResult" + body  # a plausible envelope, then noise
        bodies.append(body)
    ledger = Ledger("fault-host", workers)
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        before = (await transport.queue_stats("fault-host")).dead_messages
        for i in range(10):
            await ledger.start(client, "chain", 3, chain_result(3), instance_id=f"random-{i}")
            await transport.publish(
                [
                    Outgoing("fault-host", QueueKind.REPLY, body, f"random:{i * 20 + j}")
                    for j, body in enumerate(bodies[i * 20 : (i + 1) * 20])
                ]
            )
        after = await wait_dead(transport, {"fault-host": before + 200})
        assert host.poll() is None
        await ledger.wait_all(client, timeout=60)
        report = await ledger.verify(await store_for("fault-host"))
        print(f"ledger: {report}")
        print(f"dead-lettered: {after['fault-host'] - before}")
        assert report.ok, report.explain()
        assert after["fault-host"] - before == 200
    lines = [
        line
        for line in dead_letter_lines(workers, "fault-host")
        if str(line.get("message_id", "")).startswith("random:")
    ]
    assert Counter(str(line["message_id"]) for line in lines) == Counter(
        f"random:{i}" for i in range(200)
    )


async def _open_activities(client: Client, instance_id: str) -> set[int]:
    """Seqs of the activities ``instance_id`` waits for, as ``describe()`` shows them."""
    state = await client.get_workflow(instance_id, app_id="fault-host").describe()
    return {task.seq for task in state.waiting_on if task.kind == "activity"}


async def _wait_open(client: Client, instance_id: str, seqs: set[int]) -> set[int]:
    """Wait (bounded) until ``instance_id`` waits for exactly the activities ``seqs``."""
    deadline = time.monotonic() + 20
    open_seqs: set[int] = set()
    while time.monotonic() < deadline:
        open_seqs = await _open_activities(client, instance_id)
        if open_seqs == seqs:
            break
        await asyncio.sleep(0.2)
    return open_seqs


def _raw_lease(instance_id: str, seq: int, seconds: float) -> bytes:
    """An ActivityLease built by hand: the model refuses to construct (and the codec to
    encode) one with these seconds."""
    fields = {"instance_id": instance_id, "seq": seq, "attempt": 1, "lease_seconds": seconds}
    data: bytes = msgpack.packb([1, "ActivityLease", {**fields, "worker": "forged"}])
    return data


async def test_activity_lease_with_nan_inf_or_huge_seconds_is_dead_lettered_alone(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """Issue 15: a fan_in(2) workflow waits for activities 0 and 1. An ActivityLease for
    activity 0 with lease_seconds NaN, inf or 1e300 is published to fm.fault-host.reply in one
    go with an external event (which starts a step) and the legitimate result of activity 1,
    so the lease and the result wait for the same next step. The lease is refused when
    decoded: it alone lands in the dead-letter queue, with a reason naming lease_seconds; the
    result of activity 1 is applied at once (no step fails, nothing is requeued); and once
    activity 0's result arrives, every workflow completes with both results.
    """
    host = workers.start("fault-host", module=APPS)
    workers.wait_ready(host)
    bad = {"nan": math.nan, "inf": math.inf, "huge": 1e300}
    codec = Codec()
    ledger = Ledger("fault-host", workers)

    def reply(message_id: str, body: bytes) -> Outgoing:
        return Outgoing("fault-host", QueueKind.REPLY, body, message_id)

    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        # No fault-act replica yet: the tasks wait in fm.fault-act.work, so the only results
        # a workflow gets are the ones this test sends.
        await transport.declare_app("fault-act")
        for name in bad:
            await ledger.start(client, "fan_in", 2, 10 + 32, instance_id=f"bad-lease-{name}")
            assert await _wait_open(client, f"bad-lease-{name}", {0, 1}) == {0, 1}
        before = (await transport.queue_stats("fault-host")).dead_messages
        for name, seconds in bad.items():
            instance_id = f"bad-lease-{name}"
            nudge = RaiseEvent(instance_id, "nudge", None, f"nudge-{name}")
            result = ActivityResult(instance_id, 1, 1, 32)
            await transport.publish(
                [
                    reply(f"nudge:{name}", codec.encode_message(nudge)),
                    reply(f"bad-lease:{name}", _raw_lease(instance_id, 0, seconds)),
                    reply(f"result-1:{name}", codec.encode_message(result)),
                ]
            )
        after = await wait_dead(transport, {"fault-host": before + len(bad)}, timeout=30)
        dead = after["fault-host"] - before
        still_open = {name: await _wait_open(client, f"bad-lease-{name}", {0}) for name in bad}
        print(f"dead-lettered: {dead}; activities still open: {still_open}")
        assert dead == len(bad)
        assert still_open == {name: {0} for name in bad}, "activity 1's result was not applied"

        await transport.publish(
            [
                reply(f"result-0:{name}", codec.encode_message(ActivityResult(i, 0, 1, 10)))
                for name, i in ((name, f"bad-lease-{name}") for name in bad)
            ]
        )
        statuses = await ledger.wait_all(client, timeout=30)
        report = await ledger.verify(await store_for("fault-host"))
        print(f"ledger: {report}; statuses: {statuses}")
        assert host.poll() is None
        assert report.ok, str(report)

        # The tasks still waiting in fm.fault-act.work now run; their results are duplicates.
        act = workers.start("fault-act", module=APPS)
        workers.wait_ready(act)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not (await transport.queue_stats("fault-act")).work_messages:
                break
            await asyncio.sleep(0.3)

    lines = [
        line
        for line in dead_letter_lines(workers, "fault-host")
        if str(line.get("message_id", "")).startswith(("bad-lease:", "nudge:", "result-"))
    ]
    reasons = {str(line["message_id"]): str(line["reason"]) for line in lines}
    print("reasons:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(reasons.items())))
    assert Counter(str(line["message_id"]) for line in lines) == Counter(
        f"bad-lease:{name}" for name in bad
    )
    for name, seconds in bad.items():
        reason = reasons[f"bad-lease:{name}"]
        assert reason.startswith("undecodable message: invalid ActivityLease message: "), reason
        assert "field 'lease_seconds': must be a finite number of seconds" in reason, reason
        assert f"got {seconds!r}" in reason, reason
    failed_steps = [
        line
        for _, _, path in workers.processes
        for line in _json_lines(path)
        if line.get("event") == "step failed; deliveries requeued"
    ]
    assert failed_steps == [], failed_steps
