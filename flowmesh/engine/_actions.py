"""What an execution schedules: the kinds of tasks, an open task, and how actions and their
history events are matched, described and listed."""

from __future__ import annotations

import enum
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, assert_never

from flowmesh.engine._tasks import Task
from flowmesh.model import (
    ActivityScheduled,
    CancelActivity,
    CancelChildWorkflow,
    ChildWorkflowScheduled,
    Command,
    EventSent,
    HistoryEvent,
    PendingTask,
    ScheduleActivity,
    ScheduleChildWorkflow,
    SendEvent,
    StartTimer,
    TaskCancelled,
    TimerCreated,
)

RecordedAction = (
    ActivityScheduled | ChildWorkflowScheduled | TimerCreated | EventSent | TaskCancelled
)
"""History events that record an action of the workflow code (confirmed on replay)."""


class TaskKind(enum.Enum):
    """What an open task waits for; a result event resolves only a task of its kind."""

    ACTIVITY = "activity"
    CHILD_WORKFLOW = "child_workflow"
    TIMER = "timer"


@dataclass(slots=True)
class OpenTask:
    """A scheduled task waiting for its result event."""

    kind: TaskKind
    action: ScheduleActivity | ScheduleChildWorkflow | StartTimer
    task: Task[Any]
    scheduled_at: datetime
    dispatched: bool = False
    """True once the task's scheduling is recorded in history (a previous step's outcome, or
    replayed): only then may a result resolve it. A result batched into the very step that
    allocates the task would otherwise complete a task nobody was sent."""


def describe_action(action: Command | HistoryEvent) -> str:
    match action:
        case ScheduleActivity(name=name, app_id=app) | ActivityScheduled(name=name, app_id=app):
            return f"activity {name!r} on app {app!r}"
        case (
            ScheduleChildWorkflow(name=name, app_id=app)
            | ChildWorkflowScheduled(name=name, app_id=app)
        ):
            return f"child workflow {name!r} on app {app!r}"
        case StartTimer() | TimerCreated():
            return "a durable timer"
        case (
            SendEvent(name=name, instance_id=target, app_id=app)
            | EventSent(name=name, instance_id=target, app_id=app)
        ):
            return f"event {name!r} sent to instance {target!r} on app {app!r}"
        case CancelActivity(name=name, app_id=app):
            return f"the cancellation of activity {name!r} on app {app!r}"
        case CancelChildWorkflow(name=name, app_id=app):
            return f"the cancellation of child workflow {name!r} on app {app!r}"
        case TaskCancelled():
            return "the cancellation of this task"
        case _:
            return type(action).__name__


def describe_awaited(coroutine: Coroutine[Any, Any, Any], yielded: object) -> str:
    """Name what the workflow awaited, e.g. ``mod.helper() -> asyncio.tasks.sleep()``.

    The yielded value alone (often ``None``) does not say what the code awaited; the chain of
    coroutines/generators the workflow coroutine is suspended in does.
    """
    names: list[str] = []
    awaited: Any = getattr(coroutine, "cr_await", None)
    while awaited is not None and len(names) < 8:
        qualname = getattr(awaited, "__qualname__", None)
        if not isinstance(qualname, str):
            names.append(type(awaited).__qualname__)
            break
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        module = frame.f_globals.get("__name__", "") if frame is not None else ""
        names.append(f"{module}.{qualname}()" if module else f"{qualname}()")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    if not names:
        return repr(yielded)
    return f"{' -> '.join(names)} (which yielded {yielded!r})"


def matches(action: Command, event: HistoryEvent) -> bool:
    match action, event:
        case ScheduleActivity(), ActivityScheduled():
            return (action.name, action.app_id) == (event.name, event.app_id)
        case ScheduleChildWorkflow(), ChildWorkflowScheduled():
            return (action.name, action.app_id, action.instance_id) == (
                event.name,
                event.app_id,
                event.instance_id,
            )
        case StartTimer(), TimerCreated():
            return True
        case SendEvent(), EventSent():
            return (action.instance_id, action.app_id, action.name) == (
                event.instance_id,
                event.app_id,
                event.name,
            )
        case CancelActivity() | CancelChildWorkflow(), TaskCancelled():
            return True
        case _:
            return False


def scheduled_event(action: Command) -> HistoryEvent:
    match action:
        case ScheduleActivity():
            return ActivityScheduled(
                action.seq, action.name, action.app_id, action.input, action.attempt
            )
        case ScheduleChildWorkflow():
            return ChildWorkflowScheduled(
                action.seq, action.name, action.app_id, action.instance_id, action.input
            )
        case StartTimer():
            return TimerCreated(action.seq, action.fire_at)
        case SendEvent():
            return EventSent(action.seq, action.instance_id, action.app_id, action.name)
        case CancelActivity() | CancelChildWorkflow():
            return TaskCancelled(action.seq)
        case _:
            raise AssertionError(f"{action!r} is not a schedulable action")


def pending_task(seq: int, open_task: OpenTask) -> PendingTask:
    action = open_task.action
    match action:
        case ScheduleActivity(name=name, app_id=app_id):
            return PendingTask("activity", name, app_id, seq, open_task.scheduled_at)
        case ScheduleChildWorkflow(name=name, app_id=app_id, instance_id=child):
            return PendingTask("child_workflow", name, app_id, seq, open_task.scheduled_at, child)
        case StartTimer(fire_at=fire_at):
            return PendingTask(
                "timer", "timer", "", seq, open_task.scheduled_at, f"fires at {fire_at.isoformat()}"
            )
        case _:
            assert_never(action)
