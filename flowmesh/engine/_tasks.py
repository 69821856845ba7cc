"""Durable tasks: the only things a workflow may ``await``.

A task is resolved by the executor when the history event that completes it is replayed or
arrives. Awaiting an unresolved task suspends the workflow coroutine (it yields the task to
the executor); awaiting a resolved one returns at once. Composite tasks (``when_all``,
``when_any``) and retrying tasks resolve from their children.

:meth:`Task.cancel` fails a pending task with :class:`~flowmesh.TaskCancelledError` and runs
the canceller the engine installed, which releases what the task holds (its timer, its place
among an event's waiters, its activity or child workflow); a composite task cancels its
unfinished children.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, TypeVar

from flowmesh._errors import TaskCancelledError

T = TypeVar("T")

Canceller = Callable[["Task[Any]", Any], object]
"""Called as ``canceller(task, key)`` when ``task`` is cancelled (see ``Task.set_canceller``)."""


class Task(Generic[T]):
    """A durable unit of work a workflow can await: activity, child workflow, timer, event."""

    __slots__ = ("_cancel_key", "_canceller", "_exception", "_is_complete", "_listeners", "_result")

    def __init__(self) -> None:
        self._is_complete = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._listeners: list[Callable[[Task[Any]], None]] = []
        self._canceller: Canceller | None = None
        self._cancel_key: object = None

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

    def cancel(self) -> bool:
        """Cancel the task; False if it has already completed (nothing changes then).

        Awaiting a cancelled task raises :class:`~flowmesh.TaskCancelledError`. What the task
        held is released: a timer never fires, an event wait never consumes a later event, a
        composite task cancels its unfinished children, a retrying task its current attempt
        or backoff timer. An activity or child workflow already sent is cancelled best effort
        (the child is terminated; the activity's app is told, see ``ActivityContext``) and
        the cancellation is recorded in history; its late result is dropped.
        """
        if self._is_complete:
            return False
        # Complete first: listeners (a when_any, a retry) then see the task done and do not
        # react to the failures of the parts the canceller releases.
        self.reject(TaskCancelledError("the task was cancelled by the workflow"))
        canceller, self._canceller = self._canceller, None
        if canceller is not None:
            canceller(self, self._cancel_key)
        return True

    def __await__(self) -> Generator[Task[Any], None, T]:
        if not self._is_complete:
            # Hand the task to the executor; it resumes us once the task is resolved.
            yield self
        return self.get_result()

    # -- the resolver API: called by the engine only, never by workflow code ------------------

    def resolve(self, result: Any) -> None:
        """Complete the task with ``result`` (the engine, when its event is applied); a task
        already complete is left as is."""
        if self._is_complete:
            return
        self._is_complete = True
        self._result = result
        self._notify()

    def reject(self, exception: BaseException) -> None:
        """Fail the task with ``exception`` (the engine); a task already complete is left
        as is."""
        if self._is_complete:
            return
        self._is_complete = True
        self._exception = exception
        self._notify()

    def set_canceller(self, canceller: Canceller, key: object = None) -> None:
        """Call ``canceller(task, key)`` when the task is cancelled (the engine: release a
        timer, an event wait, an activity or child workflow, or the parts of a composite task).

        ``key`` names what to release (a seq, an event name, the parts). The engine passes a
        function or a bound method it keeps plus that key rather than a closure: a cached
        execution holds a canceller per open task, and a closure costs about 340 bytes where
        the key costs nothing (tens of thousands of idle workflows stay cached on one host).
        """
        self._canceller = canceller
        self._cancel_key = key

    def add_done_callback(self, listener: Callable[[Task[Any]], None]) -> None:
        """Call ``listener(task)`` once the task completes (at once if it has): how composite,
        retrying and timed tasks are built from their parts."""
        if self._is_complete:
            listener(self)
        else:
            self._listeners.append(listener)

    def _notify(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener(self)


def cancel_all(tasks: Sequence[Task[Any]]) -> None:
    """Cancel every task of ``tasks`` that has not completed."""
    for task in tasks:
        task.cancel()


def cancel_parts(_owner: Task[Any], parts: Sequence[Task[Any]]) -> None:
    """The canceller of a task made of ``parts`` (composite, timed): cancel the unfinished."""
    cancel_all(parts)


class WhenAllTask(Task[list[Any]]):
    """Completes with every child's result in order; fails as soon as one child fails."""

    __slots__ = ("_children", "_remaining")

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        super().__init__()
        self._children = tuple(children)
        self._remaining = len(self._children)
        self.set_canceller(cancel_parts, self._children)
        if not self._children:
            self.resolve([])
        for child in self._children:
            child.add_done_callback(self._child_done)

    def _child_done(self, child: Task[Any]) -> None:
        if self._is_complete:
            return
        exception = child.get_exception()
        if exception is not None:
            self.reject(exception)
            return
        self._remaining -= 1
        if self._remaining == 0:
            self.resolve([c.get_result() for c in self._children])


class WhenAnyTask(Task[Task[Any]]):
    """Completes with the first child to finish (succeeded or failed); never fails itself
    (unless cancelled). The other children go on: cancel them to release them."""

    __slots__ = ()

    def __init__(self, children: Sequence[Task[Any]]) -> None:
        super().__init__()
        if not children:
            raise ValueError("when_any needs at least one task")
        pending = tuple(children)
        self.set_canceller(cancel_parts, pending)
        for child in children:
            child.add_done_callback(self._child_done)

    def _child_done(self, child: Task[Any]) -> None:
        self.resolve(child)
