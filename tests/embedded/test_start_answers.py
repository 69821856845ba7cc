"""A host answers a start only while its client still waits for the answer.

Under a backlog most starts reach the host after their client stopped waiting
(``start_ack_timeout``). Those answers are not sent: each would cost a message the client
only drops.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from flowmesh import App, Client, ClientOptions, WorkflowContext, WorkflowStatus
from flowmesh.runtime import Worker, WorkerOptions
from flowmesh.store.memory import MemoryStore
from flowmesh.transport import _common
from flowmesh.transport.memory import MemoryBroker, MemoryTransport

host = App("answers-host")


@host.workflow
async def hello(ctx: WorkflowContext, name: str) -> str:
    return f"hello {name}"


async def _start_host(broker: MemoryBroker, store: MemoryStore) -> Worker:
    worker = Worker(host, transport=MemoryTransport(broker), store=store, options=WorkerOptions())
    await worker.start()
    return worker


@pytest.mark.parametrize("client_still_waits", [False, True])
async def test_a_start_is_answered_only_while_its_client_waits(
    monkeypatch: pytest.MonkeyPatch, client_still_waits: bool
) -> None:
    monkeypatch.setattr(_common, "ANSWER_GRACE_S", 0.0)  # no wait for clock differences
    broker, store = MemoryBroker(), MemoryStore(host.app_id)
    ack_wait = 5.0 if client_still_waits else 0.05
    async with Client(
        transport=MemoryTransport(broker), options=ClientOptions(start_ack_timeout=ack_wait)
    ) as client:
        with capture_logs() as logs:
            if client_still_waits:
                starting = asyncio.create_task(
                    client.start_workflow(hello, "a", app_id=host.app_id, instance_id="w-1")
                )
                await asyncio.sleep(0.1)  # the start waits in the queue: no host yet
                worker = await _start_host(broker, store)
                handle = await starting
            else:
                handle = await client.start_workflow(
                    hello, "a", app_id=host.app_id, instance_id="w-1"
                )
                await asyncio.sleep(0.1)  # the client stopped waiting 0.05 s in
                worker = await _start_host(broker, store)
            try:
                assert await handle.result(timeout=5) == "hello a"
            finally:
                await worker.stop(timeout=1.0)

    skipped = [e for e in logs if e["event"] == "transport.late_answer_skipped"]
    assert len(skipped) == (0 if client_still_waits else 1)
    state = await store.load_state("w-1")
    assert state is not None and state.status is WorkflowStatus.COMPLETED
