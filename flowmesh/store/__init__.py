"""Workflow stores: the interface, in-memory and Redis implementations."""

from flowmesh.store._base import (
    Commit,
    HeldMessage,
    InstanceRecord,
    OutboxEntry,
    TimerEntry,
    WorkflowStore,
)

__all__ = ["Commit", "HeldMessage", "InstanceRecord", "OutboxEntry", "TimerEntry", "WorkflowStore"]
