"""Running one coroutine for a CLI command: the event loop, and errors as one line."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from flowmesh._errors import FlowmeshError
from flowmesh.cli._config import mask_url

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` (on uvloop when installed); report a failure as one line and exit 1."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    except FlowmeshError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {mask_url(str(exc))}") from None
    except (OSError, ConnectionError) as exc:
        raise click.ClickException(f"connection failed: {mask_url(str(exc))}") from None
    except TimeoutError as exc:
        raise click.ClickException(f"timed out: {mask_url(str(exc))}") from None


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop if the optional dependency is installed (``pip install flowmesh[fast]``)."""
    if os.environ.get("FLOWMESH_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
