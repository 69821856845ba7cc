"""What a workflow execution knows: its identity, the time of the current step, its tasks,
events, patches and how it ended; what its workflow code schedules through the context, and
what the runtime reads between steps. :class:`~flowmesh.engine.WorkflowExecution` adds how
history events change it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from flowmesh.engine._context import Logger, WorkflowContext
from flowmesh.engine._driver import WorkflowCode
from flowmesh.engine._ending import RunEnding
from flowmesh.engine._mailbox import EventMailbox
from flowmesh.engine._patches import PatchState
from flowmesh.engine._scheduler import TaskScheduler
from flowmesh.engine._suspension import SuspensionBuffer
from flowmesh.engine._tasks import Task
from flowmesh.model import (
    HistoryEvent,
    ParentRef,
    PendingTask,
    RetryPolicy,
    ScheduleActivity,
    WorkflowStatus,
    check_value,
)

WorkflowFunction = Callable[[WorkflowContext, Any], Coroutine[Any, Any, Any]]
"""An ``async def workflow(ctx, input)`` function."""

WorkflowResolver = Callable[[str], WorkflowFunction | None]
"""Looks a workflow function up by its registered name."""

WAITING_SHOWN = 20
"""How many pending tasks a workflow state lists individually."""

ValueCheck = Callable[[object, str], None]
"""Raises ``SerializationError`` unless a value can be sent; the str says whose value it is."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SEEN_EVENT_IDS_CARRIED = 1000
"""How many of the latest event IDs a continued run inherits for de-duplication: enough to
cover any redelivery of an event recorded shortly before continue-as-new."""


class ExecutionState:
    """The state of one workflow execution and the queries on it (the base of
    :class:`~flowmesh.engine.WorkflowExecution`, which changes it by applying events)."""

    def __init__(
        self,
        resolve: WorkflowResolver,
        *,
        logger: Logger | None = None,
        check_value: ValueCheck = check_value,
    ) -> None:
        self._resolve = resolve
        self._logger: Logger = logger or logging.getLogger("flowmesh.workflow")
        # Injected so the runtime can also enforce its codec's size limit at the call site,
        # while the engine itself stays free of msgpack.
        self.check_value = check_value
        self.instance_id = ""
        self.run_id = ""
        self.app_id = ""
        self.name = ""
        self.input: object = None
        self.parent: ParentRef | None = None
        self.current_time = _EPOCH
        self.is_replaying = True
        self.custom_status: object = None
        self._context: WorkflowContext | None = None
        self._code = WorkflowCode(self._logger)
        self._mailbox = EventMailbox()
        self._tasks = TaskScheduler(
            self._mailbox, now=lambda: self.current_time, instance_id=lambda: self.instance_id
        )
        self._suspension = SuspensionBuffer()
        self._refused: list[tuple[HistoryEvent | None, str]] = []
        self._suspended = False
        self._patches = PatchState()
        self._ending = RunEnding()
        self._stall_reason = ""
        self._pending_event: HistoryEvent | None = None  # the new event being applied

    @property
    def status(self) -> WorkflowStatus:
        """Where the execution stands after the events fed so far."""
        if self._stall_reason:
            return WorkflowStatus.STALLED
        if self._ending.completion is not None:
            return self._ending.completion.status
        if self._suspended:
            return WorkflowStatus.SUSPENDED
        return WorkflowStatus.RUNNING if self._code.running else WorkflowStatus.PENDING

    # -- called by WorkflowContext (see TaskScheduler) -------------------------------------------

    def schedule_activity(
        self, name: str, app_id: str, input_value: object, attempt: int, timeout: timedelta | None
    ) -> Task[Any]:
        """See :meth:`TaskScheduler.schedule_activity`."""
        return self._tasks.schedule_activity(name, app_id, input_value, attempt, timeout)

    def schedule_child(
        self, name: str, app_id: str, input_value: object, instance_id: str | None, attempt: int
    ) -> Task[Any]:
        """See :meth:`TaskScheduler.schedule_child`."""
        return self._tasks.schedule_child(name, app_id, input_value, instance_id, attempt)

    def schedule_timer(self, fire_at: datetime) -> Task[None]:
        """See :meth:`TaskScheduler.schedule_timer`."""
        return self._tasks.schedule_timer(fire_at)

    def wait_for_event(self, name: str, timeout: timedelta | None) -> Task[Any]:
        """See :meth:`TaskScheduler.wait_for_event`."""
        return self._tasks.wait_for_event(name, timeout)

    def send_event(self, instance_id: str, app_id: str, name: str, data: object) -> None:
        """See :meth:`TaskScheduler.send_event`."""
        self._tasks.send_event(instance_id, app_id, name, data)

    def schedule_with_retry(
        self, start_attempt: Callable[[int], Task[Any]], policy: RetryPolicy | None
    ) -> Task[Any]:
        """See :meth:`TaskScheduler.schedule_with_retry`."""
        return self._tasks.schedule_with_retry(start_attempt, policy)

    def is_patched(self, name: str) -> bool:
        """See :meth:`WorkflowContext.is_patched`; decided once per execution."""
        return self._patches.decide(name, replaying=self.is_replaying)

    # -- queries between steps ------------------------------------------------------------------

    def waiting_on(self, limit: int = WAITING_SHOWN) -> tuple[PendingTask, ...]:
        """What the workflow waits for, for ``describe()``: the ``limit`` oldest tasks, then
        one ``more`` entry counting the rest (a fan-out of thousands must not make every
        step's state that large)."""
        if self._ending.completion is not None:
            return ()
        pending = self._tasks.pending(limit)
        pending.extend(PendingTask("event", name) for name in self._mailbox.waited_for())
        return tuple(pending)

    @property
    def recent_event_ids(self) -> tuple[str, ...]:
        """The latest recorded event IDs (at most :data:`SEEN_EVENT_IDS_CARRIED`), oldest
        first: what a run started by continue-as-new inherits to keep dropping duplicates."""
        return self._mailbox.recent_ids(SEEN_EVENT_IDS_CARRIED)

    @property
    def next_seq(self) -> int:
        """The sequence number the next task will get (a continued run starts here)."""
        return self._tasks.next_seq

    def open_activity(self, seq: int) -> ScheduleActivity | None:
        """The scheduled activity ``seq`` if it still waits for its result, else None."""
        open_task = self._tasks.open.get(seq)
        if open_task is not None and isinstance(open_task.action, ScheduleActivity):
            return open_task.action
        return None

    def child_instances(self) -> dict[str, str]:
        """Child instance ID -> app ID of every child this execution started."""
        return dict(self._tasks.children)
