"""``app1``: hosts the reference workflows (its histories live in app1's store).

``pipeline`` sends a transform step to ``app2`` and a finalize step to ``app3``;
``train_and_report`` runs a training child workflow hosted by ``gpu-trainer``.
"""

from __future__ import annotations

from datetime import timedelta

from flowmesh import App, RetryPolicy, WorkflowContext

app = App("app1")

RETRY = RetryPolicy(
    max_attempts=5, initial_interval=timedelta(seconds=1), max_interval=timedelta(seconds=10)
)


@app.workflow
async def pipeline(ctx: WorkflowContext, document: dict[str, object]) -> dict[str, object]:
    """Transform a document on app2, then finalize it on app3."""
    ctx.set_custom_status({"stage": "transform"})
    transformed = await ctx.call_activity("transform", document, app_id="app2", retry=RETRY)
    ctx.set_custom_status({"stage": "finalize"})
    finalized = await ctx.call_activity("finalize", transformed, app_id="app3", retry=RETRY)
    ctx.set_custom_status({"stage": "done"})
    return {"instance": ctx.instance_id, "result": finalized}


@app.workflow
async def train_and_report(ctx: WorkflowContext, spec: dict[str, object]) -> dict[str, object]:
    """Train a model in a child workflow on gpu-trainer, then summarise it on app3."""
    model = await ctx.call_child_workflow("train_model", spec, app_id="gpu-trainer")
    report = await ctx.call_activity("finalize", {"model": model}, app_id="app3")
    return {"report": report}


@app.workflow
async def fan_out(ctx: WorkflowContext, count: int) -> int:
    """Run ``count`` transform activities on app2 in parallel and add up their lengths."""
    tasks = [
        ctx.call_activity("transform", {"text": f"item-{i}"}, app_id="app2") for i in range(count)
    ]
    results = await ctx.when_all(tasks)
    return sum(len(str(r["text"])) for r in results)
