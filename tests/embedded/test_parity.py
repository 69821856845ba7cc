"""Issue 18 on the embedded backend: Task.cancel(), ctx.send_event and RetryPolicy.retry_timeout
through the real runtime (outbox, store, timers, activity worker) in one process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import timedelta
from typing import Any

from flowmesh import (
    ActivityContext,
    App,
    RetryPolicy,
    TaskCancelledError,
    WorkflowContext,
    WorkflowStatus,
)
from flowmesh.model import TaskCancelled, TimerFired
from flowmesh.testing import TestEnvironment

orders = App("p-orders")
billing = App("p-billing")
seen: dict[str, Any] = {}


@orders.workflow
async def approve_or_reject(ctx: WorkflowContext, _: object) -> object:
    approve = ctx.wait_for_external_event("Approve")
    reject = ctx.wait_for_external_event("Reject")
    winner = await ctx.when_any([approve, reject])
    (reject if winner is approve else approve).cancel()
    second = await ctx.wait_for_external_event("Reject", timeout=timedelta(hours=1))
    return [winner.get_result(), second]


@orders.workflow
async def cancelled_timer(ctx: WorkflowContext, _: object) -> object:
    timer = ctx.create_timer(timedelta(hours=1))
    await ctx.create_timer(timedelta(minutes=1))
    timer.cancel()
    try:
        await ctx.wait_for_external_event("never", timeout=timedelta(hours=3))
    except TimeoutError:
        return "3h passed"
    return "event"


@orders.workflow
async def cancel_activity(ctx: WorkflowContext, kind: str) -> object:
    task = ctx.call_activity(kind, app_id="p-billing")
    await ctx.wait_for_external_event("stop")
    task.cancel()
    with contextlib.suppress(TaskCancelledError):
        await task
    return await ctx.wait_for_external_event("done")


@orders.workflow
async def cancel_child(ctx: WorkflowContext, _: object) -> object:
    child = ctx.call_child_workflow("wait_forever", app_id="p-billing", instance_id="kid-1")
    await ctx.wait_for_external_event("stop")
    child.cancel()
    return "cancelled"


@orders.workflow
async def notify(ctx: WorkflowContext, target: str) -> object:
    ctx.send_event(target, "paid", {"by": ctx.instance_id}, app_id="p-billing")
    return "sent"


@orders.workflow
async def flaky(ctx: WorkflowContext, _: object) -> object:
    policy = RetryPolicy(
        max_attempts=100,
        initial_interval=timedelta(minutes=1),
        backoff_coefficient=1,
        retry_timeout=timedelta(minutes=5, seconds=30),
    )
    return await ctx.call_activity("always_fails", app_id="p-billing", retry=policy)


@billing.workflow
async def wait_forever(ctx: WorkflowContext, _: object) -> object:
    return await ctx.wait_for_external_event("never")


@billing.workflow
async def invoice(ctx: WorkflowContext, _: object) -> object:
    return await ctx.wait_for_external_event("paid")


@billing.activity
async def slow_async(ctx: ActivityContext, _: object) -> str:
    seen["async started"] = True
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        seen["async cancelled"] = ctx.is_cancelled
        raise
    return "finished"


@billing.activity
def slow_sync(ctx: ActivityContext, _: object) -> str:
    seen["sync started"] = True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctx.is_cancelled:
            seen["sync cancelled"] = True
            return "stopped early"
        time.sleep(0.01)
    return "finished"


attempts = threading.Lock(), [0]


@billing.activity
def always_fails(ctx: ActivityContext, _: object) -> str:
    with attempts[0]:
        attempts[1][0] += 1
    raise RuntimeError(f"attempt {ctx.attempt} failed")


APPS = [orders, billing]


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_cancelled_losing_wait_leaves_a_later_event_to_a_new_wait() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow("approve_or_reject", app_id="p-orders")
        await handle.raise_event("Approve", "yes")
        await handle.raise_event("Reject", "later")
        assert await handle.result(timeout=5) == ["yes", "later"]


async def test_a_cancelled_timer_never_fires_and_leaves_the_store() -> None:
    async with TestEnvironment(APPS, time_skipping=True) as env:
        handle = await env.client.start_workflow("cancelled_timer", app_id="p-orders")
        assert await handle.result(timeout=5) == "3h passed"
        record = await env.stores["p-orders"].load(handle.instance_id)
        assert record is not None
        assert TimerFired(0) not in record.history


async def test_a_cancelled_async_activity_is_cancelled_on_its_replica_and_recorded() -> None:
    seen.clear()
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow("cancel_activity", "slow_async", app_id="p-orders")
        await until(lambda: seen.get("async started"))
        await handle.raise_event("stop")
        await until(lambda: "async cancelled" in seen)
        assert seen["async cancelled"] is True
        await handle.raise_event("done", "end")
        assert await handle.result(timeout=5) == "end"
        record = await env.stores["p-orders"].load(handle.instance_id)
        assert record is not None
        assert TaskCancelled(0) in record.history


async def test_a_sync_activity_sees_is_cancelled() -> None:
    seen.clear()
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow("cancel_activity", "slow_sync", app_id="p-orders")
        await until(lambda: seen.get("sync started"))
        await handle.raise_event("stop")
        await until(lambda: seen.get("sync cancelled"))
        await handle.raise_event("done", "end")
        assert await handle.result(timeout=5) == "end"


async def test_cancelling_a_child_terminates_it() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow(
            "cancel_child", app_id="p-orders", instance_id="parent-1"
        )
        child = env.client.get_workflow("kid-1", app_id="p-billing")
        store = env.stores["p-billing"]
        for _ in range(500):
            if await store.load("kid-1") is not None:
                break
            await asyncio.sleep(0.01)
        await handle.raise_event("stop")
        assert await handle.result(timeout=5) == "cancelled"
        for _ in range(500):
            described = await child.describe()
            if described.status is WorkflowStatus.TERMINATED:
                break
            await asyncio.sleep(0.01)
        assert described.status is WorkflowStatus.TERMINATED
        assert described.output == "cancelled by parent parent-1"


async def test_send_event_reaches_a_workflow_started_later_on_another_app() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        sender = await env.client.start_workflow("notify", "inv-1", app_id="p-orders")
        assert await sender.result(timeout=5) == "sent"
        await asyncio.sleep(0.1)  # the event is held by p-billing: inv-1 does not exist yet
        receiver = await env.client.start_workflow(
            "invoice", app_id="p-billing", instance_id="inv-1"
        )
        assert await receiver.result(timeout=5) == {"by": sender.instance_id}


async def test_retry_timeout_stops_retries_in_workflow_time() -> None:
    attempts[1][0] = 0
    async with TestEnvironment(APPS, time_skipping=True) as env:
        handle = await env.client.start_workflow("flaky", app_id="p-orders")
        state = await handle.describe()
        for _ in range(500):
            state = await handle.describe()
            if state.status.is_terminal:
                break
            await asyncio.sleep(0.01)
        assert state.status is WorkflowStatus.FAILED
        assert attempts[1][0] == 6  # at 0, 1, 2, 3, 4 and 5 minutes; the next would be at 6
