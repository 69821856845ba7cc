"""Suspend and resume from two clients apply in the order issued, across two host replicas
(issue 15, item 6): a control command returns once the host committed it."""

from __future__ import annotations

import asyncio

from flowmesh import Client, WorkflowStatus
from flowmesh.model import WorkflowResumed, WorkflowSuspended
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.stores import StoreOpener

E2E_APPS = "tests.e2e.apps"
ROUNDS = 20


async def test_suspend_then_resume_from_two_clients_across_two_replicas_ends_running(
    services: Services, workers: WorkerProcesses, client: Client, store_for: StoreOpener
) -> None:
    """Client 1 suspends and, once that returned, client 2 resumes; two replicas of the host
    take the commands as they come. Each round ends RUNNING (seen at once by both clients),
    and the history holds the suspensions and resumptions in issue order."""
    for _ in range(2):
        workers.wait_ready(workers.start("e2e-child", module=E2E_APPS))
    first = await client.start_workflow("wait_forever", None, app_id="e2e-child")
    async with Client(services.amqp_url) as other:
        second = other.get_workflow(first.instance_id, app_id="e2e-child")
        for round_ in range(ROUNDS):
            await first.suspend(f"round {round_}")
            assert (await second.describe()).status is WorkflowStatus.SUSPENDED, round_
            await second.resume(f"round {round_}")
            assert (await first.describe()).status is WorkflowStatus.RUNNING, round_
    await asyncio.sleep(0.5)  # anything still in flight would show up now
    final = await first.describe()
    assert final.status is WorkflowStatus.RUNNING
    record = await (await store_for("e2e-child")).load(first.instance_id)
    assert record is not None
    controls = [
        type(e).__name__
        for e in record.history
        if isinstance(e, WorkflowSuspended | WorkflowResumed)
    ]
    assert controls == ["WorkflowSuspended", "WorkflowResumed"] * ROUNDS
    await first.terminate("test over")
