"""Issue 16, items 1 and 3: one failing message never takes its siblings with it.

* a publish batch with one refused message: the siblings are published once and forgotten,
  only the refused one is retried (with backoff) until the broker accepts it;
* relay fairness: one instance whose message the broker refuses for good, created before
  500 healthy instances whose messages were left behind, does not keep them from completing;
* a poison message batched with a legitimate result: only it is dead-lettered, the result is
  applied, and the instance records the refusal;
* four host replicas in a conflict storm: conflicts are retried, never dead-lettered.

Every test prints its ledger (``ledger: ...``) with the activity re-execution counts.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from flowmesh import Client, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.model import ActivityResult, EventRaised, Message, RaiseEvent, TaskNote
from flowmesh.transport import Outgoing, QueueKind
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.faults.partial_apps import split_result
from tests.harness.effects import read_runs
from tests.harness.ledger import Ledger
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(240)]

APPS = "tests.faults.partial_apps"
HOST = "pf-host"
TICKS = 80
FAST_RELAY = {"FLOWMESH_OUTBOX_SWEEP_INTERVAL": "1"}
"""The host's relay looks every second (5 s by default): the tests wait for sweeps."""


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def restricted(services: Services, workers: WorkerProcesses) -> Iterator[Callable[..., str]]:
    """``url(forbidden_topics=..., configure=...)``: the AMQP URL of a fresh user of the
    session's vhost that may do everything but publish to the ``fm.apps`` routing keys
    matching ``forbidden_topics`` and configure the queues not matching ``configure``.
    Calling it again changes that user's permissions (RabbitMQ applies them to channels
    opened from then on)."""
    user, password = f"pf-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    _ctl("add_user", user, password)
    parts = urlsplit(services.amqp_url)
    netloc = f"{quote(user)}:{password}@{parts.netloc.rpartition('@')[2]}"

    def url(*, forbidden_topics: str = "(?!)", configure: str = ".*") -> str:
        _ctl("set_permissions", "-p", services.vhost, user, configure, ".*", ".*")
        topics = f"^(?!{forbidden_topics}).*"
        _ctl("set_topic_permissions", "-p", services.vhost, user, "fm.apps", topics, ".*")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    try:
        yield url
    finally:
        workers.stop_all()  # before their user goes, or they keep trying to log in
        _ctl("delete_user", user)


@pytest.fixture
async def admin(services: Services) -> AsyncIterator[RabbitMQTransport]:
    """A transport with full rights on the session's vhost (declares, counts dead letters)."""
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        yield transport


async def _describe_until(
    client: Client, instance_id: str, done: Callable[[object], bool], timeout: float
) -> object:
    """``describe()`` until ``done(state)`` or ``timeout``; returns the last state."""
    deadline = time.monotonic() + timeout
    state: object = None
    while time.monotonic() < deadline:
        state = await client.get_workflow(instance_id, app_id=HOST).describe()
        if done(state):
            break
        await asyncio.sleep(0.3)
    return state


async def test_a_refused_message_is_retried_alone_and_its_siblings_are_published_once(
    workers: WorkerProcesses,
    client: Client,
    store_for: StoreOpener,
    restricted: Callable[..., str],
) -> None:
    """One step of ``split(20)`` publishes 21 tasks; the host's broker user may not publish
    to pf-late, so one of them is refused (ACCESS_REFUSED, which also closes the channel
    under the 20 others). For 4 s - longer than three relay sweeps of 1 s - the refusal stays: the
    20 pf-act tasks must run exactly once (they are forgotten once confirmed, never
    republished), and ``describe()`` says why the 21st waits. Then the permission is fixed
    and the refused task goes out on its own backoff; the workflow completes."""
    host_url = restricted(forbidden_topics=r"pf-late\.")
    workers.wait_ready(
        workers.start(HOST, module=APPS, env={**FAST_RELAY, "FLOWMESH_AMQP_URL": host_url})
    )
    for app_id in ("pf-act", "pf-late"):
        workers.wait_ready(workers.start(app_id, module=APPS))
    ledger = Ledger(HOST, workers)
    await ledger.start(client, "split", 20, split_result(20), instance_id="split-1")

    await asyncio.sleep(4)
    runs_while_refused = len(read_runs(workers.effects_path)[0])
    state = await client.get_workflow("split-1", app_id=HOST).describe()
    problem = getattr(state, "publish_problem", "")
    restricted()  # the operator fixes the permission
    await ledger.wait_all(client, timeout=90)
    report = await ledger.verify(await store_for(HOST))

    print(f"ledger: {report}")
    print(f"activity runs while pf-late was refused: {runs_while_refused} (20 expected)")
    print(f"publish problem shown: {problem!r}")
    assert report.ok, report.explain()
    assert runs_while_refused == 20
    assert (report.tasks, report.runs, report.reexecuted) == (21, 21, 0), report.explain()
    assert problem.startswith("cannot publish to app 'pf-late': "), problem
    assert "ACCESS_REFUSED" in problem and "retrying in" in problem, problem


async def test_one_permanently_refused_instance_does_not_starve_500_healthy_ones(
    workers: WorkerProcesses,
    client: Client,
    store_for: StoreOpener,
    restricted: Callable[..., str],
    admin: RabbitMQTransport,
) -> None:
    """The host's broker user may never publish to pf-nowhere, and may not declare pf-slow's
    queues. The instance calling pf-nowhere is created first, so it is the oldest in the
    outbox; then 500 instances call pf-slow while its queues do not exist yet, so all 500
    tasks are left in the outbox (unroutable). An administrator then declares pf-slow's
    queues and a pf-slow replica starts: the relay, reading the outbox in windows of 500,
    must get all 500 out (the blocked instance is skipped while it backs off), each task
    running once."""
    host_url = restricted(forbidden_topics=r"pf-nowhere\.", configure=r"^(?!fm\.pf-slow\.).*")
    workers.wait_ready(
        workers.start(HOST, module=APPS, env={**FAST_RELAY, "FLOWMESH_AMQP_URL": host_url})
    )
    blocked = client.get_workflow("blocked", app_id=HOST)
    await client.start_workflow("one_call", "pf-nowhere", app_id=HOST, instance_id="blocked")
    await _describe_until(client, "blocked", lambda s: s is not None, timeout=10)
    ledger = Ledger(HOST, workers)
    for chunk in range(0, 500, 50):
        await asyncio.gather(
            *(
                ledger.start(client, "one_call", "pf-slow", 42, instance_id=f"healthy-{i}")
                for i in range(chunk, chunk + 50)
            )
        )

    await admin.declare_app("pf-slow")
    workers.wait_ready(workers.start("pf-slow", module=APPS))
    started = time.monotonic()
    statuses = await ledger.wait_all(client, timeout=75)
    took = time.monotonic() - started
    state = await blocked.describe()
    problem = getattr(state, "publish_problem", "")
    await blocked.terminate(reason="test done")
    await blocked.purge()  # its outbox entry goes with it
    report = await ledger.verify(await store_for(HOST))

    completed = sum(s is WorkflowStatus.COMPLETED for s in statuses.values())
    print(f"ledger: {report}")
    print(f"healthy instances completed: {completed}/500 within {took:.1f}s of pf-slow appearing")
    print(f"blocked instance's publish problem: {problem!r}")
    assert report.ok, report.explain()
    assert completed == 500
    assert report.reexecuted == 0, report.explain()
    assert problem.startswith("cannot publish to app 'pf-nowhere': "), problem
    assert "ACCESS_REFUSED" in problem, problem


async def test_a_poison_message_is_dead_lettered_alone_and_its_batch_is_applied(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, admin: RabbitMQTransport
) -> None:
    """``padded_pair`` instances (1.5 MiB of input in their state) wait for activities 0
    and 1 (no pf-act replica yet) and get a stream of 80 events each. Among them come a
    TaskNote for activity 0 with a 3 MiB note (it would grow the state past the 4 MiB
    limit: every step containing it fails) and the legitimate result of activity 1; the
    note's redeliveries land in batches with events.
    Only the note is dead-lettered, with its reason, after max_deliveries; the result is
    applied at once; ``describe()`` lists the refusal. Then pf-act runs the tasks and every
    instance completes."""
    host = workers.start(HOST, module=APPS)
    workers.wait_ready(host)
    await admin.declare_app("pf-act")
    codec = Codec()
    ledger = Ledger(HOST, workers)
    names = [f"poisoned-{i}" for i in range(3)]
    for name in names:
        await ledger.start(client, "padded_pair", "p" * 1_500_000, 10 + 32, instance_id=name)
    for name in names:
        await _describe_until(client, name, lambda s: len(getattr(s, "waiting_on", ())) == 2, 10)
    before = (await admin.queue_stats(HOST)).dead_messages

    def reply(label: str, message: Message) -> Outgoing:
        return Outgoing(HOST, QueueKind.REPLY, codec.encode_message(message), label)

    # A stream of events keeps every instance busy, so the poison's redeliveries keep
    # landing in batches with legitimate messages.
    for tick in range(TICKS):
        batch = [reply(f"tick:{n}:{tick}", RaiseEvent(n, "tick", tick, f"t{tick}")) for n in names]
        if tick == 10:
            batch += [reply(f"poison:{n}", TaskNote(n, 0, 1, "n" * 3_000_000)) for n in names]
        if tick == 11:
            batch += [reply(f"result:{n}", ActivityResult(n, 1, 1, 32)) for n in names]
        await admin.publish(batch)
        await asyncio.sleep(0.04)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await admin.queue_stats(HOST)).dead_messages - before >= len(names):
            break
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)  # anything else on its way to the dead-letter queue
    dead = (await admin.queue_stats(HOST)).dead_messages - before
    states = {name: await client.get_workflow(name, app_id=HOST).describe() for name in names}
    open_seqs = {n: sorted(t.seq for t in s.waiting_on) for n, s in states.items()}
    refusals = {n: list(s.refusals) for n, s in states.items()}
    store = await store_for(HOST)
    ticks = {}
    for name in names:
        record = await store.load(name)
        assert record is not None
        ticks[name] = sum(isinstance(e, EventRaised) for e in record.history)

    workers.wait_ready(workers.start("pf-act", module=APPS))
    await ledger.wait_all(client, timeout=60)
    report = await ledger.verify(await store_for(HOST))
    print(f"ledger: {report}")
    print(f"dead-lettered: {dead} (3 expected); activities still open: {open_seqs}")
    print(f"refusals: {refusals}")
    print(f"events applied: {ticks} ({TICKS} each expected)")
    assert report.ok, report.explain()
    assert dead == len(names)
    assert ticks == dict.fromkeys(names, TICKS)
    assert open_seqs == {name: [0] for name in names}, "activity 1's result was not applied"
    for name in names:
        [reason] = refusals[name]
        assert reason.startswith(f"TaskNote failed the step of {name} 5 times by itself: ")
        assert "limit" in reason, reason


async def test_four_host_replicas_in_a_conflict_storm_dead_letter_nothing(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, admin: RabbitMQTransport
) -> None:
    """Four host replicas share the results of 8 fan-ins of 150 activities each (run by
    three pf-act replicas), so every instance's results land on all four replicas at once
    and their steps keep conflicting. Conflicts are retried (reloaded, with growing random
    pauses, then requeued), never counted as poison: nothing is dead-lettered, every
    instance completes, and the ledger shows nothing lost or applied twice."""
    hosts = [workers.start(HOST, module=APPS) for _ in range(4)]
    acts = [workers.start("pf-act", module=APPS, concurrency=32) for _ in range(3)]
    for process in (*hosts, *acts):
        workers.wait_ready(process)
    ledger = Ledger(HOST, workers)
    before = (await admin.queue_stats(HOST)).dead_messages
    count = 150
    for i in range(8):
        await ledger.start(client, "fan_in", count, count * (count - 1), instance_id=f"storm-{i}")
    await ledger.wait_all(client, timeout=120)
    report = await ledger.verify(await store_for(HOST))
    dead = (await admin.queue_stats(HOST)).dead_messages - before
    logs = "".join(p.read_text(errors="replace") for a, _, p in workers.processes if a == HOST)
    requeued = logs.count("conflicts with other replicas")
    print(f"ledger: {report}")
    print(f"dead-lettered: {dead}; batches requeued after 20 conflicts: {requeued}")
    assert report.ok, report.explain()
    assert dead == 0
