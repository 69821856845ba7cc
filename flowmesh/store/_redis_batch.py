"""Commits made in the same event-loop turn go to Redis in one pipeline.

A busy host steps many instances at once, and each step ends in one ``EVALSHA``. Sent one by
one, every commit costs a socket write, a read and a pooled connection; a worker under load
spent more CPU in those system calls than in running workflows. Queued until the end of the
loop turn and sent as one pipeline (no ``MULTI``: each script is atomic on its own and the
commits are independent), they share one write and one read, and each caller still gets
its own result or error.
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
    """Collects script calls during one loop turn and sends them together.

    The constructor does no I/O and starts nothing; the first call of a turn schedules the
    send for the end of that turn.
    """

    def __init__(self, send: SendBatch) -> None:
        self._send = send
        self._queued: list[tuple[Call, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's result for ``keys``/``args``; raises what Redis raised for it."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append(((keys, args), result))
        return await result

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.create_task(self._deliver(batch), name="flowmesh-redis-batch")
        self._sending.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._sending.discard)

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
