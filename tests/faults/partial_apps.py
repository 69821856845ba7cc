"""Apps for the partial-failure fault tests (``tests/faults/test_partial_failures.py``).

``pf-host`` hosts the workflows; ``pf-act``, ``pf-late`` and ``pf-slow`` run the same
``double`` activity (``pf-late`` and ``pf-slow`` are targets a test keeps out of reach for a
while, each in one test only, as the session's vhost keeps queues); ``pf-nowhere`` never
runs. Every activity records its run in the side-effect log first.
"""

from __future__ import annotations

from flowmesh import ActivityContext, App, WorkflowContext
from tests.harness.effects import record_run

host = App("pf-host")
act = App("pf-act")
late = App("pf-late")
slow = App("pf-slow")


@host.workflow
async def split(ctx: WorkflowContext, count: int) -> int:
    """``count`` activities on pf-act and one on pf-late, scheduled in one step."""
    tasks = [ctx.call_activity("double", i, app_id="pf-act") for i in range(count)]
    tasks.append(ctx.call_activity("double", 1000, app_id="pf-late"))
    return sum(await ctx.when_all(tasks))


def split_result(count: int) -> int:
    """What ``split(count)`` returns."""
    return sum(2 * i for i in range(count)) + 2000


@host.workflow
async def one_call(ctx: WorkflowContext, target: str) -> int:
    """One ``double(21)`` on app ``target``."""
    result: int = await ctx.call_activity("double", 21, app_id=target)
    return result


@host.workflow
async def padded_pair(ctx: WorkflowContext, padding: str) -> int:
    """Two activities on pf-act; the (large) input only makes the stored state large."""
    del padding
    first, second = await ctx.when_all(
        [ctx.call_activity("double", n, app_id="pf-act") for n in (5, 16)]
    )
    return int(first) + int(second)


@host.workflow
async def fan_in(ctx: WorkflowContext, count: int) -> int:
    """``count`` activities at once on pf-act; the sum of their results."""
    results = await ctx.when_all(
        [ctx.call_activity("double", i, app_id="pf-act") for i in range(count)]
    )
    return sum(results)


def _double(ctx: ActivityContext, value: int) -> int:
    record_run(ctx)
    return 2 * value


for _app in (act, late, slow):
    _app.activity(name="double")(_double)
