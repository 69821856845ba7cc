"""Apps used by the end-to-end tests; worker subprocesses load them with ``--module``."""

from __future__ import annotations

import os
import time
from typing import Any

from flowmesh import ActivityContext, App, WorkflowContext

host = App("e2e-host")
crunch = App("e2e-crunch")
late = App("e2e-late")
child_host = App("e2e-child")


@host.workflow
async def fan_out_pids(ctx: WorkflowContext, count: int) -> list[dict[str, Any]]:
    """Fan ``count`` activities out to e2e-crunch; returns which process ran each."""
    tasks = [ctx.call_activity("whoami", i, app_id="e2e-crunch") for i in range(count)]
    return await ctx.when_all(tasks)


@host.workflow
async def endless(ctx: WorkflowContext, _: object) -> object:
    """Call activities one after the other, forever, without continue_as_new."""
    index = 0
    while True:
        await ctx.call_activity("whoami", index, app_id="e2e-crunch")
        index += 1


@crunch.activity
def whoami(ctx: ActivityContext, index: int) -> dict[str, Any]:
    """Report the replica (process) that ran this task; slow enough for work to spread."""
    time.sleep(0.01)
    return {"i": index, "pid": os.getpid()}


@host.workflow
async def call_late(ctx: WorkflowContext, value: object) -> object:
    """Call an activity on an app that may not be deployed yet."""
    return await ctx.call_activity("late_echo", value, app_id="e2e-late")


@late.activity
def late_echo(ctx: ActivityContext, value: object) -> object:
    """Echo the input back."""
    return {"echo": value}


@host.workflow
async def parent_of_waiter(ctx: WorkflowContext, _: object) -> object:
    """Start a child on e2e-child that waits forever."""
    return await ctx.call_child_workflow(
        "wait_forever", None, app_id="e2e-child", instance_id=f"{ctx.instance_id}-child"
    )


@child_host.workflow
async def wait_forever(ctx: WorkflowContext, _: object) -> str:
    """Wait for an event nobody sends."""
    await ctx.wait_for_external_event("never")
    return "unreachable"


@host.workflow
async def parent_of_finisher(ctx: WorkflowContext, value: object) -> object:
    """Start a child on e2e-child that finishes at once."""
    return await ctx.call_child_workflow(
        "finish", value, app_id="e2e-child", instance_id=f"{ctx.instance_id}-child"
    )


@child_host.workflow
async def finish(ctx: WorkflowContext, value: object) -> object:
    """Return the input."""
    return {"child": value}


@host.workflow
async def stamped(ctx: WorkflowContext, value: object) -> object:
    """One activity on e2e-crunch; the output carries the input and the workflow's run."""
    await ctx.call_activity("whoami", 0, app_id="e2e-crunch")
    return {"value": value, "at": ctx.current_utc_datetime.isoformat()}


@host.workflow
async def chatty(ctx: WorkflowContext, count: int) -> int:
    """``count`` activities one after the other: a long history."""
    for index in range(count):
        await ctx.call_activity("whoami", index, app_id="e2e-crunch")
    return count
