"""Runs are fenced, only dispatched tasks complete, early messages are held (issue 15).

Each test reproduces, with real RabbitMQ, Redis and worker subprocesses, a way in which a
workflow did the wrong work, hung or lost a message, and proves it no longer does:

1. a replica's cached view of a purged run committing into a new run of the same ID;
2. a result for a task that was never dispatched (batched into the step that allocates it);
3. a second parent starting a child ID that already exists (the parent hung forever);
4. an event that overtakes its workflow's start (it was dropped);
5. a replica of an older deployment that lacks the workflow (starts lost, instances STALLED).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest

from flowmesh import Client, WorkflowNotFoundError, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.model import ActivityResult, ActivityScheduled, RaiseEvent
from flowmesh.transport import Outgoing, QueueKind
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.faults.test_races import connections_with_heartbeat, with_heartbeat
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(180)]

APPS = "tests.faults.fencing_apps"
OLD_APPS = "tests.faults.fencing_apps_old"
HOST = "fence-host"
HEARTBEAT = 2
"""AMQP heartbeat (s) of the replica frozen in the purge test: the broker drops it after
about two missed beats, so the test need not wait long."""


async def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll the async ``predicate`` until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def waiting_for_event(client: Client, instance_id: str) -> bool:
    try:
        state = await client.get_workflow(instance_id, app_id=HOST).describe()
    except WorkflowNotFoundError:
        return False
    return any(task.kind == "event" for task in state.waiting_on)


async def publish(services: Services, *messages: Outgoing) -> None:
    """Publish as an outsider would (the guest user of the test vhost)."""
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        await transport.publish(list(messages))


async def test_a_cached_view_of_a_purged_run_never_commits_into_the_next_run(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """Replica B caches run 1 (amount 10) of "order-1", then is frozen and loses its broker
    connection. Replica A terminates and purges run 1 and starts run 2 (amount 99) under the
    same ID. B resumes and gets run 2's "go" event: with its cached run 1 it used to pass the
    version check (the purge had restarted the version at 1) and ship run 1's amount 10 in
    run 2. Now the run and the version (which a purge keeps) fence it: run 2 ships 99."""
    b = workers.start(
        HOST, module=APPS, env={"FLOWMESH_AMQP_URL": with_heartbeat(services.amqp_url, HEARTBEAT)}
    )
    act = workers.start("fence-act", module=APPS)
    for process in (b, act):
        workers.wait_ready(process)
    handle = await client.start_workflow("ship_after_go", 10, app_id=HOST, instance_id="order-1")
    await wait_for(lambda: waiting_for_event(client, "order-1"), 20, "run 1 waiting on B")
    run_1 = (await handle.describe()).run_id

    os.kill(b.pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: _connections(services, 0), 40, "the broker to drop frozen B")
        a = workers.start(HOST, module=APPS)
        workers.wait_ready(a)
        await handle.terminate(reason="replaced")
        assert (await handle.wait(timeout=20)).status is WorkflowStatus.TERMINATED
        await handle.purge()

        async def purged() -> bool:
            try:
                await handle.describe()
            except WorkflowNotFoundError:
                return True
            return False

        await wait_for(purged, 20, "the purge")
        await client.start_workflow("ship_after_go", 99, app_id=HOST, instance_id="order-1")
        await wait_for(lambda: waiting_for_event(client, "order-1"), 20, "run 2 waiting on A")
        state = await handle.describe()
        assert state.run_id != run_1
        assert state.version > 2, "a new run must continue the purged run's version numbering"
        a.send_signal(signal.SIGKILL)
        a.wait(10)
    finally:
        os.kill(b.pid, signal.SIGCONT)
    await wait_for(lambda: _connections(services, 2), 30, "B to reconnect")

    await handle.raise_event("go")
    assert await handle.result(timeout=30) == "shipped 99"
    store = await store_for(HOST)
    record = await store.load("order-1")
    assert record is not None
    shipped = [e.input for e in record.history if isinstance(e, ActivityScheduled)]
    assert shipped == [99], f"run 2's history schedules {shipped}"


async def _connections(services: Services, count: int) -> bool:
    return await asyncio.to_thread(connections_with_heartbeat, services.vhost, HEARTBEAT) == count


async def test_a_result_for_a_task_that_was_never_dispatched_is_refused(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, services: Services
) -> None:
    """An outsider sends "go" and, right behind it, a result for the task "go" makes the
    workflow schedule. Both reach the host in one batch (the host is frozen while they are
    published, behind a first event that keeps the instance's step busy), so the result was
    applied in the very step that allocated the task: the workflow returned the forged
    output. Now the result is refused (dead-lettered, listed in ``refusals``) and the real
    activity's output is returned."""
    host = workers.start(HOST, module=APPS)
    act = workers.start("fence-act", module=APPS)
    for process in (host, act):
        workers.wait_ready(process)
    instance = f"forge-{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow("ship_after_go", 5, app_id=HOST, instance_id=instance)
    await wait_for(lambda: waiting_for_event(client, instance), 20, "the workflow to wait")
    codec = Codec()

    def event(name: str) -> Outgoing:
        body = codec.encode_message(RaiseEvent(instance, name, None, uuid.uuid4().hex))
        return Outgoing(HOST, QueueKind.REPLY, body)

    forged = codec.encode_message(ActivityResult(instance, 0, 1, "forged"))
    os.kill(host.pid, signal.SIGSTOP)
    try:
        await publish(
            services, event("unrelated"), event("go"), Outgoing(HOST, QueueKind.REPLY, forged)
        )
        await asyncio.sleep(0.5)
    finally:
        os.kill(host.pid, signal.SIGCONT)
    assert await handle.result(timeout=30) == "shipped 5"
    state = await handle.describe()
    assert any("never dispatched" in reason for reason in state.refusals), state.refusals
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        assert (await transport.queue_stats(HOST)).dead_messages >= 1


async def test_a_child_id_that_already_exists_fails_the_second_parent_promptly(
    workers: WorkerProcesses, client: Client
) -> None:
    """Two parents start a child with the same explicit ID. The second one's await used to
    wait forever (its start was silently ignored); now it fails at once with
    ChildWorkflowFailedError caused by WorkflowAlreadyExistsError, and the first parent's
    child is undisturbed."""
    for app in (HOST, "fence-kids"):
        workers.wait_ready(workers.start(app, module=APPS))
    child_id = f"report-daily-{uuid.uuid4().hex[:6]}"
    first = await client.start_workflow(
        "adopt", child_id, app_id=HOST, instance_id=f"p1-{child_id}"
    )

    async def child_running() -> bool:
        try:
            state = await client.get_workflow(child_id, app_id="fence-kids").describe()
        except WorkflowNotFoundError:
            return False
        return state.status is WorkflowStatus.RUNNING

    await wait_for(child_running, 20, "the first parent's child")
    second = await client.start_workflow(
        "adopt", child_id, app_id=HOST, instance_id=f"p2-{child_id}"
    )
    outcome = await second.result(timeout=15)
    assert isinstance(outcome, str)
    assert outcome.startswith("failed: WorkflowAlreadyExistsError:"), outcome
    assert child_id in outcome
    await client.get_workflow(child_id, app_id="fence-kids").raise_event("done")
    assert await first.result(timeout=20) == "kid done"


async def test_an_event_that_overtakes_its_start_is_held_and_applied(
    workers: WorkerProcesses, client: Client, services: Services
) -> None:
    """The event reaches the host before the start (work and reply queues are independent).
    It used to be dropped ("message for unknown instance dropped") and the workflow waited
    forever; now it is held and applied by the step that creates the instance. A terminate
    that overtakes its start likewise leaves a tombstone: the late start is refused."""
    for app in (HOST, "fence-act"):
        workers.wait_ready(workers.start(app, module=APPS))
    instance = f"early-{uuid.uuid4().hex[:6]}"
    await client.get_workflow(instance, app_id=HOST).raise_event("go")
    await asyncio.sleep(1.0)  # the host has processed (held) the event
    handle = await client.start_workflow("ship_after_go", 3, app_id=HOST, instance_id=instance)
    assert await handle.result(timeout=20) == "shipped 3"

    doomed = f"doomed-{uuid.uuid4().hex[:6]}"
    # Sent without waiting, like a parent's recursive terminate from its outbox.
    await client.get_workflow(doomed, app_id=HOST).terminate(reason="cancelled early", wait=False)
    await asyncio.sleep(1.0)
    with pytest.raises(Exception, match="terminated before it started"):
        await client.start_workflow("ship_after_go", 1, app_id=HOST, instance_id=doomed)
    with pytest.raises(WorkflowNotFoundError):
        await client.get_workflow(doomed, app_id=HOST).describe()


async def test_a_replica_lacking_the_workflow_leaves_its_messages_to_one_that_has_it(
    workers: WorkerProcesses, client: Client
) -> None:
    """A rolling deploy: an old host replica (without ``ship_after_go``) runs beside a new
    one. Starts the old replica takes used to be refused and lost, and events of running
    instances it took marked them STALLED. Now it leaves every such message, with growing
    delay, to the new replica: all 30 complete, none stalls (the old replica is stopped after
    a while, as the rollout would, which bounds how long the test waits)."""
    new = workers.start(HOST, module=APPS)
    act = workers.start("fence-act", module=APPS)
    for process in (new, act):
        workers.wait_ready(process)
    running = [f"roll-a-{i}" for i in range(15)]
    handles = [
        await client.start_workflow("ship_after_go", i, app_id=HOST, instance_id=instance)
        for i, instance in enumerate(running)
    ]
    for instance in running:
        await wait_for(lambda i=instance: waiting_for_event(client, i), 20, f"{instance} to wait")
    old = workers.start(HOST, module=OLD_APPS)
    workers.wait_ready(old)
    fresh = [f"roll-b-{i}" for i in range(15)]
    handles += [
        await client.start_workflow("ship_after_go", 100 + i, app_id=HOST, instance_id=instance)
        for i, instance in enumerate(fresh)
    ]
    for handle in handles:
        await handle.raise_event("go")
    # The rollout goes on: after a while the old replica is stopped (gracefully), as a
    # rolling deploy does. Until then it hands on whatever it takes.
    await asyncio.sleep(5.0)
    old.send_signal(signal.SIGTERM)
    old.wait(30)
    for i, handle in enumerate(handles):
        state = await handle.wait(timeout=60)
        expected = i if i < 15 else 100 + i - 15
        assert state.status is WorkflowStatus.COMPLETED, (handle.instance_id, state)
        assert state.output == f"shipped {expected}"
    assert "waits for a deployment that registers its workflow" in workers.logs()
