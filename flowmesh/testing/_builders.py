"""History builders: history events written tersely, with test defaults (instance, app,
start time)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    EventRaised,
    EventSent,
    FailureDetails,
    HistoryEvent,
    ParentRef,
    PatchRecorded,
    StepStarted,
    TaskCancelled,
    TimerCreated,
    TimerFired,
    WorkflowCompleted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
)

T0: Final = datetime(2024, 1, 1, tzinfo=UTC)
"""The default virtual start time of test histories (a fixed, timezone-aware UTC datetime)."""

DEFAULT_INSTANCE_ID: Final = "test-1"
"""Instance ID the builders and the driver use unless told otherwise."""

DEFAULT_APP_ID: Final = "app"
"""App ID the builders and the driver use unless told otherwise."""


def failure(
    error_type: str,
    message: str = "",
    *,
    stack: str = "",
    non_retryable: bool = False,
    app_id: str = "",
) -> FailureDetails:
    """Failure details of a remote error of type ``error_type`` (qualified or bare name)."""
    return FailureDetails(error_type, message, stack, non_retryable, app_id)


def step(at: datetime = T0) -> StepStarted:
    """``StepStarted(at)``: opens a step; ``at`` becomes ``ctx.current_utc_datetime``."""
    return StepStarted(at)


def started(
    name: str,
    input: object = None,
    *,
    instance_id: str = DEFAULT_INSTANCE_ID,
    app_id: str = DEFAULT_APP_ID,
    at: datetime = T0,
    parent: ParentRef | None = None,
) -> list[HistoryEvent]:
    """The events of a fresh start: ``[StepStarted(at), WorkflowStarted(...)]``."""
    return [StepStarted(at), WorkflowStarted(name, instance_id, app_id, input, parent)]


def activity_scheduled(
    seq: int,
    name: str,
    app_id: str = DEFAULT_APP_ID,
    input: object = None,
    attempt: int = 1,
) -> ActivityScheduled:
    """Activity ``name`` was scheduled on ``app_id`` as task ``seq`` (attempt 1 by default)."""
    return ActivityScheduled(seq, name, app_id, input, attempt)


def activity_completed(seq: int, output: object = None) -> ActivityCompleted:
    """Activity ``seq`` returned ``output``."""
    return ActivityCompleted(seq, output)


def activity_failed(
    seq: int,
    error_type: str,
    message: str = "",
    stack: str = "",
    non_retryable: bool = False,
    *,
    app_id: str = "",
) -> ActivityFailed:
    """Activity ``seq`` raised an error of type ``error_type`` with ``message`` and ``stack``."""
    return ActivityFailed(seq, FailureDetails(error_type, message, stack, non_retryable, app_id))


def child_scheduled(
    seq: int,
    name: str,
    app_id: str = DEFAULT_APP_ID,
    instance_id: str | None = None,
    input: object = None,
    *,
    parent_instance_id: str = DEFAULT_INSTANCE_ID,
) -> ChildWorkflowScheduled:
    """Child workflow ``name`` was started on ``app_id`` as task ``seq``.

    The child's instance ID defaults to ``<parent_instance_id>:<seq>``, as the engine assigns.
    """
    child_id = instance_id if instance_id is not None else f"{parent_instance_id}:{seq}"
    return ChildWorkflowScheduled(seq, name, app_id, child_id, input)


def child_completed(seq: int, output: object = None) -> ChildWorkflowCompleted:
    """Child workflow ``seq`` completed with ``output``."""
    return ChildWorkflowCompleted(seq, output)


def child_failed(
    seq: int,
    error_type: str,
    message: str = "",
    stack: str = "",
    non_retryable: bool = False,
    *,
    app_id: str = "",
) -> ChildWorkflowFailed:
    """Child workflow ``seq`` failed with an error of type ``error_type``."""
    return ChildWorkflowFailed(
        seq, FailureDetails(error_type, message, stack, non_retryable, app_id)
    )


def timer_created(seq: int, fire_at: datetime) -> TimerCreated:
    """Durable timer ``seq`` was created to fire at ``fire_at`` (timezone-aware UTC)."""
    return TimerCreated(seq, fire_at)


def timer_fired(seq: int) -> TimerFired:
    """Durable timer ``seq`` fired."""
    return TimerFired(seq)


def event_raised(name: str, data: object = None) -> EventRaised:
    """External event ``name`` arrived carrying ``data``."""
    return EventRaised(name, data)


def event_sent(seq: int, instance_id: str, name: str, *, app_id: str = DEFAULT_APP_ID) -> EventSent:
    """The workflow sent event ``name`` (task ``seq``) to ``instance_id`` on ``app_id``."""
    return EventSent(seq, instance_id, app_id, name)


def task_cancelled(seq: int) -> TaskCancelled:
    """The workflow cancelled dispatched activity or child workflow ``seq``."""
    return TaskCancelled(seq)


def patch_recorded(name: str) -> PatchRecorded:
    """The execution took the new code path guarded by ``ctx.is_patched(name)``."""
    return PatchRecorded(name)


def suspended(reason: str = "") -> WorkflowSuspended:
    """An operator suspended the instance."""
    return WorkflowSuspended(reason)


def resumed(reason: str = "") -> WorkflowResumed:
    """An operator resumed the instance."""
    return WorkflowResumed(reason)


def terminated(reason: str = "", recursive: bool = False) -> WorkflowTerminated:
    """An operator terminated the instance (and its open children when ``recursive``)."""
    return WorkflowTerminated(reason, recursive)


def workflow_completed(
    output: object = None,
    *,
    status: WorkflowStatus = WorkflowStatus.COMPLETED,
    failure: FailureDetails | None = None,
) -> WorkflowCompleted:
    """The execution ended with ``status`` (COMPLETED by default) and ``output``/``failure``."""
    return WorkflowCompleted(status, output, failure)


def split_steps(history: Iterable[HistoryEvent]) -> list[list[HistoryEvent]]:
    """Split a history into its steps: each starts with ``StepStarted`` (events before the
    first ``StepStarted``, if any, form a step of their own)."""
    steps: list[list[HistoryEvent]] = []
    for event in history:
        if isinstance(event, StepStarted) or not steps:
            steps.append([])
        steps[-1].append(event)
    return steps
