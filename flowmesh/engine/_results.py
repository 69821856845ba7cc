"""Result events (an activity, a child workflow or a timer finished) as task outcomes, and the
errors a failed task raises in workflow code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from flowmesh._errors import (
    ActivityFailedError,
    ChildWorkflowFailedError,
    WorkflowAlreadyExistsError,
)
from flowmesh.engine._actions import TaskKind
from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    FailureDetails,
    TimerFired,
)

ResultEvent = (
    ActivityCompleted | ActivityFailed | ChildWorkflowCompleted | ChildWorkflowFailed | TimerFired
)
"""The history events that resolve an open task."""

_FLOWMESH_CAUSES: dict[str, type[Exception]] = {
    "flowmesh.WorkflowAlreadyExistsError": WorkflowAlreadyExistsError,
}
"""Remote failure types re-raised as their flowmesh class (the ``__cause__`` of the task
error), so workflow code can catch e.g. a child ID that already exists by type."""


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a result event says about the task at ``seq``: its output, or its failure."""

    seq: int
    kind: TaskKind
    output: object = None
    failure: FailureDetails | None = None


def task_result(event: ResultEvent) -> TaskResult:
    """The task outcome ``event`` records."""
    match event:
        case ActivityCompleted(seq=seq, output=output):
            return TaskResult(seq, TaskKind.ACTIVITY, output)
        case ActivityFailed(seq=seq, failure=failure):
            return TaskResult(seq, TaskKind.ACTIVITY, failure=failure)
        case ChildWorkflowCompleted(seq=seq, output=output):
            return TaskResult(seq, TaskKind.CHILD_WORKFLOW, output)
        case ChildWorkflowFailed(seq=seq, failure=failure):
            return TaskResult(seq, TaskKind.CHILD_WORKFLOW, failure=failure)
        case TimerFired(seq=seq):
            return TaskResult(seq, TaskKind.TIMER)
        case _:
            assert_never(event)


def task_error(
    kind: TaskKind, what: str, failure: FailureDetails
) -> ActivityFailedError | ChildWorkflowFailedError:
    """The error awaiting the failed task ``what`` (described by ``describe_action``) raises."""
    error_class = (
        ChildWorkflowFailedError if kind is TaskKind.CHILD_WORKFLOW else ActivityFailedError
    )
    error = error_class(f"{what} failed: {failure.error_type}: {failure.message}", failure)
    cause = _FLOWMESH_CAUSES.get(failure.error_type)
    if cause is not None:
        error.__cause__ = cause(failure.message)
    return error
