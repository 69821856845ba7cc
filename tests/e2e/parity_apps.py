"""Apps of the issue-18 end-to-end tests (cancellation, send_event, retry_timeout); worker
subprocesses load them with ``--module``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from pathlib import Path

from flowmesh import ActivityContext, App, RetryPolicy, TaskCancelledError, WorkflowContext

host = App("par-host")
svc = App("par-svc")


@host.workflow
async def approve_or_reject(ctx: WorkflowContext, _: object) -> object:
    """The loser of a when_any of two waits is cancelled, so a later event of its name is
    left to a new wait."""
    approve = ctx.wait_for_external_event("Approve")
    reject = ctx.wait_for_external_event("Reject")
    winner = await ctx.when_any([approve, reject])
    (reject if winner is approve else approve).cancel()
    second = await ctx.wait_for_external_event("Reject", timeout=timedelta(minutes=5))
    return [winner.get_result(), second]


@host.workflow
async def cancelled_timer(ctx: WorkflowContext, _: object) -> object:
    """A 2 s timer cancelled after 1 s must not fire; the workflow then waits 4 s."""
    timer = ctx.create_timer(timedelta(seconds=2))
    await ctx.create_timer(timedelta(seconds=1))
    timer.cancel()
    await ctx.create_timer(timedelta(seconds=4))
    return "done"


@host.workflow
async def cancel_activity(ctx: WorkflowContext, marker: str) -> object:
    """Start a long activity on par-svc, cancel it on event "stop", then wait for "done"."""
    task = ctx.call_activity("slow", marker, app_id="par-svc")
    await ctx.wait_for_external_event("stop")
    task.cancel()
    with contextlib.suppress(TaskCancelledError):
        await task
    return await ctx.wait_for_external_event("done")


@host.workflow
async def cancel_child(ctx: WorkflowContext, child_id: str) -> object:
    """Start a child on par-svc that waits forever; cancel it on event "stop"."""
    child = ctx.call_child_workflow("wait_forever", app_id="par-svc", instance_id=child_id)
    await ctx.wait_for_external_event("stop")
    child.cancel()
    return "cancelled"


@host.workflow
async def notify(ctx: WorkflowContext, target: str) -> object:
    """Send an event to workflow ``target`` on par-svc (which may not exist yet)."""
    ctx.send_event(target, "paid", {"by": ctx.instance_id}, app_id="par-svc")
    return "sent"


@host.workflow
async def flaky(ctx: WorkflowContext, _: object) -> object:
    """Retry an always failing activity every second within a 3 s budget: 3 attempts (2 if
    the round trips are slow), not 100."""
    policy = RetryPolicy(
        max_attempts=100,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=1,
        retry_timeout=timedelta(seconds=3),
    )
    return await ctx.call_activity("always_fails", app_id="par-svc", retry=policy)


@svc.workflow
async def wait_forever(ctx: WorkflowContext, _: object) -> object:
    return await ctx.wait_for_external_event("never")


@svc.workflow
async def invoice(ctx: WorkflowContext, _: object) -> object:
    return await ctx.wait_for_external_event("paid")


@svc.activity
async def slow(ctx: ActivityContext, marker: str) -> str:
    """Writes ``started`` to ``marker``, then ``cancelled`` once its workflow cancels it."""
    Path(marker).write_text("started")  # noqa: ASYNC240 - a tiny test marker
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        Path(marker).write_text(f"cancelled {ctx.is_cancelled}")  # noqa: ASYNC240
        raise
    return "finished"


@svc.activity
def always_fails(ctx: ActivityContext, _: object) -> str:
    time.sleep(0.01)
    raise RuntimeError(f"attempt {ctx.attempt} failed")
