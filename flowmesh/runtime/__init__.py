"""The worker runtime: orchestrator, activity runner, timers and outbox around the engine."""

from flowmesh.runtime._activity_context import ActivityContext
from flowmesh.runtime._clock import Clock, SystemClock, VirtualClock
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._worker import Worker

__all__ = ["ActivityContext", "Clock", "SystemClock", "VirtualClock", "Worker", "WorkerOptions"]
