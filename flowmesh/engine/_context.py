"""``WorkflowContext``: the API workflow code uses to schedule durable work.

Every method is deterministic: it reads only the execution's replayed state (sequence numbers,
the time of the current step, recorded patches), never the clock or a random source.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

from flowmesh._errors import ValidationError
from flowmesh.engine._tasks import Task, WhenAllTask, WhenAnyTask
from flowmesh.model import RetryPolicy, check_app_id, check_instance_id


class Execution(Protocol):
    """What a :class:`WorkflowContext` needs of the execution it schedules work on.

    ``WorkflowExecution`` is the one implementation; this port keeps the context from
    importing the executor, which builds contexts (no import circle).
    """

    instance_id: str
    run_id: str
    app_id: str
    name: str
    current_time: datetime
    is_replaying: bool
    custom_status: object
    check_value: Callable[[object, str], None]
    """Raises unless a value can be sent; the str says whose value it is."""

    def schedule_with_retry(
        self, start_attempt: Callable[[int], Task[Any]], policy: RetryPolicy | None
    ) -> Task[Any]:
        """Run ``start_attempt(1)``, and later attempts under ``policy`` after it fails."""

    def schedule_activity(
        self, name: str, app_id: str, input_value: object, attempt: int, timeout: timedelta | None
    ) -> Task[Any]:
        """Schedule one attempt of activity ``name`` on ``app_id``."""

    def schedule_child(
        self, name: str, app_id: str, input_value: object, instance_id: str | None, attempt: int
    ) -> Task[Any]:
        """Schedule one attempt of child workflow ``name`` on ``app_id``."""

    def schedule_timer(self, fire_at: datetime) -> Task[None]:
        """A durable timer firing at ``fire_at``."""

    def wait_for_event(self, name: str, timeout: timedelta | None) -> Task[Any]:
        """The next external event ``name`` (buffered ones first)."""

    def send_event(self, instance_id: str, app_id: str, name: str, data: object) -> None:
        """Send event ``name`` to instance ``instance_id`` on ``app_id`` (durably)."""

    def is_patched(self, name: str) -> bool:
        """Whether this execution takes the code path guarded by patch ``name``."""


# uuid5 namespace for ctx.new_uuid(): fixed so the same history yields the same IDs.
_UUID_NAMESPACE = uuid.UUID("9f3c2b0e-8f43-4d57-9d1a-0c4b6f9a2e11")


class Logger(Protocol):
    """The logging methods flowmesh calls (stdlib ``logging.Logger`` and structlog fit)."""

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def error(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


class ReplaySafeLogger:
    """Forwards to a logger only when the workflow is not replaying, so lines appear once."""

    __slots__ = ("_context", "_inner")

    def __init__(self, inner: Logger, context: WorkflowContext) -> None:
        self._inner = inner
        self._context = context

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at debug level unless replaying."""
        if not self._context.is_replaying:
            self._inner.debug(msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at info level unless replaying."""
        if not self._context.is_replaying:
            self._inner.info(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at warning level unless replaying."""
        if not self._context.is_replaying:
            self._inner.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at error level unless replaying."""
        if not self._context.is_replaying:
            self._inner.error(msg, *args, **kwargs)


class ContinueAsNew(BaseException):
    """Raised by :meth:`WorkflowContext.continue_as_new` to end the current execution.

    A ``BaseException`` so that ``except Exception`` in workflow code does not swallow it.
    """

    def __init__(self, new_input: object, save_events: bool) -> None:
        super().__init__("continue_as_new")
        self.new_input = new_input
        self.save_events = save_events


def task_name(name_or_fn: str | Callable[..., Any]) -> str:
    """The registered name of an activity or workflow given by name or by function."""
    if isinstance(name_or_fn, str):
        return name_or_fn
    registered = getattr(name_or_fn, "__flowmesh_name__", None)
    return registered if isinstance(registered, str) else name_or_fn.__name__


class WorkflowContext:
    """What a workflow function receives as its first argument.

    Create tasks with ``call_activity``, ``call_child_workflow``, ``create_timer`` and
    ``wait_for_external_event`` and ``await`` them (alone or through ``when_all`` /
    ``when_any``). Never await anything else: workflow code is replayed from history and must
    be deterministic.
    """

    __slots__ = ("_execution", "_logger", "_uuid_counter")

    def __init__(self, execution: Execution, logger: Logger) -> None:
        self._execution = execution
        self._logger = ReplaySafeLogger(logger, self)
        self._uuid_counter = 0

    # -- read-only properties ------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        """This workflow instance's ID."""
        return self._execution.instance_id

    @property
    def run_id(self) -> str:
        """This run's identity: a new one after the ID is purged and reused, and after
        continue-as-new. Activities see it too (``ActivityContext.run_id``)."""
        return self._execution.run_id

    @property
    def app_id(self) -> str:
        """The app ID hosting this workflow (the default target of activities)."""
        return self._execution.app_id

    @property
    def name(self) -> str:
        """The registered name of this workflow."""
        return self._execution.name

    @property
    def current_utc_datetime(self) -> datetime:
        """Deterministic 'now': the time the current step started, from history."""
        return self._execution.current_time

    @property
    def is_replaying(self) -> bool:
        """True while the code re-executes steps already recorded in history."""
        return self._execution.is_replaying

    @property
    def logger(self) -> ReplaySafeLogger:
        """A logger that stays quiet during replay, so each line is logged once."""
        return self._logger

    # -- scheduling ----------------------------------------------------------------------------

    def call_activity(
        self,
        name_or_fn: str | Callable[..., Any],
        input: object = None,
        *,
        app_id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> Task[Any]:
        """Run an activity on ``app_id`` (default: this workflow's app) and return its task.

        With ``retry``, failed attempts are retried after durable backoff timers. With
        ``timeout``, an attempt that has not finished in time fails with ``TimeoutError``
        (and is retried if the policy allows).
        """
        name = task_name(name_or_fn)
        self._execution.check_value(input, f"input of activity {name!r}")
        if timeout is not None and timeout <= timedelta(0):
            raise ValueError("call_activity timeout must be positive")
        target = app_id or self.app_id
        return self._execution.schedule_with_retry(
            lambda attempt: self._execution.schedule_activity(
                name, target, input, attempt, timeout
            ),
            retry,
        )

    def call_child_workflow(
        self,
        name_or_fn: str | Callable[..., Any],
        input: object = None,
        *,
        app_id: str | None = None,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Task[Any]:
        """Start a child workflow on ``app_id`` (default: this app) and return its task.

        The child's history lives with its own app. Its instance ID defaults to
        ``<parent id>:<seq>``, deterministic across replays.
        """
        name = task_name(name_or_fn)
        self._execution.check_value(input, f"input of child workflow {name!r}")
        if instance_id is not None:
            check_instance_id(instance_id)
        target = app_id or self.app_id
        return self._execution.schedule_with_retry(
            lambda attempt: self._execution.schedule_child(
                name, target, input, instance_id, attempt
            ),
            retry,
        )

    def create_timer(self, fire_at: datetime | timedelta) -> Task[None]:
        """A durable timer firing at ``fire_at`` (UTC datetime) or after a ``timedelta``."""
        if isinstance(fire_at, timedelta):
            fire_at = self.current_utc_datetime + fire_at
        elif fire_at.tzinfo is None:
            raise ValueError("create_timer needs a timezone-aware datetime (UTC) or a timedelta")
        return self._execution.schedule_timer(fire_at)

    def wait_for_external_event(self, name: str, *, timeout: timedelta | None = None) -> Task[Any]:
        """Wait for external event ``name`` (case-insensitive); ``TimeoutError`` on timeout.

        Events that arrived before the workflow waits are buffered and delivered in order.
        """
        return self._execution.wait_for_event(name, timeout)

    def send_event(
        self, instance_id: str, name: str, data: object = None, *, app_id: str | None = None
    ) -> None:
        """Raise external event ``name`` with ``data`` on workflow ``instance_id`` hosted by
        ``app_id`` (default: this workflow's app); nothing to await.

        Sent durably once this step commits (recorded in history, so a replay does not send
        it again), with an event ID that lets the receiver record it once. An instance that
        does not exist yet gets it when it is created, within the receiving worker's
        ``hold_unknown_for``; after that the event is dead-lettered with the reason.
        """
        check_instance_id(instance_id)
        if not isinstance(name, str) or not name:
            raise ValidationError(f"send_event needs a non-empty event name, got {name!r}")
        target = self.app_id if app_id is None else check_app_id(app_id)
        self._execution.check_value(data, f"data of event {name!r} sent to {instance_id!r}")
        self._execution.send_event(instance_id, target, name, data)

    def when_all(self, tasks: Sequence[Task[Any]]) -> Task[list[Any]]:
        """A task completing with all results (in order) or failing with the first failure.

        The others are not cancelled when one fails; ``.cancel()`` on the ``when_all`` task
        cancels every unfinished one.
        """
        return WhenAllTask(tasks)

    def when_any(self, tasks: Sequence[Task[Any]]) -> Task[Task[Any]]:
        """A task completing with the first of ``tasks`` to finish (which may have failed).

        The losers are not cancelled: code may still await them. Until then a losing event
        wait still consumes the next event of its name and a losing timer still fires into
        the workflow (ignored if nobody awaits it); call ``.cancel()`` on the losers that are
        no longer wanted, or on the ``when_any`` task itself to cancel them all.
        """
        return WhenAnyTask(tasks)

    def continue_as_new(self, input: object = None, *, save_events: bool = False) -> NoReturn:
        """End this execution and restart the workflow with ``input`` and a fresh history.

        With ``save_events``, external events received but not yet consumed are carried over.
        """
        self._execution.check_value(input, f"input of continue_as_new of workflow {self.name!r}")
        raise ContinueAsNew(input, save_events)

    def set_custom_status(self, value: object) -> None:
        """Publish a small value describing progress; shown by ``describe()`` and the CLI."""
        self._execution.check_value(value, f"custom status of workflow {self.name!r}")
        self._execution.custom_status = value

    def is_patched(self, name: str) -> bool:
        """Versioning: True if this execution runs (or ran) the code guarded by ``name``.

        New executions take the patched path and record it; replays of executions that
        started before the patch existed keep taking the old path.
        """
        return self._execution.is_patched(name)

    def new_uuid(self) -> str:
        """A UUID that is the same on every replay of this step."""
        self._uuid_counter += 1
        seed = f"{self.instance_id}/{self.current_utc_datetime.isoformat()}/{self._uuid_counter}"
        return str(uuid.uuid5(_UUID_NAMESPACE, seed))
