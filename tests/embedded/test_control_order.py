"""Control commands wait for their outcome, so they apply in the order they were issued:
issue 15, item 6. Embedded backend, two replicas, two clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowmesh import App, Client, WorkflowContext, WorkflowStatus
from flowmesh._errors import WorkflowNotFinishedError, WorkflowNotFoundError
from flowmesh.store import Commit
from flowmesh.store.memory import MemoryStore
from flowmesh.testing import TestEnvironment

app = App("ctl")
ROUNDS = 25


@app.workflow
async def hold(ctx: WorkflowContext, _: object) -> object:
    """Wait for an event: running until told otherwise."""
    return await ctx.wait_for_external_event("go")


class _NetworkedStore(MemoryStore):
    """A memory store whose commits take a few milliseconds, as Redis's do over a network
    (in memory a whole step would otherwise run before the next message is looked at)."""

    async def commit(self, commit: Commit) -> Any:  # the waiters, as MemoryStore's
        await asyncio.sleep(0.005)
        return await super().commit(commit)


async def test_a_resume_issued_after_suspend_returned_applies_after_it() -> None:
    """Client 1 suspends, then client 2 resumes, each picked up by whichever of two replicas:
    every suspend is committed when it returns (client 2 already sees it), every resume
    after it, so the instance ends each round RUNNING."""
    env = TestEnvironment([app], time_skipping=False, replicas=2)
    env.stores["ctl"] = _NetworkedStore("ctl")
    async with env, Client(transport=env.transport) as other:
        first = await env.client.start_workflow(hold, None, app_id="ctl")
        second = other.get_workflow(first.instance_id, app_id="ctl")
        for round_ in range(ROUNDS):
            await first.suspend(f"round {round_}")
            assert (await second.describe()).status is WorkflowStatus.SUSPENDED, round_
            await second.resume()
            assert (await first.describe()).status is WorkflowStatus.RUNNING, round_
        await first.raise_event("go", "done")
        assert await first.result(timeout=5) == "done"


async def test_control_answers_report_unknown_refused_and_ignored_commands() -> None:
    """Unknown instance: WorkflowNotFoundError (a purge of it deletes 0 instances). Purging a
    running instance is refused with WorkflowNotFinishedError; suspending a finished one
    changes nothing. ``wait=False`` only sends."""
    async with TestEnvironment([app], time_skipping=False) as env:
        with pytest.raises(WorkflowNotFoundError):
            await env.client.get_workflow("nobody", app_id="ctl").suspend()
        assert await env.client.get_workflow("nobody", app_id="ctl").purge() == 0

        handle = await env.client.start_workflow(hold, None, app_id="ctl")
        with pytest.raises(WorkflowNotFinishedError, match="status RUNNING"):
            await handle.purge()
        assert (await handle.describe()).status is WorkflowStatus.RUNNING
        assert await handle.suspend(wait=False) is None
        terminated = await handle.terminate("over")
        assert terminated is not None and terminated.status is WorkflowStatus.TERMINATED
        unchanged = await handle.suspend()
        assert unchanged is not None and unchanged.status is WorkflowStatus.TERMINATED
        assert await handle.purge() == 1
        with pytest.raises(WorkflowNotFoundError):
            await handle.describe()
