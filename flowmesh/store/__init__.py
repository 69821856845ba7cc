"""Workflow stores: the interface, in-memory and Redis implementations."""

from flowmesh.store._base import Commit, InstanceRecord, OutboxEntry, TimerEntry, WorkflowStore

__all__ = ["Commit", "InstanceRecord", "OutboxEntry", "TimerEntry", "WorkflowStore"]
