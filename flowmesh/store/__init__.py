"""Workflow stores: the interface, in-memory and Redis implementations.

:data:`REDIS_COMMANDS` (the commands the Redis store sends, which the security plan grants)
and :func:`redis_function_library` (the server-side functions it calls) are exposed here for
the operations layer; neither imports redis-py, ``flowmesh.store.redis`` does.
"""

from flowmesh.store._base import (
    MAX_WAITERS,
    Commit,
    HeldMessage,
    HistorySlice,
    InstanceRecord,
    OutboxEntry,
    TimerEntry,
    Waiter,
    WorkflowStore,
)
from flowmesh.store._redis_functions import FunctionLibrary
from flowmesh.store._redis_functions import library as redis_function_library
from flowmesh.store._redis_keys import REDIS_COMMANDS

__all__ = [
    "MAX_WAITERS",
    "REDIS_COMMANDS",
    "Commit",
    "FunctionLibrary",
    "HeldMessage",
    "HistorySlice",
    "InstanceRecord",
    "OutboxEntry",
    "TimerEntry",
    "Waiter",
    "WorkflowStore",
    "redis_function_library",
]
