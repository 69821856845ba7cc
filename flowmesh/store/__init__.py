"""Workflow stores: the interface, in-memory and Redis implementations."""

from flowmesh.store._base import (
    MAX_WAITERS,
    Commit,
    HeldMessage,
    InstanceRecord,
    OutboxEntry,
    TimerEntry,
    Waiter,
    WorkflowStore,
)

__all__ = [
    "MAX_WAITERS",
    "Commit",
    "HeldMessage",
    "InstanceRecord",
    "OutboxEntry",
    "TimerEntry",
    "Waiter",
    "WorkflowStore",
]
