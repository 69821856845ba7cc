"""Long activities on a lease, and notes on tasks that wait for a deployment."""

from __future__ import annotations

import asyncio
import time

from flowmesh import ActivityContext, App, WorkerOptions, WorkflowContext, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.model import ActivityLease
from flowmesh.testing import TestEnvironment
from flowmesh.transport import Outgoing, QueueKind

host = App("host")
runner = App("runner")
runs: list[int] = []


@host.workflow
async def long_job(ctx: WorkflowContext, seconds: float) -> str:
    return await ctx.call_activity("train", seconds, app_id="runner")


@host.workflow
async def needs_missing(ctx: WorkflowContext, _: object) -> object:
    return await ctx.call_activity("not_deployed_yet", None, app_id="runner")


@runner.activity
def train(ctx: ActivityContext, seconds: float) -> str:
    runs.append(ctx.attempt)
    time.sleep(seconds)
    return f"trained for {seconds}s"


async def test_activity_past_its_ack_deadline_runs_on_a_lease_and_completes_once() -> None:
    """The delivery is acked at the deadline, the lease is visible, the result applies once."""
    runs.clear()
    options = WorkerOptions(ack_deadline=0.2, activity_lease=0.6)
    async with TestEnvironment([host, runner], time_skipping=False, options=options) as env:
        handle = await env.client.start_workflow(long_job, 1.2, app_id="host")
        await asyncio.sleep(0.6)
        state = await handle.describe()
        assert state.waiting_on and "lease until" in state.waiting_on[0].detail, state.waiting_on
        assert await handle.result(timeout=5) == "trained for 1.2s"
    assert runs == [1]  # leases were renewed in time: never dispatched twice


async def test_expired_lease_dispatches_the_task_again() -> None:
    """A lease nobody renews (the worker died) makes the host send the task again."""
    runs.clear()
    options = WorkerOptions(ack_deadline=0.1, activity_lease=0.3)
    async with TestEnvironment([host], time_skipping=False, options=options) as env:
        handle = await env.client.start_workflow(long_job, 0.0, app_id="host")
        # Pretend a runner took the task, acked it on a lease, then died (no renewals).
        codec = Codec()
        await asyncio.sleep(0.1)
        lease = ActivityLease(handle.instance_id, 0, 1, 0.3, "runner/dead")
        await env.transport.publish(
            [Outgoing("host", QueueKind.REPLY, codec.encode_message(lease))]
        )
        await asyncio.sleep(0.1)
        state = await handle.describe()
        assert "lease until" in state.waiting_on[0].detail
        # The original task is still queued for 'runner' (never consumed); after the lease
        # expires the host queues it again.
        for _ in range(50):
            stats = await env.transport.queue_stats("runner")
            if stats.work_messages == 2:
                break
            await asyncio.sleep(0.1)
        assert stats.work_messages == 2
        state = await handle.describe()
        assert "dispatched again" in state.waiting_on[0].detail
        assert state.status is WorkflowStatus.RUNNING


async def test_task_for_an_unregistered_activity_waits_and_says_why() -> None:
    """The target app keeps the task and the host's describe() shows the reason."""
    options = WorkerOptions(unknown_name_max_backoff=0.2)
    async with TestEnvironment([host, runner], time_skipping=False, options=options) as env:
        handle = await env.client.start_workflow(needs_missing, None, app_id="host")
        for _ in range(50):
            state = await handle.describe()
            if state.waiting_on and state.waiting_on[0].detail:
                break
            await asyncio.sleep(0.05)
        assert "is not registered on app 'runner'" in state.waiting_on[0].detail
        assert state.status is WorkflowStatus.RUNNING
        stats = await env.transport.queue_stats("runner")
        assert stats.dead_messages == 0


async def test_task_for_an_unregistered_activity_stops_once_its_workflow_is_terminated() -> None:
    """The runner asks the host at each attempt; once the workflow has ended the host says so
    and the task is dropped instead of bouncing forever (the broker goes quiet)."""
    options = WorkerOptions(unknown_name_max_backoff=0.2)
    async with TestEnvironment([host, runner], time_skipping=False, options=options) as env:
        handle = await env.client.start_workflow(needs_missing, None, app_id="host")
        for _ in range(50):
            state = await handle.describe()
            if state.waiting_on and state.waiting_on[0].detail:
                break
            await asyncio.sleep(0.05)
        version = state.version
        await asyncio.sleep(1.0)  # several attempts, one unchanging note
        assert (await handle.describe()).version == version

        await handle.terminate(reason="never deployed")

        await asyncio.wait_for(env.transport.wait_idle(), 3.0)
        stats = await env.transport.queue_stats("runner")
        assert (stats.work_messages, stats.dead_messages) == (0, 0)
