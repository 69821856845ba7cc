"""Driving flowmesh: start workflows with :class:`flowmesh.Client`, read outcomes from Redis.

Completion is detected by polling the app's status indexes in Redis (one ``ZCARD`` each per
10 ms) instead of ``handle.result()``: 2,000 waiting clients would send 2,000 ``Describe``
requests through the host worker and measure the client's waiting as much as the runtime.
A workflow's completion time is ``updated_at`` of its final stored state: the time the host's
last step began (stamped before that step's replay, commit and publish).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from bench import loops
from flowmesh import Client, WorkflowState, WorkflowStatus
from flowmesh.codec import Codec
from flowmesh.model import StepStarted
from flowmesh.store._redis_keys import RedisKeys  # the layout of docs/redis-keys.md
from flowmesh.store.redis import RedisStore, RedisStoreConfig

HOST = "bench-app1"
_FINISHED = (
    WorkflowStatus.COMPLETED,
    WorkflowStatus.FAILED,
    WorkflowStatus.TERMINATED,
    WorkflowStatus.STALLED,
)


@dataclass(frozen=True, slots=True)
class RealRun:
    """Per instance: when its start call began, when its last step began, and its state."""

    starts: dict[str, float]
    ends: dict[str, float]
    states: dict[str, WorkflowState]


class RealDriver:
    """A client on the run's vhost plus a read-only view of bench-app1's Redis store."""

    def __init__(self, amqp_url: str, redis_url: str, prefix: str) -> None:
        self.client = Client(amqp_url)
        self.store = RedisStore(
            RedisStoreConfig(url=redis_url, app_id=HOST, key_prefix=prefix), Codec()
        )
        self._redis = redis.asyncio.Redis.from_url(redis_url)
        self._keys = RedisKeys(prefix, HOST)
        self._runs = 0

    async def open(self) -> None:
        """Connect the client and the store."""
        await self.client.connect()
        await self.store.connect()

    async def close(self) -> None:
        """Disconnect."""
        await self.client.close()
        await self.store.close()
        await self._redis.aclose()

    async def count(self, statuses: Sequence[WorkflowStatus]) -> int:
        """Instances of bench-app1 currently in any of ``statuses``."""
        pipe = self._redis.pipeline(transaction=False)
        for status in statuses:
            pipe.zcard(self._keys.status_index(status))
        return sum(await pipe.execute())

    async def start_many(
        self,
        workflow: str,
        inputs: Sequence[Any],
        tag: str,
        *,
        limit: int | None = None,
        rate: float | None = None,
    ) -> dict[str, float]:
        """Start one instance per input, all at once (at most ``limit`` calls in flight), or
        one every ``1/rate`` seconds."""
        self._runs += 1
        gate = asyncio.Semaphore(limit or len(inputs))
        starts: dict[str, float] = {}
        started = asyncio.get_running_loop().time()

        async def start(index: int, value: Any) -> None:
            instance_id = f"{tag}-{self._runs}-{index}"
            await loops.pace(started, index, rate)
            async with gate:
                starts[instance_id] = time.time()
                await self.client.start_workflow(
                    workflow, value, app_id=HOST, instance_id=instance_id
                )

        await asyncio.gather(*(start(i, v) for i, v in enumerate(inputs)))
        return starts

    async def wait_count(
        self, statuses: Sequence[WorkflowStatus], target: int, timeout: float
    ) -> None:
        """Poll until at least ``target`` instances are in ``statuses``."""
        deadline = time.monotonic() + timeout
        while (seen := await self.count(statuses)) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen} of {target} instances reached {statuses}")
            await asyncio.sleep(loops.COMPLETION_POLL_S)

    async def run(
        self,
        workflow: str,
        inputs: Sequence[Any],
        tag: str,
        timeout: float,
        *,
        rate: float | None = None,
    ) -> RealRun:
        """Start ``inputs`` as instances of ``workflow`` (all at once, or ``rate`` per second);
        return once every one finished."""
        before = await self.count(_FINISHED)
        starts = await self.start_many(workflow, inputs, tag, rate=rate)
        await self.wait_count(_FINISHED, before + len(inputs), timeout)
        ids = list(starts)
        states: dict[str, WorkflowState] = {}
        for chunk in range(0, len(ids), 200):
            part = ids[chunk : chunk + 200]
            loaded = await asyncio.gather(*(self.store.load_state(i) for i in part))
            for instance_id, state in zip(part, loaded, strict=True):
                if state is None:
                    raise AssertionError(f"{instance_id} is not in the store")
                states[instance_id] = state
        ends = {i: s.updated_at.timestamp() for i, s in states.items() if s.updated_at}
        return RealRun(starts, ends, states)

    async def finish(self, instance_id: str, timeout: float) -> WorkflowState:
        """Wait for one instance's final state, through the client as a user would."""
        return await self.client.get_workflow(instance_id, app_id=HOST).wait(timeout)

    async def metronome(self, steps: int, tag: str, running: asyncio.Event) -> list[str]:
        """Run ``steps``-step ``sequential`` instances one after another while ``running``
        is set; return their IDs. Their histories stay short, so their step times show how
        the machine drifts while a long workflow runs beside them."""
        ids: list[str] = []
        while running.is_set():
            (instance_id,) = await self.start_many("sequential", [steps], tag)
            state = await self.finish(instance_id, timeout=60)
            if state.status is not WorkflowStatus.COMPLETED or state.output != steps:
                raise AssertionError(f"metronome {instance_id} ended {state.status.value}")
            ids.append(instance_id)
        return ids

    async def step_times(self, instance_id: str) -> list[float]:
        """Start times of the instance's steps, from the ``StepStarted`` events of its history."""
        record = await self.store.load(instance_id)
        if record is None:
            raise AssertionError(f"{instance_id} is not in the store")
        return [e.timestamp.timestamp() for e in record.history if isinstance(e, StepStarted)]


def check_outputs(run: RealRun, expected: Callable[[int], Any]) -> int:
    """How many instances did not complete with ``expected(index)`` (0 is the only pass)."""
    wrong = 0
    for instance_id, state in run.states.items():
        index = int(instance_id.rsplit("-", 1)[1])
        if state.status is not WorkflowStatus.COMPLETED or state.output != expected(index):
            wrong += 1
    return wrong
