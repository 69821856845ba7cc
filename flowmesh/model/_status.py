"""Lifecycle states of a workflow instance."""

from __future__ import annotations

from enum import StrEnum


class WorkflowStatus(StrEnum):
    """Where a workflow instance is in its life.

    ``STALLED`` means the engine detected non-determinism (or another condition that needs an
    operator) and stopped advancing the instance rather than diverging from its history.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"
    STALLED = "STALLED"

    @property
    def is_terminal(self) -> bool:
        """True once the instance will never advance again (continued-as-new runs anew)."""
        return self in _TERMINAL

    @property
    def ends_waiting(self) -> bool:
        """True when a caller waiting for the result should be answered: the instance is
        terminal, or STALLED (it needs an operator, not more waiting)."""
        return self in _TERMINAL or self is WorkflowStatus.STALLED


_TERMINAL = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.TERMINATED})
