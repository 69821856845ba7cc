"""The benchmark's apps; each ``flowmesh worker`` process loads one with ``--module bench.apps``.

``bench-app1`` hosts the workflows (and so needs Redis); ``bench-app2`` and ``bench-app3`` only
run trivial activities. The activities are ``async def`` so that what is measured is the
workflow machinery, not the thread-pool hop a ``def`` activity takes.
"""

from __future__ import annotations

from flowmesh import ActivityContext, App, WorkflowContext

host = App("bench-app1")
second = App("bench-app2")
third = App("bench-app3")


@second.activity
async def add_one(ctx: ActivityContext, value: int) -> int:
    """Trivial work on bench-app2."""
    return value + 1


@third.activity
async def double(ctx: ActivityContext, value: int) -> int:
    """Trivial work on bench-app3."""
    return value * 2


def chain3_expected(value: int) -> dict[str, int]:
    """What :func:`chain3` returns for ``value`` (the bench checks every result)."""
    return {"in": value, "out": (value + 1) * 2}


@host.workflow
async def chain3(ctx: WorkflowContext, value: int) -> dict[str, int]:
    """W1: one activity on bench-app2, then one on bench-app3."""
    first = await ctx.call_activity("add_one", value, app_id="bench-app2")
    second_result = await ctx.call_activity("double", first, app_id="bench-app3")
    return {"in": value, "out": second_result}


@host.workflow
async def sequential(ctx: WorkflowContext, steps: int) -> int:
    """W2/W4: ``steps`` activities on bench-app2, one after the other; returns ``steps``."""
    value = 0
    for _ in range(steps):
        value = await ctx.call_activity("add_one", value, app_id="bench-app2")
    return value


@host.workflow
async def fan_out(ctx: WorkflowContext, count: int) -> int:
    """W3: ``count`` activities on bench-app2 at once, gathered; returns the sum of results."""
    results = await ctx.when_all(
        [ctx.call_activity("add_one", i, app_id="bench-app2") for i in range(count)]
    )
    return sum(results)


def fan_out_expected(count: int) -> int:
    """What :func:`fan_out` returns for ``count``."""
    return count * (count + 1) // 2


@host.workflow
async def idle(ctx: WorkflowContext, _: object) -> object:
    """Memory check: wait for an event nobody sends."""
    return await ctx.wait_for_external_event("never")
