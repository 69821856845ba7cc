"""Re-record the golden histories: ``make golden`` (``python -m tests.golden.record``).

Runs every example workflow of ``workers/`` and every scenario of
:mod:`tests.golden.scenarios` on the embedded backend with time skipping, and writes each
instance's history, finished or still waiting, to ``tests/golden/histories/<app>/<id>.jsonl``.
It also writes step prefixes of a few runs (``<id>.step-<n>.jsonl``): the histories those
instances had while waiting on a timer or an activity, which is what a deploy meets.

Re-record only when a change to workflow code is meant to break old histories (and running
instances have been drained or patched); review the diff like code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import structlog

from flowmesh import ActivityContext, App, WorkflowFailedError, WorkflowStatus
from flowmesh.client import Client
from flowmesh.model import EventRaised, HistoryEvent, WorkflowStarted
from flowmesh.replay import HistoryFile, read_history, write_history
from flowmesh.testing import TestEnvironment, record_histories
from tests.golden import scenarios
from workers import app1, app2, app3, gpu_trainer

HISTORIES = Path(__file__).parent / "histories"
"""Where the golden history files live."""

WORKFLOW_APPS = (app1.app, gpu_trainer.app, scenarios.app)
"""The apps whose workflows the golden histories record."""

# (file, steps to keep): histories stopped mid-way, e.g. waiting on a timer that later fired.
PREFIXES = (
    ("app1/pipeline-1.jsonl", 2),
    ("app1/train-1.jsonl", 1),
    ("scenarios/approval-approved.jsonl", 1),
    ("scenarios/approval-approved.jsonl", 2),
    ("scenarios/retries-1.jsonl", 2),
    ("scenarios/deterministic-1.jsonl", 1),
)


def activity_apps() -> list[App]:
    """``app2`` and ``app3`` running the real example activities, with the worker's process
    ID left out of their outputs so that re-recording gives the same files."""
    transform_app = App("app2")
    finalize_app = App("app3")

    @transform_app.activity(name="transform")
    def transform(ctx: ActivityContext, document: dict[str, object]) -> dict[str, object]:
        return {**app2.transform(ctx, document), "by": "app2"}

    @finalize_app.activity(name="finalize")
    async def finalize(ctx: ActivityContext, payload: dict[str, object]) -> dict[str, object]:
        return {**await app3.finalize(ctx, payload), "sealed_by": "app3"}

    return [transform_app, finalize_app]


async def _until(client: Client, app_id: str, instance_id: str, status: WorkflowStatus) -> None:
    handle = client.get_workflow(instance_id, app_id=app_id)
    for _ in range(2000):
        state = await handle.describe()
        if state.status is status and (status is not WorkflowStatus.RUNNING or state.waiting_on):
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{instance_id} did not reach {status.value}")


async def run_examples(client: Client) -> None:
    """The workflows of ``workers/``, as ``make demo`` runs them."""
    runs: list[tuple[str, Any, str]] = [
        ("pipeline", {"text": "durable workflows across apps"}, "pipeline-1"),
        ("train_and_report", {"epochs": 20, "seed": 3}, "train-1"),
        ("fan_out", 4, "fanout-1"),
    ]
    for workflow, value, instance_id in runs:
        handle = await client.start_workflow(
            workflow, value, app_id="app1", instance_id=instance_id
        )
        await handle.result(timeout=60)


async def run_scenarios(client: Client) -> None:
    """Every scenario, finished ones first, then the ones left waiting or stopped."""
    app_id = "scenarios"

    async def finish(workflow: str, value: Any, instance_id: str) -> None:
        handle = await client.start_workflow(
            workflow, value, app_id=app_id, instance_id=instance_id
        )
        with contextlib.suppress(WorkflowFailedError):  # a failed run is a history too
            await handle.result(timeout=60)

    approved = await client.start_workflow(
        "approval", {"id": 7}, app_id=app_id, instance_id="approval-approved"
    )
    await _until(client, app_id, "approval-approved", WorkflowStatus.RUNNING)
    await approved.raise_event("approval", True)
    await approved.result(timeout=60)
    await finish("approval", {"id": 8}, "approval-timed-out")
    await finish("retries", 21, "retries-1")
    await finish("race", None, "race-1")
    await finish("parent", 3, "parent-1")
    await finish("countdown", 3, "countdown-1")
    await finish("patched", None, "patched-1")
    await finish("failing", "order-9", "failing-1")
    await finish("deterministic", None, "deterministic-1")
    await finish("cancellations", None, "cancellations-1")
    # Left waiting for an event, suspended while waiting, and terminated while waiting.
    for instance_id in ("waiting-1", "suspended-1", "terminated-1"):
        await client.start_workflow("wait_for_go", None, app_id=app_id, instance_id=instance_id)
        await _until(client, app_id, instance_id, WorkflowStatus.RUNNING)
    await client.get_workflow("suspended-1", app_id=app_id).suspend("paused for the recording")
    await client.get_workflow("terminated-1", app_id=app_id).terminate("stopped for the recording")


_IDS = uuid.UUID("6f0a5b1e-8d7c-4c1a-9e2b-3a4d5c6e7f80")


def _stable_id(app_id: str, instance_id: str, kind: str) -> str:
    return uuid.uuid5(_IDS, f"{app_id}/{instance_id}/{kind}").hex


def stable_ids(history: HistoryFile) -> HistoryFile:
    """``history`` with its random run, request and event IDs replaced by ones derived from
    the instance, so that re-recording changes no file unless behaviour changed (the workflows
    recorded here never read ``ctx.run_id``)."""

    def stable(index: int, event: HistoryEvent) -> HistoryEvent:
        if isinstance(event, EventRaised) and event.event_id:
            event_id = _stable_id(history.app_id, history.instance_id, f"event-{index}")
            return dataclasses.replace(event, event_id=event_id)
        if not isinstance(event, WorkflowStarted):
            return event
        parent = event.parent
        if parent is not None and parent.run_id:
            run = _stable_id(parent.app_id, parent.instance_id, "run")
            parent = dataclasses.replace(parent, run_id=run)
        return dataclasses.replace(
            event,
            parent=parent,
            run_id=_stable_id(event.app_id, event.instance_id, "run") if event.run_id else "",
            request_id=(
                _stable_id(event.app_id, event.instance_id, "request") if event.request_id else ""
            ),
        )

    events = tuple(stable(index, event) for index, event in enumerate(history.events))
    return dataclasses.replace(history, events=events)


async def record(directory: Path = HISTORIES) -> list[Path]:
    """Run everything and (re)write ``directory``; returns the files written."""
    apps = [*WORKFLOW_APPS, *activity_apps()]
    async with TestEnvironment(apps, time_skipping=True) as env:
        await run_examples(env.client)
        await run_scenarios(env.client)
        shutil.rmtree(directory, ignore_errors=True)
        written = await record_histories(env, directory)
    for path in written:
        write_history(path, stable_ids(read_history(path)))
    for name, steps in PREFIXES:
        history = read_history(directory / name)
        target = directory / name.replace(".jsonl", f".step-{steps}.jsonl")
        written.append(write_history(target, history.prefix(steps)))
    return sorted(written)


def main() -> None:
    """Entry point of ``make golden``."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    written = asyncio.run(record())
    root = Path.cwd()
    for path in written:
        print(path.relative_to(root) if path.is_relative_to(root) else path)
    print(f"{len(written)} golden histories written", file=sys.stderr)


if __name__ == "__main__":
    main()
