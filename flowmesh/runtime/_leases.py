"""Bookkeeping of running activities: leases of long activities and notes on waiting ones.

Neither changes a workflow's history, so both are applied as state-only commits (the version
still advances, which keeps the single-writer check meaningful):

* ``ActivityLease`` - a worker acked a long activity's delivery early (before RabbitMQ's
  ``consumer_timeout``) and renews a lease. The lease is a store timer with a negative seq
  (``-(seq + 1)``); if it fires, the worker stopped renewing (it died), and the task is
  dispatched again. A late result from the old run is then a harmless duplicate.
* ``TaskNote`` - a target app explains why a task waits (e.g. the activity is not registered
  there yet); shown in ``describe()`` as the pending task's detail.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from flowmesh.engine import WorkflowExecution
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityLease,
    ActivityScheduled,
    HistoryEvent,
    Message,
    PendingTask,
    ScheduleActivity,
    TaskCancelled,
    TaskNote,
    TimerDue,
)
from flowmesh.store import TimerEntry


def lease_timer_seq(seq: int) -> int:
    """The store timer seq of activity ``seq``'s lease (negative: never a workflow timer)."""
    return -(seq + 1)


def is_lease_timer(message: Message) -> bool:
    """True for a ``TimerDue`` that is a lease expiry rather than a workflow timer."""
    return isinstance(message, TimerDue) and message.seq < 0


@dataclass
class TaskBookkeeping:
    """Lease renewals, lease expiries and notes received in one batch."""

    leases: list[ActivityLease] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)  # activity seqs
    notes: list[TaskNote] = field(default_factory=list)

    def add(self, message: Message) -> bool:
        """Take ``message`` if it is bookkeeping; False otherwise."""
        if isinstance(message, ActivityLease):
            self.leases.append(message)
        elif isinstance(message, TaskNote):
            self.notes.append(message)
        elif isinstance(message, TimerDue) and message.seq < 0:
            self.expired.append(-message.seq - 1)
        else:
            return False
        return True

    def __bool__(self) -> bool:
        return bool(self.leases or self.expired or self.notes)


@dataclass
class BookkeepingEffects:
    """What a batch's bookkeeping adds to the step's commit."""

    add_timers: list[TimerEntry] = field(default_factory=list)
    cancel_timers: list[int] = field(default_factory=list)
    redispatch: list[ScheduleActivity] = field(default_factory=list)
    details: dict[int, str] = field(default_factory=dict)
    stale: bool = False  # something referred to a task that is not open

    def __bool__(self) -> bool:
        return bool(self.add_timers or self.cancel_timers or self.redispatch or self.details)


def apply_bookkeeping(
    book: TaskBookkeeping,
    execution: WorkflowExecution,
    waiting: Sequence[PendingTask],
    *,
    instance_id: str,
    now: datetime,
) -> BookkeepingEffects:
    """Turn received bookkeeping into timers, re-dispatches and pending-task details."""
    effects = BookkeepingEffects()
    current = {task.seq: task.detail for task in waiting if task.kind == "activity"}
    for lease in book.leases:
        action = execution.open_activity(lease.seq)
        if action is None or action.attempt != lease.attempt:
            effects.stale = True
            continue
        until = now + timedelta(seconds=lease.lease_seconds)
        effects.add_timers.append(
            TimerEntry(instance_id, lease_timer_seq(lease.seq), until, execution.run_id)
        )
        effects.details[lease.seq] = (
            f"running on {lease.worker or 'a worker'}, lease until {until:%H:%M:%S}"
        )
    for seq in book.expired:
        action = execution.open_activity(seq)
        effects.cancel_timers.append(lease_timer_seq(seq))
        if action is None:
            continue
        effects.redispatch.append(action)
        effects.details[seq] = "lease expired (worker lost); task dispatched again"
    for note in book.notes:
        action = execution.open_activity(note.seq)
        if action is None:
            effects.stale = True
            continue
        if current.get(note.seq) != note.note:
            effects.details[note.seq] = note.note
    return effects


def lease_timers_done(
    append: Iterable[HistoryEvent], history: Iterable[HistoryEvent], *, ended: bool
) -> list[int]:
    """Lease timers no longer needed: results arrived, tasks were cancelled, or the workflow
    ended."""
    done = [
        lease_timer_seq(e.seq)
        for e in append
        if isinstance(e, ActivityCompleted | ActivityFailed | TaskCancelled)
    ]
    if ended:
        done += [
            lease_timer_seq(e.seq) for e in (*history, *append) if isinstance(e, ActivityScheduled)
        ]
    return done


def with_details(
    waiting: Sequence[PendingTask], previous: Sequence[PendingTask], details: dict[int, str]
) -> tuple[PendingTask, ...]:
    """Pending tasks with notes applied; notes from earlier steps stay while a task waits."""
    earlier = {
        task.seq: task.detail for task in previous if task.kind == "activity" and task.detail
    }
    out = []
    for task in waiting:
        detail = task.detail
        if task.kind == "activity":
            detail = details.get(task.seq) or task.detail or earlier.get(task.seq, "")
        out.append(task if detail == task.detail else replace(task, detail=detail))
    return tuple(out)
