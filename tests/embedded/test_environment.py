"""The embedded backend end to end: the same runtime as production, in one process."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from flowmesh import (
    ActivityContext,
    App,
    InvalidInstanceIdError,
    NonRetryableError,
    RetryPolicy,
    SerializationError,
    WorkflowAlreadyExistsError,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowStatus,
)
from flowmesh.testing import TestEnvironment

orders = App("orders")
payments = App("payments")
shipping = App("shipping")
calls: list[tuple[str, str]] = []


@orders.workflow
async def checkout(ctx: WorkflowContext, order: dict[str, int]) -> dict[str, object]:
    charged = await ctx.call_activity("charge", order["amount"], app_id="payments")
    shipped = await ctx.call_child_workflow("ship", order, app_id="shipping")
    return {"charged": charged, "shipped": shipped}


@orders.workflow
async def sleepy(ctx: WorkflowContext, days: int) -> str:
    await ctx.create_timer(timedelta(days=days))
    return ctx.current_utc_datetime.isoformat()


@orders.workflow
async def approval(ctx: WorkflowContext, _: object) -> object:
    ctx.set_custom_status("waiting for approval")
    try:
        return await ctx.wait_for_external_event("approve", timeout=timedelta(hours=1))
    except TimeoutError:
        return "timed out"


@orders.workflow
async def flaky_charge(ctx: WorkflowContext, fail_times: int) -> object:
    policy = RetryPolicy(max_attempts=4, initial_interval=timedelta(seconds=5))
    return await ctx.call_activity("flaky", fail_times, app_id="payments", retry=policy)


@orders.workflow
async def counter(ctx: WorkflowContext, state: dict[str, int]) -> int:
    if state["n"] >= state["until"]:
        return state["n"]
    await ctx.create_timer(timedelta(minutes=1))
    return ctx.continue_as_new({"n": state["n"] + 1, "until": state["until"]})


@orders.workflow
async def refuse(ctx: WorkflowContext, _: object) -> object:
    return await ctx.call_activity(
        "decline", None, app_id="payments", retry=RetryPolicy(max_attempts=5)
    )


@payments.activity
def charge(ctx: ActivityContext, amount: int) -> str:
    calls.append(("payments", ctx.app_id))
    return f"charged {amount} ({ctx.idempotency_key})"


attempts: dict[str, int] = {}


@payments.activity
def flaky(ctx: ActivityContext, fail_times: int) -> int:
    attempts[ctx.instance_id] = ctx.attempt
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@payments.activity
def decline(ctx: ActivityContext, _: object) -> None:
    raise NonRetryableError("card declined")


@shipping.workflow
async def ship(ctx: WorkflowContext, order: dict[str, int]) -> str:
    label = await ctx.call_activity("label", order["amount"])
    return f"shipped with {label}"


@shipping.activity
async def label(ctx: ActivityContext, amount: int) -> str:
    calls.append(("shipping", ctx.app_id))
    return f"label-{amount}"


APPS = [orders, payments, shipping]


async def test_workflow_crosses_apps_and_each_task_runs_on_its_own_app() -> None:
    """A task for payments runs only on payments' worker; the child runs on shipping."""
    calls.clear()
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(
            checkout, {"amount": 7}, app_id="orders", instance_id="o-1"
        )
        result = await handle.result(timeout=5)
        run_id = (await handle.describe()).run_id
        assert len(run_id) == 32
        assert result == {
            "charged": f"charged 7 (orders/o-1/{run_id}#0/1)",
            "shipped": "shipped with label-7",
        }
        assert sorted(calls) == [("payments", "payments"), ("shipping", "shipping")]
        assert env.worker("payments").activities_completed == 1
        assert env.worker("shipping").activities_completed == 1
        assert env.worker("orders").activities_completed == 0
        child = await env.client.get_workflow("o-1:1", app_id="shipping").describe()
        assert child.status is WorkflowStatus.COMPLETED and child.parent is not None
        with pytest.raises(WorkflowNotFoundError):
            await env.client.get_workflow("o-1:1", app_id="orders").describe()


async def test_time_skipping_finishes_a_30_day_timer_in_well_under_a_second() -> None:
    async with TestEnvironment(APPS, time_skipping=True) as env:
        started = time.perf_counter()
        handle = await env.client.start_workflow(sleepy, 30, app_id="orders")
        fired_at = await handle.result(timeout=5)
        elapsed = time.perf_counter() - started
    assert fired_at == "2026-01-31T00:00:00+00:00"
    assert elapsed < 1.0


async def test_external_event_is_delivered_and_custom_status_is_visible() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow(approval, None, app_id="orders")
        for _ in range(100):
            state = await handle.describe()
            if state.waiting_on:
                break
            await asyncio.sleep(0.01)
        assert state.custom_status == "waiting for approval"
        assert [(t.kind, t.name) for t in state.waiting_on] == [
            ("timer", "timer"),
            ("event", "approve"),
        ]
        await handle.raise_event("approve", {"by": "ops"})
        assert await handle.result(timeout=5) == {"by": "ops"}


async def test_event_timeout_fires_through_the_virtual_clock() -> None:
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(approval, None, app_id="orders")
        assert await handle.result(timeout=5) == "timed out"


async def test_retry_policy_retries_a_failing_activity_with_durable_backoff() -> None:
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(
            flaky_charge, 2, app_id="orders", instance_id="flaky-1"
        )
        assert await handle.result(timeout=5) == 3
        exhausted = await env.client.start_workflow(
            flaky_charge, 10, app_id="orders", instance_id="flaky-2"
        )
        with pytest.raises(WorkflowFailedError, match="attempt 4 failed"):
            await exhausted.result(timeout=5)
    assert attempts["flaky-2"] == 4


async def test_non_retryable_error_stops_retries_at_once() -> None:
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(refuse, None, app_id="orders")
        with pytest.raises(WorkflowFailedError, match="card declined") as raised:
            await handle.result(timeout=5)
        assert raised.value.failure is not None
        assert "NonRetryableError" in raised.value.failure.message or raised.value.failure.message


async def test_continue_as_new_restarts_with_a_fresh_history() -> None:
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(counter, {"n": 0, "until": 5}, app_id="orders")
        assert await handle.result(timeout=5) == 5
        state = await handle.describe()
        assert state.history_length < 10  # only the last run's events


async def test_suspend_holds_progress_until_resume() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow(approval, None, app_id="orders")
        await asyncio.sleep(0.05)
        await handle.suspend("maintenance")
        await asyncio.sleep(0.05)
        assert (await handle.describe()).status is WorkflowStatus.SUSPENDED
        await handle.raise_event("approve", "yes")
        await asyncio.sleep(0.05)
        assert (await handle.describe()).status is WorkflowStatus.SUSPENDED
        await handle.resume()
        assert await handle.result(timeout=5) == "yes"


async def test_terminate_then_purge_removes_the_instance() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        handle = await env.client.start_workflow(approval, None, app_id="orders")
        await asyncio.sleep(0.05)
        await handle.terminate("no longer needed")
        state = await handle.wait(timeout=5)
        assert state.status is WorkflowStatus.TERMINATED
        await handle.purge()
        for _ in range(50):
            try:
                await handle.describe()
            except WorkflowNotFoundError:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("purged instance is still visible")


async def test_bad_starts_fail_at_the_call_site_and_write_nothing() -> None:
    async with TestEnvironment(APPS) as env:
        with pytest.raises(SerializationError, match="set"):
            await env.client.start_workflow(checkout, {"amount": {1, 2}}, app_id="orders")
        with pytest.raises(InvalidInstanceIdError):
            await env.client.start_workflow(
                checkout, {}, app_id="orders", instance_id="bad id/with spaces"
            )
        with pytest.raises(WorkflowNotFoundError):
            await env.client.get_workflow("unknown-1", app_id="orders").describe()
        assert await env.stores["orders"].list_instances() == []


async def test_a_start_of_an_unregistered_workflow_waits_and_says_why() -> None:
    """No replica registers 'nope' (yet): the start is not refused and lost but kept for a
    deployment that has it; the handle and describe() say why nothing runs."""
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow("nope", None, app_id="orders", instance_id="u-1")
        assert "workflow 'nope' is not registered" in handle.waiting_reason
        state = await handle.describe()
        assert state.status is WorkflowStatus.PENDING
        assert state.waiting_on[0].kind == "deployment"
        assert "the start waits for a replica that has it" in state.waiting_on[0].detail
        assert await env.stores["orders"].list_instances() == []


async def test_starting_a_duplicate_instance_id_is_a_clear_error() -> None:
    async with TestEnvironment(APPS, time_skipping=False) as env:
        await env.client.start_workflow(approval, None, app_id="orders", instance_id="dup-1")
        with pytest.raises(WorkflowAlreadyExistsError, match="dup-1"):
            await env.client.start_workflow(approval, None, app_id="orders", instance_id="dup-1")


async def test_two_replicas_of_one_app_share_work_in_process() -> None:
    async with TestEnvironment(APPS, replicas=2) as env:
        handles = [
            await env.client.start_workflow(checkout, {"amount": i}, app_id="orders")
            for i in range(20)
        ]
        results = await asyncio.gather(*(h.result(timeout=10) for h in handles))
        assert [r["charged"].split()[1] for r in results] == [str(i) for i in range(20)]  # type: ignore[index]
        ran = [env.worker("payments", i).activities_completed for i in range(2)]
        assert sum(ran) == 20 and all(ran), ran


@orders.workflow
async def oversized(ctx: WorkflowContext, size: int) -> object:
    try:
        await ctx.call_activity("charge", b"x" * size, app_id="payments")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "sent"


async def test_oversized_activity_input_fails_at_the_call_site_inside_the_workflow() -> None:
    """The codec's size limit is enforced where the workflow calls the activity."""
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(oversized, 5 * 1024 * 1024, app_id="orders")
        result = await handle.result(timeout=5)
    assert isinstance(result, str)
    assert result.startswith("PayloadTooLargeError: input of activity 'charge'")


@orders.workflow
async def relay(ctx: WorkflowContext, state: dict[str, Any]) -> list[str]:
    shipped = await ctx.call_child_workflow("ship", {"amount": state["run"]}, app_id="shipping")
    seen = [*state.get("seen", []), shipped]
    if state["run"] < 3:
        return ctx.continue_as_new({"run": state["run"] + 1, "seen": seen})
    return seen


async def test_children_of_successive_continued_runs_get_distinct_ids() -> None:
    """Each run's child gets a fresh default ID, so no run waits on an old run's child."""
    async with TestEnvironment(APPS) as env:
        handle = await env.client.start_workflow(
            relay, {"run": 1}, app_id="orders", instance_id="relay"
        )
        assert await handle.result(timeout=5) == [f"shipped with label-{i}" for i in (1, 2, 3)]
        assert len(await env.stores["shipping"].list_instances()) == 3


async def test_an_event_for_an_instance_that_never_starts_is_dead_lettered_after_the_bound() -> (
    None
):
    """An early event is held (it may precede its start); past hold_unknown_for (10 min) with
    no instance it goes to the dead-letter queue with the reason, and is forgotten."""
    async with TestEnvironment(APPS) as env:
        await env.client.get_workflow("ghost", app_id="orders").raise_event("go", 1)
        await env.clock.sleep(60)
        assert env.transport.dead_letters("orders") == []
        assert len(await env.stores["orders"].held("ghost")) == 1
        await env.clock.sleep(600)
        dead = env.transport.dead_letters("orders")
        assert len(dead) == 1
        assert "held for instance 'ghost'" in dead[0][1]
        assert "did not exist within 600 s" in dead[0][1]
        assert await env.stores["orders"].held("ghost") == []


async def test_events_held_before_the_start_are_applied_in_arrival_order() -> None:
    async with TestEnvironment(APPS) as env:
        handle = env.client.get_workflow("early-1", app_id="orders")
        await handle.raise_event("approve", "first")
        await handle.raise_event("approve", "second")
        await env.clock.sleep(1)
        handle = await env.client.start_workflow(
            approval, None, app_id="orders", instance_id="early-1"
        )
        assert await handle.result(timeout=5) == "first"
