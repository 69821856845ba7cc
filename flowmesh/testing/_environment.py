"""``TestEnvironment``: several apps, their workers and a client, all in one process.

The embedded backend: an in-memory broker and one in-memory store per workflow-hosting app,
driven by the same runtime code that serves RabbitMQ and Redis. Tasks still cross app IDs
exactly as they would over RabbitMQ: a task for ``app2`` is only run by ``app2``'s worker.

With ``time_skipping=True`` the environment uses a virtual clock and, whenever nothing is
running, jumps straight to the next timer, so a workflow sleeping 30 days finishes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType

from flowmesh._app import App
from flowmesh._errors import ConfigurationError
from flowmesh.client import Client, ClientOptions
from flowmesh.codec import Codec
from flowmesh.runtime import Clock, SystemClock, VirtualClock, Worker, WorkerOptions
from flowmesh.store.memory import MemoryStore
from flowmesh.transport.memory import MemoryTransport

# Under a virtual clock nothing outside this process creates timers or strands outbox
# entries, so pollers need not wake periodically (each wake-up would cost a time jump).
_VIRTUAL_POLL = 365 * 24 * 3600.0


class TestEnvironment:
    """Hosts ``apps`` on the embedded backend; use as ``async with TestEnvironment([...])``.

    ``replicas`` starts that many workers per app (to exercise sharing of work).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        apps: Sequence[App],
        *,
        time_skipping: bool = True,
        replicas: int = 1,
        options: WorkerOptions | None = None,
        codec: Codec | None = None,
    ) -> None:
        ids = [app.app_id for app in apps]
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"duplicate app IDs in TestEnvironment: {ids}")
        self.apps = tuple(apps)
        self.time_skipping = time_skipping
        self._replicas = replicas
        self._options = options or WorkerOptions()
        self._codec = codec or Codec()
        self.clock: Clock = VirtualClock() if time_skipping else SystemClock()
        self.transport = MemoryTransport()
        self.stores = {app.app_id: MemoryStore(app.app_id) for app in apps if app.hosts_workflows}
        self.workers: list[Worker] = []
        # One in-memory broker without per-app users: answers carry no user to check, even
        # where FLOWMESH_APP_USER_PATTERN is set for real workers.
        self.client = Client(
            transport=self.transport, codec=self._codec, options=ClientOptions(app_user_pattern="")
        )
        self._autojump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TestEnvironment:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every app's workers, the client and (with time skipping) the time driver."""
        options = self._options
        if self.time_skipping:
            options = replace(
                options, timer_poll_interval=_VIRTUAL_POLL, outbox_sweep_interval=_VIRTUAL_POLL
            )
        for app in self.apps:
            for _ in range(self._replicas):
                worker = Worker(
                    app,
                    transport=self.transport,
                    store=self.stores.get(app.app_id),
                    codec=self._codec,
                    clock=self.clock,
                    options=options,
                )
                await worker.start()
                self.workers.append(worker)
        await self.client.connect()
        if isinstance(self.clock, VirtualClock):
            self._autojump = asyncio.create_task(
                self._skip_time(self.clock), name="flowmesh-time-skipping"
            )

    async def stop(self) -> None:
        """Stop the time driver, the client and every worker."""
        if self._autojump is not None:
            self._autojump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._autojump
            self._autojump = None
        await self.client.close()
        for worker in self.workers:
            await worker.stop(timeout=1.0)
        self.workers.clear()
        await self.transport.close()

    def worker(self, app_id: str, replica: int = 0) -> Worker:
        """The ``replica``-th worker of ``app_id``."""
        matching = [w for w in self.workers if w.app.app_id == app_id]
        return matching[replica]

    def _idle(self) -> bool:
        return self.transport.is_idle() and all(worker.idle for worker in self.workers)

    async def _skip_time(self, clock: VirtualClock) -> None:
        """Jump virtual time to the next deadline whenever everything is quiet."""
        while True:
            # Let ready callbacks run first; require idleness on two consecutive looks so a
            # message in the middle of a hand-over between tasks is not mistaken for quiet.
            for _ in range(3):
                await asyncio.sleep(0)
            if self._idle():
                await asyncio.sleep(0.001)
                deadline = clock.next_deadline()
                if self._idle() and deadline is not None:
                    clock.advance_to(deadline)
                    continue
            await asyncio.sleep(0.001)
