"""Log lines carry the context of their own work, never that of the message's sender."""

from __future__ import annotations

import structlog
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from flowmesh import ActivityContext, App, WorkflowContext
from flowmesh.testing import TestEnvironment

orders = App("orders")
payments = App("payments")


@payments.activity
async def charge(ctx: ActivityContext, amount: int) -> str:
    structlog.get_logger().info("charging")  # bound to this activity's task and attempt
    return f"charged {amount}"


@orders.workflow
async def checkout(ctx: WorkflowContext, amount: int) -> str:
    result: str = await ctx.call_activity("charge", amount, app_id="payments")
    return result


async def test_host_lines_do_not_inherit_the_bindings_of_the_activity_that_answered() -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with TestEnvironment([orders, payments]) as env:
            handle = await env.client.start_workflow(
                "checkout", 5, app_id="orders", instance_id="co-1"
            )
            assert await handle.result(timeout=5) == "charged 5"
    charging = [e for e in logs if e["event"] == "charging"]
    assert charging and charging[0]["task"] == "charge#0"  # the activity's own bindings
    completed = [e for e in logs if e["event"] == "workflow completed"]
    assert len(completed) == 1
    assert completed[0]["instance_id"] == "co-1"
    assert "task" not in completed[0] and "attempt" not in completed[0]
