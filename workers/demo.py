"""The main job: the reference multi-app scenario, end to end.

Runs on the embedded backend (in-process broker and stores, virtual clock) by default. With
``FLOWMESH_AMQP_URL`` and ``FLOWMESH_REDIS_URL`` set, it starts one ``flowmesh worker``
subprocess per app ID against those servers instead, and drives them with a broker-only client.

    python -m workers.demo
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from flowmesh import Client
from workers import app1, app2, app3, gpu_trainer

APPS = [app1.app, app2.app, app3.app, gpu_trainer.app]
_SHOWN = {
    "worker started",
    "workflow started",
    "workflow completed",
    "workflow failed",
    "activity completed",
    "activity failed",
    "heartbeat",
}


def _render(_: Any, __: str, event: dict[str, Any]) -> str:
    """One compact progress line per interesting runtime event."""
    name = str(event.pop("event", ""))
    if name not in _SHOWN:
        raise structlog.DropEvent
    app = event.pop("app_id", "")
    where = event.pop("instance_id", "")
    task = event.pop("task", "")
    for noise in ("attempt", "level", "activities", "workflows", "concurrency"):
        event.pop(noise, None)
    extra = " ".join(f"{k}={v}" for k, v in event.items() if v is not None)
    return f"  [{app:<11}] {name:<19} {task or where:<28} {extra}".rstrip()


def _configure_progress_output() -> None:
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _render],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )


async def scenarios(client: Client) -> None:
    """Start the example workflows and print their results."""
    run = uuid.uuid4().hex[:6]
    print("\n▶ pipeline on app1 → transform on app2 → finalize on app3")
    handle = await client.start_workflow(
        "pipeline",
        {"text": "durable workflows across apps"},
        app_id="app1",
        instance_id=f"pipeline-{run}",
    )
    result = await handle.result(timeout=60)
    print(f"✔ result of {handle.instance_id}: {result}")

    print("\n▶ train_and_report on app1 → child train_model on gpu-trainer → finalize on app3")
    handle = await client.start_workflow(
        "train_and_report", {"epochs": 60, "seed": 3}, app_id="app1", instance_id=f"train-{run}"
    )
    result = await handle.result(timeout=120)
    print(f"✔ result of {handle.instance_id}: {result}")

    print("\n▶ fan_out on app1: 8 transforms on app2 in parallel")
    handle = await client.start_workflow("fan_out", 8, app_id="app1", instance_id=f"fanout-{run}")
    print(f"✔ result of {handle.instance_id}: {await handle.result(timeout=60)}")


async def run_embedded() -> None:
    """All apps in this process on the embedded backend."""
    from flowmesh.testing import TestEnvironment

    print("flowmesh demo on the embedded backend: in-process broker and stores, virtual clock")
    print("(set FLOWMESH_AMQP_URL and FLOWMESH_REDIS_URL to run it on RabbitMQ and Redis)")
    async with TestEnvironment(APPS, time_skipping=True) as env:
        await scenarios(env.client)


async def run_real(amqp_url: str, redis_url: str) -> None:
    """One `flowmesh worker` subprocess per app ID against real RabbitMQ and Redis."""
    print("flowmesh demo on RabbitMQ and Redis: one worker process per app ID")
    env = {**os.environ, "FLOWMESH_AMQP_URL": amqp_url, "FLOWMESH_REDIS_URL": redis_url}
    workers = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before any awaiting
            [
                sys.executable,
                "-m",
                "flowmesh.cli",
                "worker",
                "--app-id",
                app.app_id,
                "--allow-unsafe-redis",
            ],
            env=env,
        )
        for app in APPS
    ]
    try:
        async with Client(amqp_url) as client:
            await scenarios(client)
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait(timeout=30)


def main(runner: Callable[[], Awaitable[None]] | None = None) -> None:
    """Entry point of ``make demo``."""
    started = time.perf_counter()
    amqp_url = os.environ.get("FLOWMESH_AMQP_URL")
    redis_url = os.environ.get("FLOWMESH_REDIS_URL")
    if amqp_url and redis_url:
        asyncio.run(run_real(amqp_url, redis_url))
    else:
        _configure_progress_output()
        asyncio.run(runner() if runner else run_embedded())
    print(f"\ndone in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main()
