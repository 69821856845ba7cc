"""Apps for the security end-to-end tests (worker subprocesses load them with ``--module``).

``guarded`` carries its input's secret through every kind of user data: custom status, an
activity's input and output on another app, an activity failure's message and stack trace,
an external event's data and the workflow's output.
"""

from __future__ import annotations

from typing import Any

from flowmesh import ActivityContext, ActivityFailedError, App, RetryPolicy, WorkflowContext

host = App("sec-host")
act = App("sec-act")
mask_host = App("secm-host")
mask_act = App("secm-act")


@host.workflow
async def guarded(ctx: WorkflowContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Spread ``payload["secret"]`` over every user-data field, then return it."""
    secret = payload["secret"]
    ctx.set_custom_status({"holding": secret})
    echoed = await ctx.call_activity("echo", {"secret": secret}, app_id="sec-act")
    try:
        await ctx.call_activity(
            "refuse", secret, app_id="sec-act", retry=RetryPolicy(max_attempts=1)
        )
        failure_message = ""
    except ActivityFailedError as exc:
        failure_message = exc.failure.message
    approval = await ctx.wait_for_external_event("approve")
    return {"echoed": echoed, "approval": approval, "failure": failure_message}


@act.activity
def echo(ctx: ActivityContext, value: object) -> object:
    """Return the input inside a map (and report it as heartbeat details)."""
    ctx.heartbeat(value)
    return {"echo": value}


@act.activity
def refuse(ctx: ActivityContext, secret: str) -> None:
    """Fail with the secret in the error message (and so in the stack trace)."""
    raise ValueError(f"refusing to handle {secret}")


@mask_host.workflow
async def relay(ctx: WorkflowContext, value: object) -> object:
    """Call one activity on secm-act and return its result."""
    return await ctx.call_activity("stamp", value, app_id="secm-act")


@mask_act.activity
def stamp(ctx: ActivityContext, value: object) -> object:
    """Wrap the input."""
    return {"stamped": value}
