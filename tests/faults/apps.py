"""Apps for the fault tests (loaded by worker subprocesses with ``--module``).

Every activity first records its run in the side-effect log (``tests.harness.effects``), so
the ledger knows how often each task actually ran.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

from flowmesh import ActivityContext, App, RetryPolicy, WorkflowContext
from tests.harness.effects import record_run

host = App("fault-host")
act = App("fault-act")


@host.workflow
async def chain(ctx: WorkflowContext, steps: int) -> int:
    """``steps`` sequential activities on fault-act and one short durable timer."""
    total = 0
    for i in range(steps):
        total += await ctx.call_activity("double", i, app_id="fault-act")
        if i == 0:
            await ctx.create_timer(timedelta(milliseconds=300))
    return total


def chain_result(steps: int) -> int:
    """What ``chain(steps)`` returns."""
    return sum(2 * i for i in range(steps))


@host.workflow
async def fan_in(ctx: WorkflowContext, count: int) -> int:
    """``count`` activities at once on fault-act; sum of their results."""
    results = await ctx.when_all(
        [ctx.call_activity("double", i, app_id="fault-act") for i in range(count)]
    )
    return sum(results)


@host.workflow
async def slow_one(ctx: WorkflowContext, seconds: float) -> str:
    """One activity that takes ``seconds``."""
    return await ctx.call_activity("sleep_for", seconds, app_id="fault-act")


@host.workflow
async def poison(ctx: WorkflowContext, _: object) -> str:
    """Call an activity that kills its worker; the retry policy gives up after 2 attempts."""
    try:
        await ctx.call_activity(
            "crash_worker",
            None,
            app_id="fault-act",
            retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=100)),
        )
    except Exception as exc:
        return f"gave up: {type(exc).__name__}"
    return "unexpected success"


@act.activity
def double(ctx: ActivityContext, value: int) -> int:
    """Twice the input."""
    record_run(ctx)
    return 2 * value


@act.activity
def sleep_for(ctx: ActivityContext, seconds: float) -> str:
    """Sleep (heartbeating) and say which process finished."""
    record_run(ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        ctx.heartbeat()
    return f"slept {seconds}"


@act.activity
def crash_worker(ctx: ActivityContext, _: object) -> None:
    """A poison task: kills the process running it, every time."""
    record_run(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@host.workflow
async def double_then_sleep(ctx: WorkflowContext, seconds: float) -> list[object]:
    """``double(21)``, then ``sleep_for(seconds)``, then ``double(50)``: while it sleeps, one
    result is applied, one task is open and one is not scheduled yet."""
    first = await ctx.call_activity("double", 21, app_id="fault-act")
    slept = await ctx.call_activity("sleep_for", seconds, app_id="fault-act")
    last = await ctx.call_activity("double", 50, app_id="fault-act")
    return [first, slept, last]


@host.workflow
async def needs_missing(ctx: WorkflowContext, _: object) -> object:
    """Call an activity no fault-act deployment registers: the task waits for one."""
    return await ctx.call_activity("not_deployed_anywhere", None, app_id="fault-act")
