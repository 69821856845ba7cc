"""Issue 18 over real RabbitMQ and Redis with worker subprocesses: Task.cancel() of event
waits, timers, activities and children; ctx.send_event across apps; retry_timeout."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from flowmesh import Client, WorkflowFailedError, WorkflowNotFoundError, WorkflowStatus
from flowmesh.model import ActivityScheduled, EventSent, TaskCancelled, TimerFired
from tests.harness.processes import WorkerProcesses
from tests.harness.stores import StoreOpener

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(120)]

APPS = "tests.e2e.parity_apps"


def start_both(workers: WorkerProcesses) -> None:
    workers.start("par-host", module=APPS)
    workers.start("par-svc", module=APPS)


async def eventually(check: object, timeout: float = 30.0) -> None:
    for _ in range(int(timeout * 10)):
        with contextlib.suppress(WorkflowNotFoundError, FileNotFoundError):
            if await check():  # type: ignore[operator]
                return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_a_cancelled_losing_wait_does_not_consume_a_later_event(
    workers: WorkerProcesses, client: Client
) -> None:
    start_both(workers)
    handle = await client.start_workflow("approve_or_reject", app_id="par-host")
    await handle.raise_event("Approve", "yes")
    await asyncio.sleep(0.5)  # the two events in separate steps: Approve decides first
    await handle.raise_event("Reject", "later")
    assert await handle.result(timeout=30) == ["yes", "later"]


async def test_a_cancelled_timer_never_fires(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    start_both(workers)
    handle = await client.start_workflow("cancelled_timer", app_id="par-host")
    assert await handle.result(timeout=30) == "done"
    record = await (await store_for("par-host")).load(handle.instance_id)
    assert record is not None
    assert TimerFired(0) not in record.history
    assert TimerFired(1) in record.history and TimerFired(2) in record.history


async def test_an_activity_cancel_is_recorded_and_seen_by_the_running_activity(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener, tmp_path: Path
) -> None:
    start_both(workers)
    marker = tmp_path / "slow.txt"
    handle = await client.start_workflow("cancel_activity", str(marker), app_id="par-host")

    async def running() -> bool:
        return marker.read_text() == "started"

    async def cancelled() -> bool:
        return marker.read_text() == "cancelled True"

    await eventually(running)
    await handle.raise_event("stop")
    await eventually(cancelled)
    await handle.raise_event("done", "end")
    assert await handle.result(timeout=30) == "end"
    record = await (await store_for("par-host")).load(handle.instance_id)
    assert record is not None
    assert TaskCancelled(0) in record.history


async def test_cancelling_a_child_terminates_it_on_its_app(
    workers: WorkerProcesses, client: Client
) -> None:
    start_both(workers)
    handle = await client.start_workflow(
        "cancel_child", "par-kid-1", app_id="par-host", instance_id="par-parent-1"
    )
    child = client.get_workflow("par-kid-1", app_id="par-svc")

    async def child_running() -> bool:
        return (await child.describe()).status is WorkflowStatus.RUNNING

    async def child_terminated() -> bool:
        return (await child.describe()).status is WorkflowStatus.TERMINATED

    await eventually(child_running)
    await handle.raise_event("stop")
    assert await handle.result(timeout=30) == "cancelled"
    await eventually(child_terminated)
    assert (await child.describe()).output == "cancelled by parent par-parent-1"


async def test_send_event_to_an_instance_created_later_on_another_app(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """The event is held by par-svc until the instance exists, then applied at its start."""
    start_both(workers)
    sender = await client.start_workflow("notify", "par-inv-1", app_id="par-host")
    assert await sender.result(timeout=30) == "sent"
    record = await (await store_for("par-host")).load(sender.instance_id)
    assert record is not None
    assert EventSent(0, "par-inv-1", "par-svc", "paid") in record.history
    await asyncio.sleep(1)  # the event reaches par-svc first and is held there
    receiver = await client.start_workflow("invoice", app_id="par-svc", instance_id="par-inv-1")
    assert await receiver.result(timeout=30) == {"by": sender.instance_id}


async def test_retry_timeout_stops_retries(
    workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    start_both(workers)
    handle = await client.start_workflow("flaky", app_id="par-host")
    with pytest.raises(WorkflowFailedError, match=r"attempt [23] failed"):
        await handle.result(timeout=30)
    record = await (await store_for("par-host")).load(handle.instance_id)
    assert record is not None
    attempts = [e.attempt for e in record.history if isinstance(e, ActivityScheduled)]
    assert attempts in ([1, 2], [1, 2, 3])  # 1 s apart within 3 s, measured in step times
