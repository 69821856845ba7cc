"""``ActivityContext``: what an activity function receives as its first argument."""

from __future__ import annotations

from collections.abc import Callable


class ActivityContext:
    """Identity of the running activity task, and a way to report progress.

    Activities run at least once: a crash before the result is confirmed reruns them.
    ``idempotency_key`` is stable across those redeliveries, so side effects can be
    deduplicated by the systems they touch (e.g. a payment provider's idempotency header).
    """

    __slots__ = (
        "_cancelled",
        "_heartbeat_sink",
        "app_id",
        "attempt",
        "host_app_id",
        "instance_id",
        "name",
        "run_id",
        "seq",
    )

    def __init__(
        self,
        *,
        instance_id: str,
        seq: int,
        attempt: int,
        name: str,
        app_id: str,
        host_app_id: str,
        run_id: str = "",
        heartbeat_sink: Callable[[object], None] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.seq = seq
        self.attempt = attempt
        self.name = name
        self.app_id = app_id
        self.host_app_id = host_app_id
        self.run_id = run_id
        """The run of the workflow instance that scheduled this task (a reused instance ID
        gets a new run, and so new idempotency keys)."""
        self._heartbeat_sink = heartbeat_sink
        self._cancelled = False

    @property
    def is_cancelled(self) -> bool:
        """True once the workflow cancelled this task (``Task.cancel()``) while it runs here.

        Best effort: the cancel message reaches the replica that runs the task only if it is
        delivered there (a cancel that finds every slot of ``--concurrency`` busy waits in the
        queue like any task). A long sync activity can poll this and stop early; an
        ``async def`` activity is also cancelled (``asyncio.CancelledError`` at its current
        ``await``). Whatever it returns then is dropped by the workflow.
        """
        return self._cancelled

    def mark_cancelled(self) -> None:
        """Set :attr:`is_cancelled` (the worker, when a cancel message for the task arrives)."""
        self._cancelled = True

    @property
    def task_id(self) -> str:
        """``<instance>#<seq>``: identifies this task within its workflow."""
        return f"{self.instance_id}#{self.seq}"

    @property
    def idempotency_key(self) -> str:
        """``<host app>/<instance>/<run>#<seq>/<attempt>``: the same on every redelivery of
        this task, different for every other task, also across runs of a reused instance ID."""
        return f"{self.host_app_id}/{self.instance_id}/{self.run_id}#{self.seq}/{self.attempt}"

    def heartbeat(self, details: object = None) -> None:
        """Report progress (thread-safe; callable from sync activities in the thread pool).

        The worker logs ``details`` as a structured ``heartbeat`` line. Long activities do not
        need heartbeats to stay alive: past the ack deadline the worker keeps the task on a
        lease it renews itself (see ``WorkerOptions.ack_deadline``).
        """
        if self._heartbeat_sink is not None:
            self._heartbeat_sink(details)
