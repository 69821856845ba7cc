"""Commits made close together go to Redis in one pipeline (group commit).

A busy host steps many instances at once, and each step ends in one ``EVALSHA``. Sent one by
one, every commit costs a socket write, a read and a pooled connection; a worker under load
spent more CPU in those system calls than in running workflows. Queued until the end of the
loop turn, or while the previous batch is in flight, and sent as one pipeline (no ``MULTI``:
each script is atomic on its own and the commits are independent), they share one write and
one read, and each caller still gets its own result or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Call = tuple[Sequence[str], Sequence[Any]]
"""The keys and arguments of one script call."""

SendBatch = Callable[[list[Call]], Awaitable[list[Any]]]
"""Sends calls in one round trip; returns one result per call, an exception object for a
call that failed on its own (raises only if the whole round trip failed)."""


class TurnBatcher:
    """Collects script calls and sends them together: group commit.

    With nothing in flight, the calls of one loop turn go at the end of that turn (no added
    latency). While a batch is in flight, new calls wait for it and then all go in the next
    batch, so under load batches grow with the load instead of each call paying a round
    trip. The constructor does no I/O and starts nothing.
    """

    def __init__(self, send: SendBatch) -> None:
        self._send = send
        self._queued: list[tuple[Call, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's result for ``keys``/``args``; raises what Redis raised for it."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        self._queued.append(((keys, args), result))
        if self._sender is None:
            # The task's first step runs after the callbacks already due in this loop turn,
            # so the calls they make join the batch; starting it here rather than from a
            # call_soon callback saves a turn on every commit's path.
            self._sender = asyncio.create_task(self._send_all(), name="flowmesh-redis-batch")
        return await result

    async def _send_all(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._deliver(batch)
        finally:
            self._sender = None
            if self._queued:  # cancelled mid-way (shutdown): nothing will send these
                for _, future in self._queued:
                    future.cancel()
                self._queued = []

    async def _deliver(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._send([call for call, _ in batch])
        except Exception as exc:  # every waiter gets the failure of the round trip
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): so are the waiters
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


__all__ = ["Call", "SendBatch", "TurnBatcher"]
