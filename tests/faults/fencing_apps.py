"""Apps for the run-fencing and early-message tests (loaded by worker subprocesses).

``fence-host`` hosts the workflows, ``fence-kids`` hosts child workflows and ``fence-act`` runs
the activity. ``fencing_apps_old`` is an older deployment of ``fence-host`` that lacks
``ship_after_go`` (a rolling deploy).
"""

from __future__ import annotations

from flowmesh import ActivityContext, App, ChildWorkflowFailedError, WorkflowContext

host = App("fence-host")
kids = App("fence-kids")
act = App("fence-act")


@host.workflow
async def ship_after_go(ctx: WorkflowContext, amount: int) -> str:
    """Wait for event "go", then ship ``amount`` (task seq 0)."""
    await ctx.wait_for_external_event("go")
    return await ctx.call_activity("ship", amount, app_id="fence-act")


@host.workflow
async def adopt(ctx: WorkflowContext, child_id: str) -> str:
    """Start child ``kid`` as ``child_id``; say how that went."""
    try:
        return await ctx.call_child_workflow("kid", None, app_id="fence-kids", instance_id=child_id)
    except ChildWorkflowFailedError as exc:
        return f"failed: {type(exc.__cause__).__name__}: {exc}"


@kids.workflow
async def kid(ctx: WorkflowContext, _: object) -> str:
    """Runs until event "done"."""
    await ctx.wait_for_external_event("done")
    return "kid done"


@act.activity
def ship(ctx: ActivityContext, amount: int) -> str:
    """Say what was shipped, for which run."""
    return f"shipped {amount}"
