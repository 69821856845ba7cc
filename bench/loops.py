"""Which event loop to run: the floor and the client use the same loop as ``flowmesh worker``.

A floor on a faster loop than the workers (or the reverse) would skew every ratio.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

COMPLETION_POLL_S = 0.05
"""How often both drivers poll for "all instances done". Every figure comes from timestamps
the systems record themselves, so the interval changes no result; polling more often only
takes CPU from the systems under test (W1 saturates both cores)."""


def worker_uses_uvloop() -> bool:
    """Whether ``flowmesh worker`` picks uvloop in this environment.

    Mirrors the CLI's rule (uvloop when installed, unless ``FLOWMESH_NO_UVLOOP`` is set) and
    only applies it if this flowmesh's CLI has that rule at all.
    """
    import flowmesh.cli

    if not hasattr(flowmesh.cli, "_loop_factory"):
        return False
    return importlib.util.find_spec("uvloop") is not None and not os.environ.get(
        "FLOWMESH_NO_UVLOOP"
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if the workers use uvloop, else None (the default loop)."""
    if not worker_uses_uvloop():
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the workers' loop (``asyncio.Runner`` works on Python 3.11)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


async def pace(started: float, index: int, rate: float | None) -> None:
    """Sleep until the ``index``-th start is due at ``rate`` starts/s after ``started`` (the
    loop's clock); return at once when ``rate`` is None (everything starts at once)."""
    if rate is None:
        return
    loop = asyncio.get_running_loop()
    delay = started + index / rate - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
