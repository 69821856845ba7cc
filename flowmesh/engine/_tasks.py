"""Durable tasks: the only things a workflow may ``await``.

A task is resolved by the executor when the history event that completes it is replayed or
arrives. Awaiting an unresolved task suspends the workflow coroutine (it yields the task to
the executor); awaiting a resolved one returns at once. Composite tasks (``when_all``,
``when_any``) and retrying tasks resolve from their children.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Task(Generic[T]):
    """A durable unit of work a workflow can await: activity, child workflow, timer, event."""

    __slots__ = ("_exception", "_is_complete", "_listeners", "_result")

    def __init__(self) -> None:
        self._is_complete = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._listeners: list[Callable[[Task[Any]], None]] = []

    @property
    def is_complete(self) -> bool:
        """True once the task succeeded or failed."""
        return self._is_complete

    @property
    def is_failed(self) -> bool:
        """True if the task completed with an error."""
        return self._exception is not None

    def get_result(self) -> T:
        """The task's result; raises its error if it failed, ``RuntimeError`` if pending."""
        if not self._is_complete:
            raise RuntimeError("task is not complete yet; await it first")
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[no-any-return]

    def get_exception(self) -> BaseException | None:
        """The error the task failed with, or None."""
        return self._exception

    def __await__(self) -> Generator[Task[Any], None, T]:
        if not self._is_complete:
            # Hand the task to the executor; it resumes us once the task is resolved.
            yield self
        return self.get_result()

    # -- resolution, called by the executor only -------------------------------------------

    def _complete(self, result: Any) -> None:
        if self._is_complete:
            return
        self._is_complete = True
        self._result = result
        self._notify()

    def _fail(self, exception: BaseException) -> None:
        if self._is_complete:
            return
        self._is_complete = True
        self._exception = exception
        self._notify()

    def _on_complete(self, listener: Callable[[Task[Any]], None]) -> None:
        if self._is_complete:
            listener(self)
        else:
            self._listeners.append(listener)

    def _notify(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener(self)


class WhenAllTask(Task[list[Any]]):
    """Completes with every child's result in order; fails as soon as one child fails."""

    __slots__ = ("_children", "_remaining")

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        super().__init__()
        self._children = tuple(children)
        self._remaining = len(self._children)
        if not self._children:
            self._complete([])
        for child in self._children:
            child._on_complete(self._child_done)  # noqa: SLF001 - a Task combinator subscribes to its child Tasks

    def _child_done(self, child: Task[Any]) -> None:
        if self._is_complete:
            return
        exception = child.get_exception()
        if exception is not None:
            self._fail(exception)
            return
        self._remaining -= 1
        if self._remaining == 0:
            self._complete([c.get_result() for c in self._children])


class WhenAnyTask(Task[Task[Any]]):
    """Completes with the first child to finish (succeeded or failed); never fails itself."""

    __slots__ = ()

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        super().__init__()
        if not children:
            raise ValueError("when_any needs at least one task")
        for child in children:
            child._on_complete(self._child_done)  # noqa: SLF001 - a Task combinator subscribes to its child Tasks

    def _child_done(self, child: Task[Any]) -> None:
        self._complete(child)
