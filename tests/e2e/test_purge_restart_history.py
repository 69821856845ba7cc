"""Purge results, restart, history through the client and a 400-day timer (issue 18, items
4-7) against real RabbitMQ and Redis, with worker subprocesses (the timer: an in-process
worker on the real servers whose clock the test skips)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta

import pytest
import redis.asyncio

from flowmesh import (
    App,
    Client,
    ClientOptions,
    WorkerOptions,
    WorkflowAlreadyExistsError,
    WorkflowContext,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
    WorkflowStatus,
)
from flowmesh.codec import Codec
from flowmesh.model import ActivityScheduled, TimerCreated, WorkflowStarted
from flowmesh.runtime import VirtualClock, Worker
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(180)]

E2E_APPS = "tests.e2e.apps"


async def _gone(client: Client, instance_id: str, app_id: str, within: float = 20) -> bool:
    """Whether the instance is gone (asked until ``within`` seconds have passed)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await client.get_workflow(instance_id, app_id=app_id).describe()
        except WorkflowNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def test_recursive_purge_counts_a_child_on_another_app_and_reports_it_when_down(
    services: Services, workers: WorkerProcesses, client: Client
) -> None:
    """Parent on e2e-host, child on e2e-child: purge() returns 2 with both apps up. With
    e2e-child down it returns 1 within the request timeout, names the child, and the child's
    purge waits in e2e-child's queue until a replica runs; a running instance refuses."""
    host = workers.start("e2e-host", module=E2E_APPS)
    child_app = workers.start("e2e-child", module=E2E_APPS)
    workers.wait_ready(host)
    workers.wait_ready(child_app)
    first = await client.start_workflow("parent_of_finisher", 1, app_id="e2e-host")
    assert await first.result(timeout=30) == {"child": 1}
    count = await first.purge()
    assert (count, count.not_purged) == (2, ())
    assert await _gone(client, f"{first.instance_id}-child", "e2e-child", within=0)

    second = await client.start_workflow("parent_of_finisher", 2, app_id="e2e-host")
    await second.result(timeout=30)
    child_app.terminate()
    child_app.wait(timeout=15)
    async with Client(services.amqp_url, options=ClientOptions(request_timeout=4.0)) as hurried:
        started = time.monotonic()
        partial = await hurried.get_workflow(second.instance_id, app_id="e2e-host").purge()
        assert time.monotonic() - started < 4.0
    assert partial == 1
    [note] = partial.not_purged
    assert f"'{second.instance_id}-child' on app 'e2e-child': no answer within" in note
    workers.wait_ready(workers.start("e2e-child", module=E2E_APPS))
    assert await _gone(client, f"{second.instance_id}-child", "e2e-child")

    running = await client.start_workflow("parent_of_waiter", None, app_id="e2e-host")
    with pytest.raises(WorkflowNotFinishedError, match="status RUNNING"):
        await running.purge()
    await running.terminate("test over")
    assert await client.get_workflow("never-there", app_id="e2e-host").purge() == 0


async def test_restart_same_id_new_id_and_refusals(
    workers: WorkerProcesses, client: Client
) -> None:
    """Same ID after completion: a new run with the same input replaces the history. New ID
    (random, given): a copy. Refused: same ID while running, unknown ID, taken new ID."""
    for app_id in ("e2e-host", "e2e-crunch", "e2e-child"):
        workers.wait_ready(workers.start(app_id, module=E2E_APPS))
    first = await client.start_workflow("stamped", {"n": 7}, app_id="e2e-host")
    out1 = await first.result(timeout=30)
    run1 = (await first.describe()).run_id
    again = await client.restart_workflow(first.instance_id, app_id="e2e-host")
    out2 = await again.result(timeout=30)
    state = await again.describe()
    assert out1["value"] == out2["value"] == {"n": 7}  # type: ignore[index]
    assert state.run_id != run1 and out1["at"] != out2["at"]  # type: ignore[index]
    history = await again.history()
    assert [e.run_id for e in history if isinstance(e, WorkflowStarted)] == [state.run_id]

    copy = await client.restart_workflow(first.instance_id, app_id="e2e-host", new_instance_id=True)
    assert (await copy.result(timeout=30))["value"] == {"n": 7}  # type: ignore[index]
    named = await client.restart_workflow(
        first.instance_id, app_id="e2e-host", new_instance_id=f"{first.instance_id}-2"
    )
    assert named.instance_id == f"{first.instance_id}-2"
    await named.wait(timeout=30)
    with pytest.raises(WorkflowAlreadyExistsError):
        await client.restart_workflow(
            first.instance_id, app_id="e2e-host", new_instance_id=named.instance_id
        )
    with pytest.raises(WorkflowNotFoundError):
        await client.restart_workflow("never-there", app_id="e2e-host")
    running = await client.start_workflow("wait_forever", None, app_id="e2e-child")
    with pytest.raises(WorkflowNotFinishedError, match="has not finished"):
        await client.restart_workflow(running.instance_id, app_id="e2e-child")
    await running.terminate("test over")


async def test_history_of_many_pages_through_the_broker_equals_the_store(
    services: Services, workers: WorkerProcesses, store_for: StoreOpener
) -> None:
    """150 activities, read in 2 KiB pages by any of two host replicas, come back exactly as
    Redis holds them; an unknown ID raises WorkflowNotFoundError."""
    for app_id in ("e2e-host", "e2e-host", "e2e-crunch"):
        workers.wait_ready(workers.start(app_id, module=E2E_APPS))
    options = ClientOptions(history_page_bytes=2048)
    async with Client(services.amqp_url, options=options) as paged:
        handle = await paged.start_workflow("chatty", 150, app_id="e2e-host")
        assert await handle.result(timeout=60) == 150
        history = await handle.history()
        with pytest.raises(WorkflowNotFoundError):
            await paged.get_workflow("never-there", app_id="e2e-host").history()
    record = await (await store_for("e2e-host")).load(handle.instance_id)
    assert record is not None and history == list(record.history)
    assert len([e for e in history if isinstance(e, ActivityScheduled)]) == 150
    assert sum(len(Codec().encode_event(e)) for e in history) > 10 * 2048


sleepy = App("e2e-sleepy")
LONG = timedelta(days=400, microseconds=1500)


@sleepy.workflow
async def sleeper(ctx: WorkflowContext, _: object) -> list[str]:
    """Sleep 400 days (and 1.5 ms); report when it slept and woke."""
    start = ctx.current_utc_datetime
    await ctx.create_timer(start + LONG)
    return [start.isoformat(), ctx.current_utc_datetime.isoformat()]


async def test_a_400_day_timer_is_durable_and_exact_on_rabbitmq_and_redis(
    services: Services, client: Client
) -> None:
    """A worker on the real servers with a clock the test moves: the timer is stored with its
    due time (fire_at rounded up to the ms) as the score, exactly; 400 days later (skipped)
    its TimerDue crosses RabbitMQ and the workflow wakes no earlier than asked, less than a
    millisecond later."""
    clock = VirtualClock(datetime.now().astimezone().replace(microsecond=123_456))
    transport = RabbitMQTransport(RabbitMQConfig(url=services.amqp_url))
    config = RedisStoreConfig(
        url=services.redis_url, app_id="e2e-sleepy", key_prefix=services.key_prefix
    )
    store = RedisStore(config, Codec())
    await transport.connect()
    await store.connect()
    worker = Worker(sleepy, transport=transport, store=store, clock=clock, options=WorkerOptions())
    await worker.start()
    try:
        handle = await client.start_workflow(sleeper, None, app_id="e2e-sleepy")
        for _ in range(100):
            with contextlib.suppress(WorkflowNotFoundError):
                if (await handle.describe()).waiting_on:
                    break
            await asyncio.sleep(0.05)
        [created] = [e for e in await handle.history() if isinstance(e, TimerCreated)]
        due_ms = -(
            (datetime.fromtimestamp(0, created.fire_at.tzinfo) - created.fire_at)
            // timedelta(milliseconds=1)
        )
        raw = redis.asyncio.Redis.from_url(services.redis_url)
        try:
            [(member, score)] = await raw.zrange(
                f"{services.key_prefix}:{{e2e-sleepy}}:timers", 0, -1, withscores=True
            )
        finally:
            await raw.aclose()
        assert score == due_ms and member.decode().endswith(f"|{due_ms}")
        clock.advance_to(created.fire_at - timedelta(milliseconds=5))
        await asyncio.sleep(0.5)
        assert (await handle.describe()).status is WorkflowStatus.RUNNING  # not early
        clock.advance_to(created.fire_at + timedelta(microseconds=500))
        start, woke = map(datetime.fromisoformat, await handle.result(timeout=30))  # type: ignore[call-overload]
        assert created.fire_at == start + LONG
        assert timedelta(0) <= woke - created.fire_at < timedelta(milliseconds=1)
    finally:
        await worker.stop(timeout=2.0)
        await store.close()
        await transport.close()
