"""Workflows exercising each engine feature, recorded as golden histories.

The examples in ``workers/`` cover activities across apps, child workflows and fan-out; these
add durable timers, external events (with and without timeout), retries, races, continue-as-
new, patches, failures, deterministic IDs and time, and operator suspend/terminate.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flowmesh import ActivityContext, App, NonRetryableError, RetryPolicy, WorkflowContext

app = App("scenarios")

RETRY = RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))


@app.activity
def echo(ctx: ActivityContext, value: Any) -> Any:
    """Return the input unchanged."""
    return value


@app.activity
def flaky(ctx: ActivityContext, number: int) -> int:
    """Fail the first attempt, then double the number."""
    if ctx.attempt < 2:
        raise RuntimeError("the first attempt always fails")
    return number * 2


@app.activity
def reject(ctx: ActivityContext, value: Any) -> Any:
    """Always fail, without retries."""
    raise NonRetryableError(f"rejected {value!r}")


@app.workflow
async def approval(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    """Cool off for an hour, then wait up to a day for an approval event."""
    ctx.set_custom_status("cooling off")
    await ctx.create_timer(timedelta(hours=1))
    ctx.set_custom_status("awaiting approval")
    try:
        approved = await ctx.wait_for_external_event("approval", timeout=timedelta(days=1))
    except TimeoutError:
        approved = False
    return {"order": order, "approved": approved}


@app.workflow
async def wait_for_go(ctx: WorkflowContext, _: Any) -> Any:
    """Wait (without timeout) for a ``go`` event, then echo its data."""
    data = await ctx.wait_for_external_event("go")
    return await ctx.call_activity(echo, data)


@app.workflow
async def retries(ctx: WorkflowContext, number: int) -> int:
    """An activity that succeeds on its second attempt."""
    result: int = await ctx.call_activity(flaky, number, retry=RETRY)
    return result


@app.workflow
async def race(ctx: WorkflowContext, _: Any) -> str:
    """An activity racing a five-minute timer."""
    work = ctx.call_activity(echo, "fast")
    timer = ctx.create_timer(timedelta(minutes=5))
    winner = await ctx.when_any([work, timer])
    return "activity" if winner is work else "timer"


@app.workflow
async def parent(ctx: WorkflowContext, count: int) -> int:
    """Fan out ``count`` child workflows and add up their results."""
    results = await ctx.when_all([ctx.call_child_workflow(child, i) for i in range(count)])
    return sum(results)


@app.workflow
async def child(ctx: WorkflowContext, number: int) -> int:
    """Echo ``number`` squared through an activity."""
    result: int = await ctx.call_activity(echo, number * number)
    return result


@app.workflow
async def countdown(ctx: WorkflowContext, remaining: int) -> str:
    """Continue as new once a second until ``remaining`` reaches zero."""
    if remaining > 0:
        await ctx.create_timer(timedelta(seconds=1))
        ctx.continue_as_new(remaining - 1)
    return "liftoff"


@app.workflow
async def patched(ctx: WorkflowContext, _: Any) -> Any:
    """New code guarded by ``is_patched`` (recorded as taking the patched path)."""
    if ctx.is_patched("v2"):
        return await ctx.call_activity(echo, "v2")
    return await ctx.call_activity(echo, "v1")


@app.workflow
async def failing(ctx: WorkflowContext, value: Any) -> Any:
    """Fails: its activity is rejected without retries."""
    return await ctx.call_activity(reject, value)


@app.workflow
async def deterministic(ctx: WorkflowContext, _: Any) -> dict[str, str]:
    """Deterministic UUIDs and time, across a timer."""
    first = ctx.new_uuid()
    await ctx.create_timer(timedelta(days=30))
    return {"first": first, "second": ctx.new_uuid(), "at": ctx.current_utc_datetime.isoformat()}


@app.workflow
async def cancellations(ctx: WorkflowContext, _: Any) -> dict[str, Any]:
    """Task.cancel() of a losing event wait, a timer and a child; an event sent to itself;
    a retry within a budget (``retry_timeout``)."""
    never = ctx.wait_for_external_event("never")
    await ctx.when_any([never, ctx.create_timer(timedelta(minutes=1))])
    never.cancel()
    timer = ctx.create_timer(timedelta(hours=1))
    echoed = await ctx.when_any([ctx.call_activity(echo, "first"), timer])
    timer.cancel()
    child = ctx.call_child_workflow(wait_for_go, instance_id="cancelled-child-1")
    await ctx.create_timer(timedelta(minutes=1))
    child.cancel()
    ctx.send_event(ctx.instance_id, "ping", "pong")
    ping = await ctx.wait_for_external_event("ping")
    budget = RetryPolicy(max_attempts=5, retry_timeout=timedelta(minutes=1))
    doubled = await ctx.call_activity(flaky, 21, retry=budget)
    return {"echoed": echoed.get_result(), "ping": ping, "doubled": doubled}
