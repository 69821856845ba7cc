"""Purge results, restart and history through the client, and very long timers (issue 18,
items 4-7), on the embedded backend."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta

import pytest

from flowmesh import (
    ActivityContext,
    App,
    Client,
    ClientOptions,
    WorkflowAlreadyExistsError,
    WorkflowContext,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
    WorkflowStatus,
)
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityScheduled,
    TimerCreated,
    WorkflowCompleted,
    WorkflowStarted,
)
from flowmesh.runtime import Worker
from flowmesh.security import EncryptionCodec
from flowmesh.testing import TestEnvironment

parents = App("fam-parent")
kids = App("fam-kids")
grandkids = App("fam-grandkids")


@parents.workflow
async def family(ctx: WorkflowContext, size: int) -> list[object]:
    """Start ``size`` children on fam-kids, each with a child of its own on fam-grandkids."""
    tasks = [
        ctx.call_child_workflow("kid", i, app_id="fam-kids", instance_id=f"{ctx.instance_id}-k{i}")
        for i in range(size)
    ]
    return await ctx.when_all(tasks)


@kids.workflow
async def kid(ctx: WorkflowContext, index: int) -> object:
    """Start one grandchild, then return."""
    return await ctx.call_child_workflow(
        "grandkid", index, app_id="fam-grandkids", instance_id=f"{ctx.instance_id}-g"
    )


@grandkids.workflow
async def grandkid(ctx: WorkflowContext, index: int) -> int:
    """A leaf."""
    return index * 10


@parents.workflow
async def waits(ctx: WorkflowContext, _: object) -> object:
    """Wait for an event."""
    return await ctx.wait_for_external_event("go")


@parents.activity
def stamp(ctx: ActivityContext, value: object) -> dict[str, object]:
    """Echo the input with the run that asked for it."""
    return {"value": value, "run": ctx.run_id}


@parents.workflow
async def stamped(ctx: WorkflowContext, value: object) -> object:
    """One activity: its output shows the input and the run."""
    return await ctx.call_activity(stamp, value)


@parents.workflow
async def chatty(ctx: WorkflowContext, count: int) -> int:
    """``count`` activities one after the other: a long history."""
    for index in range(count):
        await ctx.call_activity(stamp, {"i": index, "pad": "x" * 40})
    return count


async def _gone(handle: object) -> bool:
    try:
        await handle.describe()  # type: ignore[attr-defined]
    except WorkflowNotFoundError:
        return True
    return False


# -- 4. purge results ----------------------------------------------------------------------------


async def test_recursive_purge_counts_the_instance_and_its_children_on_other_apps() -> None:
    """A finished parent with two children on fam-kids, each with a child on fam-grandkids:
    purge() returns 5 and all five are gone when it returns; a second purge returns 0."""
    async with TestEnvironment([parents, kids, grandkids], time_skipping=False) as env:
        handle = await env.client.start_workflow(family, 2, app_id="fam-parent", instance_id="f1")
        assert await handle.result(timeout=10) == [0, 10]
        count = await handle.purge()
        assert count == 5 and count.not_purged == ()
        for instance_id, app_id in [
            ("f1", "fam-parent"),
            ("f1-k0", "fam-kids"),
            ("f1-k1", "fam-kids"),
            ("f1-k0-g", "fam-grandkids"),
            ("f1-k1-g", "fam-grandkids"),
        ]:
            assert await _gone(env.client.get_workflow(instance_id, app_id=app_id)), instance_id
        assert await handle.purge() == 0


async def test_non_recursive_purge_counts_one_and_leaves_the_children() -> None:
    """recursive=False deletes the parent only."""
    async with TestEnvironment([parents, kids, grandkids], time_skipping=False) as env:
        handle = await env.client.start_workflow(family, 1, app_id="fam-parent", instance_id="f2")
        await handle.result(timeout=10)
        assert await handle.purge(recursive=False) == 1
        child = env.client.get_workflow("f2-k0", app_id="fam-kids")
        assert (await child.describe()).status is WorkflowStatus.COMPLETED


async def test_purge_of_a_running_instance_raises_and_keeps_it() -> None:
    """Purging an unfinished instance raises WorkflowNotFinishedError naming its status."""
    async with TestEnvironment([parents], time_skipping=False) as env:
        handle = await env.client.start_workflow(waits, None, app_id="fam-parent")
        with pytest.raises(WorkflowNotFinishedError, match="RUNNING"):
            await handle.purge()
        assert (await handle.describe()).status is WorkflowStatus.RUNNING
        assert await env.client.get_workflow("nobody", app_id="fam-parent").purge() == 0


async def test_a_child_whose_app_is_down_is_reported_and_purged_when_it_returns() -> None:
    """With fam-kids down, purge() returns within the client's request timeout, counts only
    the parent and names the child; the child's purge waits in fam-kids' queue and applies
    when a replica of fam-kids runs again."""
    env = TestEnvironment([parents, kids, grandkids], time_skipping=False)
    async with env:
        handle = await env.client.start_workflow(family, 1, app_id="fam-parent", instance_id="f3")
        await handle.result(timeout=10)
        await env.worker("fam-kids").stop()
        options = ClientOptions(request_timeout=3.0, app_user_pattern="")
        async with Client(transport=env.transport, options=options) as hurried:
            started = asyncio.get_running_loop().time()
            count = await hurried.get_workflow("f3", app_id="fam-parent").purge()
            assert asyncio.get_running_loop().time() - started < 3.0
        assert count == 1
        assert len(count.not_purged) == 1
        assert "'f3-k0' on app 'fam-kids': no answer within" in count.not_purged[0]
        assert "stays queued" in count.not_purged[0]
        replacement = Worker(
            kids, transport=env.transport, store=env.stores["fam-kids"], codec=Codec()
        )
        await replacement.start()
        try:
            child = env.client.get_workflow("f3-k0", app_id="fam-kids")
            grandchild = env.client.get_workflow("f3-k0-g", app_id="fam-grandkids")
            for _ in range(200):
                if await _gone(child) and await _gone(grandchild):
                    break
                await asyncio.sleep(0.02)
            assert await _gone(child) and await _gone(grandchild)
        finally:
            await replacement.stop(timeout=1.0)


# -- 5. restart ----------------------------------------------------------------------------------


async def test_restart_under_the_same_id_replaces_the_finished_run() -> None:
    """After it completed, the instance runs again with the same input under a new run ID;
    its history holds only the new run (started by the restart request)."""
    async with TestEnvironment([parents], time_skipping=False) as env:
        first = await env.client.start_workflow(stamped, {"n": 1}, app_id="fam-parent")
        out1 = await first.result(timeout=5)
        state1 = await first.describe()
        again = await env.client.restart_workflow(first.instance_id, app_id="fam-parent")
        assert again.instance_id == first.instance_id
        out2 = await again.result(timeout=5)
        state2 = await again.describe()
        assert out1["value"] == out2["value"] == {"n": 1}  # type: ignore[index]
        assert out1["run"] != out2["run"] == state2.run_id != state1.run_id  # type: ignore[index]
        assert state2.version > state1.version  # the numbering continues
        history = await again.history()
        started = [e for e in history if isinstance(e, WorkflowStarted)]
        assert len(started) == 1 and started[0].run_id == state2.run_id
        assert len([e for e in history if isinstance(e, WorkflowCompleted)]) == 1
        assert state2.history_length == len(history)


async def test_restart_refusals_and_restart_under_a_new_id() -> None:
    """Same ID while running: WorkflowNotFinishedError. New ID (random or given) while the
    source runs: a new instance with the same input. An unknown source:
    WorkflowNotFoundError; a taken new ID: WorkflowAlreadyExistsError."""
    async with TestEnvironment([parents], time_skipping=False) as env:
        source = await env.client.start_workflow(
            waits, {"big": "x" * 1000}, app_id="fam-parent", instance_id="src"
        )
        with pytest.raises(WorkflowNotFinishedError, match="has not finished"):
            await env.client.restart_workflow("src", app_id="fam-parent")
        copy = await env.client.restart_workflow("src", app_id="fam-parent", new_instance_id=True)
        named = await env.client.restart_workflow(
            "src", app_id="fam-parent", new_instance_id="src-copy"
        )
        assert copy.instance_id not in ("src", "src-copy") and named.instance_id == "src-copy"
        for handle in (source, copy, named):
            assert (await handle.describe()).input == {"big": "x" * 1000}
        with pytest.raises(WorkflowAlreadyExistsError):
            await env.client.restart_workflow(
                "src", app_id="fam-parent", new_instance_id="src-copy"
            )
        with pytest.raises(WorkflowNotFoundError):
            await env.client.restart_workflow("nobody", app_id="fam-parent")
        for handle in (source, copy, named):
            await handle.raise_event("go", handle.instance_id)
            assert await handle.result(timeout=5) == handle.instance_id


async def test_restart_reads_the_encrypted_input_on_the_host_for_a_client_without_keys() -> None:
    """Workers encrypt payloads; a client without the key can still restart (the input never
    passes through it) and sees the new run complete."""
    keyed = Codec(payload_codec=EncryptionCodec({"k1": os.urandom(32)}))
    async with (
        TestEnvironment([parents], time_skipping=False, codec=keyed) as env,
        Client(transport=env.transport, options=ClientOptions(app_user_pattern="")) as keyless,
    ):
        first = await env.client.start_workflow(stamped, "secret", app_id="fam-parent")
        await first.result(timeout=5)
        again = await keyless.restart_workflow(first.instance_id, app_id="fam-parent")
        await env.client.get_workflow(again.instance_id, app_id="fam-parent").wait(timeout=5)
        result = await env.client.get_workflow(again.instance_id, app_id="fam-parent").result()
        assert result["value"] == "secret"  # type: ignore[index]


# -- 6. history through the client ---------------------------------------------------------------


async def test_history_larger_than_one_page_equals_the_stored_history() -> None:
    """With 2 KiB pages, a history of 300-odd events comes back in many pages, exactly as
    the store holds it; an unknown instance raises WorkflowNotFoundError."""
    async with TestEnvironment([parents], time_skipping=False) as env:
        handle = await env.client.start_workflow(chatty, 100, app_id="fam-parent")
        assert await handle.result(timeout=20) == 100
        options = ClientOptions(history_page_bytes=2048, app_user_pattern="")
        async with Client(transport=env.transport, options=options) as paged:
            history = await paged.get_workflow(handle.instance_id, app_id="fam-parent").history()
            with pytest.raises(WorkflowNotFoundError):
                await paged.get_workflow("nobody", app_id="fam-parent").history()
        record = await env.stores["fam-parent"].load(handle.instance_id)
        assert record is not None
        assert history == list(record.history)
        assert len([e for e in history if isinstance(e, ActivityScheduled)]) == 100
        size = sum(len(Codec().encode_event(e)) for e in history)
        assert size > 10 * 2048  # so it took more than ten pages
        assert await handle.history() == history  # default pages: one request


# -- 7. very long timers -------------------------------------------------------------------------

LONG = timedelta(days=400, microseconds=1500)


@parents.workflow
async def sleeper(ctx: WorkflowContext, _: object) -> list[str]:
    """Sleep 400 days (and 1.5 ms), report when it slept and woke."""
    start = ctx.current_utc_datetime
    await ctx.create_timer(start + LONG)
    return [start.isoformat(), ctx.current_utc_datetime.isoformat()]


async def test_a_400_day_timer_fires_exactly_under_time_skipping() -> None:
    """The timer is stored with its exact fire time (microseconds kept in history, the store's
    due time rounded up to the millisecond) and the workflow wakes no earlier than asked and
    less than a millisecond later, in milliseconds of real time."""
    async with TestEnvironment([parents], time_skipping=True) as env:
        handle = await env.client.start_workflow(sleeper, None, app_id="fam-parent")
        start, woke = map(datetime.fromisoformat, await handle.result(timeout=10))  # type: ignore[call-overload]
        assert timedelta(0) <= woke - (start + LONG) < timedelta(milliseconds=1)
        [created] = [e for e in await handle.history() if isinstance(e, TimerCreated)]
        assert created.fire_at == start + LONG
