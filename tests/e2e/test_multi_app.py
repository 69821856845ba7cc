"""Multi-app workflows over real RabbitMQ and Redis with real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from flowmesh import Client, WorkflowNotFoundError, WorkflowStatus
from flowmesh.model import ActivityCompleted, ChildWorkflowCompleted, WorkflowCompleted
from flowmesh.store.redis import RedisStore
from tests.harness.processes import WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(180)]

E2E_APPS = "tests.e2e.apps"


async def assert_completed_once(store: RedisStore, instance_id: str) -> None:
    """History proves exactly-once: one completion, each task result applied once."""
    record = await store.load(instance_id)
    assert record is not None, f"{instance_id} has no history"
    kinds = Counter(type(e).__name__ for e in record.history)
    assert kinds["WorkflowCompleted"] == 1, kinds
    results = [
        e.seq for e in record.history if isinstance(e, ActivityCompleted | ChildWorkflowCompleted)
    ]
    assert len(results) == len(set(results)), f"a result was applied twice: {results}"
    assert isinstance(record.history[-1], WorkflowCompleted)


async def test_reference_pipeline_runs_across_three_apps(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """app1's workflow runs transform on app2 and finalize on app3, each in its own process."""
    for app_id in ("app1", "app2", "app3"):
        workers.start(app_id)
    handle = await client.start_workflow("pipeline", {"text": "hello world"}, app_id="app1")
    result = await handle.result(timeout=60)
    assert isinstance(result, dict)
    finalized = result["result"]
    assert finalized["text"] == "HELLO WORLD"
    assert finalized["words"] == 2
    assert finalized["by"].startswith("app2/")
    assert finalized["sealed_by"].startswith("app3/")
    assert finalized["by"] != finalized["sealed_by"]  # different processes
    await assert_completed_once(await store_for("app1"), handle.instance_id)


async def test_child_workflow_runs_on_another_app_with_its_own_history(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """The child's history lives with gpu-trainer, the root's with app1."""
    for app_id in ("app1", "gpu-trainer", "app3"):
        workers.start(app_id)
    handle = await client.start_workflow(
        "train_and_report", {"epochs": 20}, app_id="app1", instance_id="train-e2e-1"
    )
    result = await handle.result(timeout=90)
    assert isinstance(result, dict)
    model = result["report"]["model"]
    assert model["epochs"] == 20 and len(model["weights"]) == 4
    await assert_completed_once(await store_for("app1"), "train-e2e-1")
    child_store = await store_for("gpu-trainer")
    await assert_completed_once(child_store, "train-e2e-1:0")
    child = await client.get_workflow("train-e2e-1:0", app_id="gpu-trainer").describe()
    assert child.status is WorkflowStatus.COMPLETED
    assert child.parent is not None and child.parent.app_id == "app1"
    assert await (await store_for("app1")).load("train-e2e-1:0") is None  # not in the root's store


async def test_three_replicas_share_a_fan_out_of_300_activities(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """Every replica of e2e-crunch runs some of the 300 tasks; each task's result arrives once."""
    workers.start("e2e-host", module=E2E_APPS)
    replicas = [workers.start("e2e-crunch", module=E2E_APPS, concurrency=4) for _ in range(3)]
    await asyncio.sleep(2)  # let all three replicas subscribe before the burst
    handle = await client.start_workflow("fan_out_pids", 300, app_id="e2e-host")
    result = await handle.result(timeout=120)
    assert isinstance(result, list)
    assert [item["i"] for item in result] == list(range(300))
    by_pid = Counter(item["pid"] for item in result)
    assert set(by_pid) == {p.pid for p in replicas}, by_pid
    await assert_completed_once(await store_for("e2e-host"), handle.instance_id)


async def test_work_for_an_app_not_yet_running_waits_and_completes(
    workers: WorkerProcesses, client: Client
) -> None:
    """The activity's app starts 5 s after the workflow; describe shows what it waits for."""
    workers.start("e2e-host", module=E2E_APPS)
    handle = await client.start_workflow("call_late", 42, app_id="e2e-host")
    await asyncio.sleep(5)
    state = await handle.describe()
    assert state.status is WorkflowStatus.RUNNING
    assert [(t.kind, t.name, t.app_id) for t in state.waiting_on] == [
        ("activity", "late_echo", "e2e-late")
    ]
    workers.start("e2e-late", module=E2E_APPS)
    assert await handle.result(timeout=60) == {"echo": 42}


async def test_recursive_terminate_and_purge_reach_a_child_on_another_app(
    workers: WorkerProcesses, client: Client
) -> None:
    """Terminate and purge with recursive=True act on the child hosted by e2e-child."""
    workers.start("e2e-host", module=E2E_APPS)
    workers.start("e2e-child", module=E2E_APPS)
    handle = await client.start_workflow(
        "parent_of_waiter", None, app_id="e2e-host", instance_id="parent-e2e"
    )
    child = client.get_workflow("parent-e2e-child", app_id="e2e-child")
    for _ in range(100):
        with contextlib.suppress(WorkflowNotFoundError):  # not created yet
            if (await child.describe()).status is WorkflowStatus.RUNNING:
                break
        await asyncio.sleep(0.1)
    await handle.terminate("test over", recursive=True)
    parent_state = await handle.wait(timeout=30)
    assert parent_state.status is WorkflowStatus.TERMINATED
    for _ in range(100):
        if (await child.describe()).status is WorkflowStatus.TERMINATED:
            break
        await asyncio.sleep(0.1)
    assert (await child.describe()).status is WorkflowStatus.TERMINATED

    # Purge with recursive=True removes the child's history on its own app too.
    await handle.purge(recursive=True)
    for _ in range(100):
        try:
            await child.describe()
        except WorkflowNotFoundError:
            break
        await asyncio.sleep(0.1)
    with pytest.raises(WorkflowNotFoundError):
        await child.describe()
    with pytest.raises(WorkflowNotFoundError):
        await handle.describe()
