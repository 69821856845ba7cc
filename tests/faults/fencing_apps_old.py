"""An older deployment of ``fence-host``: it does not register ``ship_after_go`` yet."""

from __future__ import annotations

from flowmesh import App, WorkflowContext

host = App("fence-host")


@host.workflow
async def adopt(ctx: WorkflowContext, child_id: str) -> str:
    """Present in both deployments."""
    return child_id
