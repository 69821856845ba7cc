"""The tasks an execution has scheduled: sequence numbers, actions not yet confirmed by
history, open tasks waiting for their results, and the durable combinators built on them
(retries with backoff timers, timeouts raced against timers)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flowmesh._errors import ActivityTimeoutError
from flowmesh.engine._actions import (
    OpenTask,
    TaskKind,
    describe_action,
    matches,
    pending_task,
)
from flowmesh.engine._mailbox import EventMailbox
from flowmesh.engine._tasks import Task
from flowmesh.model import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    Command,
    FailureDetails,
    PendingTask,
    RetryPolicy,
    ScheduleActivity,
    ScheduleChildWorkflow,
    StartTimer,
    TerminateChildren,
    TimerCreated,
)


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
        """Scheduled by code, not yet confirmed by history (new: they become commands)."""
        self.open: dict[int, OpenTask] = {}
        """Tasks waiting for their result event, by seq."""
        self.cancelled_timers: list[int] = []
        self.children: dict[str, str] = {}
        """Child instance -> app, for recursive terminate and sender checks."""

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
        return task

    def confirm(self, event: ActivityScheduled | ChildWorkflowScheduled | TimerCreated) -> str:
        """Match a replayed scheduling event with the action the code asked for at its seq;
        returns the non-determinism found ("" if they agree)."""
        action = self.actions.pop(event.seq, None)
        if action is None:
            return (
                f"non-determinism at seq {event.seq}: history has {describe_action(event)} "
                "but the workflow code did not schedule it (code changed? guard new code "
                "with ctx.is_patched())"
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
        if self.open.pop(seq, None) is not None:
            self.cancelled_timers.append(seq)

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
        if timeout is None:
            return task
        timer = self.schedule_timer(self._now() + timeout)
        result: Task[Any] = Task()
        timer_seq = self.next_seq - 1

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

        def attempt_done(attempt: int, done: Task[Any]) -> None:
            error = done.get_exception()
            if error is None:
                result.resolve(done.get_result())
                return
            failure = getattr(error, "failure", None)
            if not isinstance(failure, FailureDetails):
                failure = FailureDetails.from_exception(error)
            delay = policy.next_delay(attempt, failure)
            if delay is None:
                result.reject(error)
                return
            timer = self.schedule_timer(self._now() + delay)
            timer.add_done_callback(lambda _: start(attempt + 1))

        def start(attempt: int) -> None:
            task = first if attempt == 1 else start_attempt(attempt)
            task.add_done_callback(lambda done: attempt_done(attempt, done))

        start(1)
        return result

    def _race_timeout(
        self, task: Task[Any], task_seq: int, timer: Task[None], what: str, timeout: timedelta
    ) -> Task[Any]:
        timer_seq = self.next_seq - 1
        result: Task[Any] = Task()

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
