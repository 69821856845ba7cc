"""Stepping workflow code by hand: the coroutine of the workflow function is resumed with
``send`` while the task it awaits is resolved, never by an event loop."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from flowmesh.engine._actions import describe_awaited
from flowmesh.engine._context import ContinueAsNew, Logger
from flowmesh.engine._tasks import Task


class Stall(Exception):  # noqa: N818 - internal control flow, never escapes the executor
    """Stops the execution: history and code disagree, or the workflow cannot run."""


@dataclass(frozen=True, slots=True)
class Returned:
    """The workflow function returned ``value``."""

    value: object


@dataclass(frozen=True, slots=True)
class Raised:
    """The workflow function raised ``error`` (or awaited something that is not a task)."""

    error: BaseException


CodeEnd = Returned | Raised | ContinueAsNew
"""How workflow code ended: returned, raised, or asked to continue as new."""


class WorkflowCode:
    """The coroutine of one run's workflow function and the task it awaits."""

    __slots__ = ("_awaiting", "_coroutine", "_logger", "_name")

    def __init__(self, logger: Logger) -> None:
        self._logger = logger
        self._name = ""
        self._coroutine: Coroutine[Any, Any, Any] | None = None
        self._awaiting: Task[Any] | None = None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the code ended or was closed."""
        return self._coroutine is not None

    def start(self, name: str, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Take over the coroutine of workflow ``name`` (not stepped yet)."""
        self._name = name
        self._coroutine = coroutine

    def resume(self) -> CodeEnd | None:
        """Resume the coroutine while the task it awaits is resolved; how the code ended, or
        None while it waits for a task (or is not running). A :class:`Stall` propagates."""
        coroutine = self._coroutine
        if coroutine is None:
            return None
        while self._awaiting is None or self._awaiting.is_complete:
            try:
                yielded = coroutine.send(None)
            except StopIteration as stop:
                return Returned(stop.value)
            except ContinueAsNew as signal:
                return signal
            except Stall:
                raise
            except Exception as exc:
                return Raised(exc)
            if not isinstance(yielded, Task):
                return Raised(
                    TypeError(
                        f"workflow {self._name!r} awaited {describe_awaited(coroutine, yielded)}"
                        ", which is not a flowmesh task. Workflow code is replayed and must "
                        "only await tasks from its WorkflowContext (use ctx.create_timer instead "
                        "of asyncio.sleep, and activities for I/O)."
                    )
                )
            self._awaiting = yielded
        return None

    def close(self) -> None:
        """Stop the code for good (``GeneratorExit`` at its ``await``); it never runs again."""
        coroutine, self._coroutine = self._coroutine, None
        if coroutine is not None:
            try:
                coroutine.close()
            except BaseException:
                self._logger.warning("workflow code raised while being closed", exc_info=True)
        self._awaiting = None
