"""The tasks an execution has scheduled: sequence numbers, actions not yet confirmed by
history, open tasks waiting for their results, cancellations, and the durable combinators
built on them (retries with backoff timers, timeouts raced against timers)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flowmesh._errors import ActivityTimeoutError, TaskCancelledError
from flowmesh.engine._actions import (
    OpenTask,
    RecordedAction,
    TaskKind,
    describe_action,
    matches,
    pending_task,
)
from flowmesh.engine._mailbox import EventMailbox
from flowmesh.engine._tasks import Canceller, Task, cancel_parts
from flowmesh.model import (
    CancelActivity,
    CancelChildWorkflow,
    Command,
    EventSent,
    FailureDetails,
    PendingTask,
    RetryPolicy,
    ScheduleActivity,
    ScheduleChildWorkflow,
    SendEvent,
    StartTimer,
    TaskCancelled,
    TerminateChildren,
)

_VERBS: dict[type, str] = {EventSent: "send", TaskCancelled: "cancel"}
"""What the code did not do, by the event history has instead (default: schedule)."""


class TaskScheduler:
    """Allocates a ``seq`` per task the workflow code asks for and tracks it until its
    result arrives; what :class:`WorkflowContext` schedules goes through here."""

    def __init__(
        self, mailbox: EventMailbox, *, now: Callable[[], datetime], instance_id: Callable[[], str]
    ) -> None:
        self._mailbox = mailbox
        self._now = now
        self._instance_id = instance_id
        self.next_seq = 0
        self.actions: dict[int, Command] = {}
        """Scheduled (or sent, or cancelled) by code, not yet confirmed by history (new: they
        become commands). A cancellation takes the seq of its task, whose own action was
        confirmed before."""
        self.open: dict[int, OpenTask] = {}
        """Tasks waiting for their result event, by seq."""
        self.cancelled_timers: list[int] = []
        self.children: dict[str, str] = {}
        """Child instance -> app, for recursive terminate and sender checks."""
        # The cancellers of our tasks, bound on first use and then shared: a bound method
        # made per task costs 64 bytes per open task of every cached execution, and binding
        # both up front costs an idle execution that never needs one (Task.set_canceller).
        self._release_task: Canceller | None = None
        self._release_wait: Canceller | None = None

    def allocate(
        self,
        kind: TaskKind,
        make: Callable[[int], ScheduleActivity | ScheduleChildWorkflow | StartTimer],
    ) -> Task[Any]:
        """A new task for the action ``make(seq)`` builds."""
        seq = self.next_seq
        self.next_seq += 1
        action = make(seq)
        task: Task[Any] = Task()
        self.actions[seq] = action
        self.open[seq] = OpenTask(kind, action, task, self._now())
        if self._release_task is None:
            self._release_task = self._cancel_task
        task.set_canceller(self._release_task, seq)
        return task

    def confirm(self, event: RecordedAction) -> str:
        """Match a replayed event recording an action with the action the code asked for at
        its seq; returns the non-determinism found ("" if they agree)."""
        action = self.actions.pop(event.seq, None)
        if action is None:
            return (
                f"non-determinism at seq {event.seq}: history has {describe_action(event)} "
                f"but the workflow code did not {_VERBS.get(type(event), 'schedule')} it "
                "(code changed? guard new code with ctx.is_patched())"
            )
        if not matches(action, event):
            return (
                f"non-determinism at seq {event.seq}: history has {describe_action(event)} "
                f"but the workflow code now asks for {describe_action(action)}"
            )
        open_task = self.open.get(event.seq)
        if open_task is not None:
            open_task.dispatched = True
        return ""

    def is_open(self, seq: int, kind: TaskKind) -> bool:
        """True if ``seq`` is a dispatched open task of ``kind`` (a result may resolve it)."""
        open_task = self.open.get(seq)
        return open_task is not None and open_task.kind is kind and open_task.dispatched

    def take_actions(self) -> list[Command]:
        """The new actions in seq order, marked dispatched (valid from the next step on: the
        runtime keeps the execution only if the commit recording them succeeds)."""
        taken = []
        for seq in sorted(self.actions):
            taken.append(self.actions[seq])
            open_task = self.open.get(seq)
            if open_task is not None:
                open_task.dispatched = True
        self.actions.clear()
        return taken

    def take_cancelled(self) -> tuple[int, ...]:
        """The timers cancelled since the last call."""
        cancelled, self.cancelled_timers = tuple(self.cancelled_timers), []
        return cancelled

    def cancel_timer(self, seq: int) -> None:
        """Stop timer ``seq`` of a race that was decided (an event arrived, a task finished):
        its store entry is removed, a late firing is dropped."""
        if self.open.pop(seq, None) is not None:
            self.cancelled_timers.append(seq)

    def _cancel_task(self, _task: Task[Any], seq: int) -> None:
        self.cancel(seq)

    def _stop_waiting(self, task: Task[Any], name: str) -> None:
        self._mailbox.stop_waiting(name, task)

    def cancel(self, seq: int) -> None:
        """Release task ``seq`` the workflow cancelled (:meth:`Task.cancel`).

        A task not dispatched yet (scheduled in this very step) is forgotten: nothing is sent
        or recorded. A timer is removed from the store. An activity or child workflow gets a
        cancellation action: recorded as ``TaskCancelled``, sent as a cancel message or a
        terminate. Either way a late result is stray and dropped.
        """
        open_task = self.open.pop(seq, None)
        if open_task is None:
            return
        action = open_task.action
        if self.actions.get(seq) is action:
            del self.actions[seq]
            if isinstance(action, ScheduleChildWorkflow):
                self.children.pop(action.instance_id, None)
            return
        match action:
            case StartTimer():
                self.cancelled_timers.append(seq)
            case ScheduleActivity(name=name, app_id=app_id, attempt=attempt):
                self.actions[seq] = CancelActivity(seq, name, app_id, attempt)
            case ScheduleChildWorkflow(name=name, app_id=app_id, instance_id=child):
                reason = f"cancelled by parent {self._instance_id()}"
                self.actions[seq] = CancelChildWorkflow(seq, name, app_id, child, reason)

    def send_event(self, instance_id: str, app_id: str, name: str, data: object) -> None:
        """Allocate a seq for an event sent to another instance (recorded as ``EventSent``)."""
        seq = self.next_seq
        self.next_seq += 1
        self.actions[seq] = SendEvent(seq, instance_id, app_id, name, data)

    def child_terminations(self, reason: str) -> list[TerminateChildren]:
        """Terminate commands for every open child (a recursive terminate)."""
        return [
            TerminateChildren(o.action.instance_id, o.action.app_id, reason)
            for o in self.open.values()
            if isinstance(o.action, ScheduleChildWorkflow)
        ]

    def pending(self, limit: int) -> list[PendingTask]:
        """The ``limit`` oldest open tasks, then one ``more`` entry counting the rest."""
        oldest = heapq.nsmallest(limit, self.open)
        pending = [pending_task(seq, self.open[seq]) for seq in oldest]
        if len(self.open) > limit:
            rest = len(self.open) - limit
            pending.append(PendingTask("more", f"{rest} more tasks", detail="not listed"))
        return pending

    # -- what WorkflowContext schedules ----------------------------------------------------------

    def schedule_activity(
        self, name: str, app_id: str, input_value: object, attempt: int, timeout: timedelta | None
    ) -> Task[Any]:
        """Allocate a seq for an activity attempt (raced against a timer with ``timeout``)."""
        task = self.allocate(
            TaskKind.ACTIVITY, lambda seq: ScheduleActivity(seq, name, app_id, input_value, attempt)
        )
        if timeout is None:
            return task
        seq = self.next_seq - 1
        timer = self.schedule_timer(self._now() + timeout)
        return self._race_timeout(task, seq, timer, f"activity {name!r} on app {app_id!r}", timeout)

    def schedule_child(
        self, name: str, app_id: str, input_value: object, instance_id: str | None, attempt: int
    ) -> Task[Any]:
        """Allocate a seq for a child workflow; its ID defaults to ``<parent>:<seq>``."""

        def make(seq: int) -> ScheduleChildWorkflow:
            child_id = instance_id or f"{self._instance_id()}:{seq}"
            if instance_id is not None and attempt > 1:
                child_id = f"{instance_id}-{attempt}"
            self.children[child_id] = app_id
            return ScheduleChildWorkflow(seq, name, app_id, child_id, input_value)

        return self.allocate(TaskKind.CHILD_WORKFLOW, make)

    def schedule_timer(self, fire_at: datetime) -> Task[None]:
        """Allocate a seq for a durable timer."""
        return self.allocate(TaskKind.TIMER, lambda seq: StartTimer(seq, fire_at))

    def wait_for_event(self, name: str, timeout: timedelta | None) -> Task[Any]:
        """A task resolved by the next (or a buffered) external event called ``name``."""
        key = name.casefold()
        task: Task[Any] = Task()
        kept = self._mailbox.take(key)
        if kept is not None:
            task.resolve(kept.data)
            return task
        self._mailbox.wait(key, task)
        if self._release_wait is None:
            self._release_wait = self._stop_waiting
        task.set_canceller(self._release_wait, key)
        if timeout is None:
            return task
        timer = self.schedule_timer(self._now() + timeout)
        result: Task[Any] = Task()
        timer_seq = self.next_seq - 1
        result.set_canceller(cancel_parts, (task, timer))

        def on_event(done: Task[Any]) -> None:
            if not result.is_complete:
                self.cancel_timer(timer_seq)
                result.resolve(done.get_result())

        def on_timer(_: Task[Any]) -> None:
            if not result.is_complete:
                self._mailbox.stop_waiting(key, task)
                result.reject(
                    TimeoutError(f"external event {name!r} did not arrive within {timeout}")
                )

        task.add_done_callback(on_event)
        timer.add_done_callback(on_timer)
        return result

    def schedule_with_retry(
        self, start_attempt: Callable[[int], Task[Any]], policy: RetryPolicy | None
    ) -> Task[Any]:
        """Run ``start_attempt(1)``; on failure wait per ``policy`` and start the next attempt."""
        first = start_attempt(1)
        if policy is None:
            return first
        result: Task[Any] = Task()
        first_start = self._now()
        current = [first]  # the running attempt or the backoff timer: what a cancel stops
        result.set_canceller(cancel_parts, current)

        def attempt_done(attempt: int, done: Task[Any]) -> None:
            if result.is_complete:
                return
            error = done.get_exception()
            if error is None:
                result.resolve(done.get_result())
                return
            failure = getattr(error, "failure", None)
            if not isinstance(failure, FailureDetails):
                failure = FailureDetails.from_exception(error)
            delay = policy.next_delay(attempt, failure, elapsed=self._now() - first_start)
            if delay is None or isinstance(error, TaskCancelledError):
                result.reject(error)
                return
            timer = self.schedule_timer(self._now() + delay)
            current[0] = timer
            timer.add_done_callback(lambda _: start(attempt + 1))

        def start(attempt: int) -> None:
            if result.is_complete:
                return
            task = first if attempt == 1 else start_attempt(attempt)
            current[0] = task
            task.add_done_callback(lambda done: attempt_done(attempt, done))

        start(1)
        return result

    def _race_timeout(
        self, task: Task[Any], task_seq: int, timer: Task[None], what: str, timeout: timedelta
    ) -> Task[Any]:
        timer_seq = self.next_seq - 1
        result: Task[Any] = Task()
        result.set_canceller(cancel_parts, (task, timer))

        def on_task(done: Task[Any]) -> None:
            if result.is_complete:
                return
            self.cancel_timer(timer_seq)
            error = done.get_exception()
            if error is None:
                result.resolve(done.get_result())
            else:
                result.reject(error)

        def on_timer(_: Task[None]) -> None:
            if result.is_complete:
                return
            self.open.pop(task_seq, None)  # a late result is now stray and will be dropped
            failure = FailureDetails("TimeoutError", f"{what} did not finish within {timeout}")
            result.reject(ActivityTimeoutError(f"{what} timed out after {timeout}", failure))

        task.add_done_callback(on_task)
        timer.add_done_callback(on_timer)
        return result
