"""Apps of the cluster end-to-end tests (loaded by worker subprocesses with ``--module``).

Two hosting apps (``cl-host``, ``cl-host2``) with the same workflows, activities on
``cl-act``, child workflows on ``cl-child``. Activities record each run in the side-effect log
(``tests.harness.effects``) for the ledger.
"""

from __future__ import annotations

from datetime import timedelta

from flowmesh import ActivityContext, App, WorkflowContext
from tests.harness.effects import record_run

host = App("cl-host")
host2 = App("cl-host2")
act = App("cl-act")
child = App("cl-child")


async def chain(ctx: WorkflowContext, steps: int) -> int:
    """``steps`` activities on cl-act one after the other, a short timer after the first."""
    total = 0
    for i in range(steps):
        total += await ctx.call_activity("double", i, app_id="cl-act")
        if i == 0:
            await ctx.create_timer(timedelta(milliseconds=200))
    return total


def chain_result(steps: int) -> int:
    """What ``chain(steps)`` returns."""
    return sum(2 * i for i in range(steps))


async def quick(ctx: WorkflowContext, value: int) -> int:
    """No activity: one step from start to finish."""
    return value + 1


async def parent(ctx: WorkflowContext, value: int) -> object:
    """A child workflow on cl-child (which calls cl-act), then one activity of its own."""
    got = await ctx.call_child_workflow(
        "child_double", value, app_id="cl-child", instance_id=f"{ctx.instance_id}-child"
    )
    return {"child": got, "own": await ctx.call_activity("double", value, app_id="cl-act")}


async def wait_go(ctx: WorkflowContext, value: int) -> object:
    """Wait for the external event ``go``; then a timer; return what the event carried."""
    data = await ctx.wait_for_external_event("go", timeout=timedelta(seconds=90))
    await ctx.create_timer(timedelta(milliseconds=100))
    return {"value": value, "go": data}


for _app in (host, host2):
    _app.workflow(chain)
    _app.workflow(quick)
    _app.workflow(parent)
    _app.workflow(wait_go)


@child.workflow
async def child_double(ctx: WorkflowContext, value: int) -> int:
    """One activity on cl-act."""
    return int(await ctx.call_activity("double", value, app_id="cl-act"))


@act.activity
def double(ctx: ActivityContext, value: int) -> int:
    """Twice the input."""
    record_run(ctx)
    return 2 * value
