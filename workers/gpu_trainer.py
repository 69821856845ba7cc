"""``gpu-trainer``: trains a small model; hosts the ``train_model`` child workflow.

The ``train`` activity fits a linear model by gradient descent with numpy, or with torch on
the GPU when torch and CUDA are available, and reports progress with heartbeats.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flowmesh import ActivityContext, App, RetryPolicy, WorkflowContext

app = App("gpu-trainer")


def _device() -> str:
    try:
        import torch  # optional: only where the image ships it
    except ImportError:
        return "numpy"
    return "cuda" if torch.cuda.is_available() else "numpy"


def _train_numpy(ctx: ActivityContext, epochs: int, seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(512, 4))
    true_weights = np.array([1.5, -2.0, 0.5, 3.0])
    targets = features @ true_weights + rng.normal(scale=0.1, size=512)
    weights = np.zeros(4)
    loss = float("inf")
    for epoch in range(1, epochs + 1):
        error = features @ weights - targets
        loss = float(np.mean(error**2))
        weights -= 0.1 * (2 / len(targets)) * (features.T @ error)
        if epoch % max(1, epochs // 5) == 0:
            ctx.heartbeat({"epoch": epoch, "loss": round(loss, 5)})
    return {"weights": [round(float(w), 3) for w in weights], "loss": round(loss, 5)}


def _train_torch(ctx: ActivityContext, epochs: int, seed: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    device = torch.device("cuda")
    features = torch.randn(512, 4, device=device)
    true_weights = torch.tensor([1.5, -2.0, 0.5, 3.0], device=device)
    targets = features @ true_weights + 0.1 * torch.randn(512, device=device)
    weights = torch.zeros(4, device=device, requires_grad=True)
    optimiser = torch.optim.SGD([weights], lr=0.1)
    loss = torch.tensor(0.0)
    for epoch in range(1, epochs + 1):
        optimiser.zero_grad()
        loss = torch.mean((features @ weights - targets) ** 2)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        if epoch % max(1, epochs // 5) == 0:
            ctx.heartbeat({"epoch": epoch, "loss": round(float(loss), 5)})
    return {
        "weights": [round(float(w), 3) for w in weights.detach().cpu()],
        "loss": round(float(loss), 5),
    }


@app.activity
def train(ctx: ActivityContext, spec: dict[str, Any]) -> dict[str, Any]:
    """Fit the model for ``spec['epochs']`` epochs; heartbeats report epoch and loss."""
    epochs = int(spec.get("epochs", 50))
    seed = int(spec.get("seed", 7))
    device = _device()
    trained = (
        _train_torch(ctx, epochs, seed) if device == "cuda" else _train_numpy(ctx, epochs, seed)
    )
    return {**trained, "device": device, "epochs": epochs}


@app.workflow
async def train_model(ctx: WorkflowContext, spec: dict[str, Any]) -> dict[str, Any]:
    """Train (retrying on failure) and return the model; hosted by gpu-trainer."""
    ctx.set_custom_status({"stage": "training"})
    model: dict[str, Any] = await ctx.call_activity(
        train, spec, retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=2))
    )
    ctx.set_custom_status({"stage": "trained", "loss": model["loss"]})
    return model
