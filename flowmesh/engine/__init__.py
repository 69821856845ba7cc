"""The pure replay engine: history in, commands out.

Imports nothing that does I/O: no asyncio, no broker or store clients, no clock, no randomness.
"""

from flowmesh.engine._context import (
    ContinueAsNew,
    Logger,
    ReplaySafeLogger,
    WorkflowContext,
    task_name,
)
from flowmesh.engine._executor import (
    WorkflowExecution,
    WorkflowFunction,
    WorkflowResolver,
    replay_step,
)
from flowmesh.engine._outcome import StepOutcome
from flowmesh.engine._tasks import Task, WhenAllTask, WhenAnyTask

__all__ = [
    "ContinueAsNew",
    "Logger",
    "ReplaySafeLogger",
    "StepOutcome",
    "Task",
    "WhenAllTask",
    "WhenAnyTask",
    "WorkflowContext",
    "WorkflowExecution",
    "WorkflowFunction",
    "WorkflowResolver",
    "replay_step",
    "task_name",
]
