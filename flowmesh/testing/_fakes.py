"""Fake answers to a workflow's commands: what a test's activity or child workflow responder
returns, and what a driven run produced."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Final, TypeAlias

from flowmesh._errors import NonRetryableError
from flowmesh.engine import StepOutcome
from flowmesh.model import (
    Command,
    FailureDetails,
    HistoryEvent,
    ScheduleActivity,
    ScheduleChildWorkflow,
    WorkflowStatus,
)


class NoReply(Enum):
    """Type of :data:`NO_REPLY`."""

    NO_REPLY = "no reply"


NO_REPLY: Final = NoReply.NO_REPLY
"""Returned by a responder: the task never answers (lets a timeout or a competitor win)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An explicit answer of a fake activity or child workflow.

    ``output`` on success or ``failure`` on error, delivered ``after`` this much virtual time
    (zero: in the very next step). Build one with :meth:`ok` or :meth:`error`.
    """

    output: object = None
    failure: FailureDetails | None = None
    after: timedelta = timedelta(0)

    @classmethod
    def ok(cls, output: object = None, *, after: timedelta = timedelta(0)) -> Reply:
        """Succeed with ``output`` after ``after``."""
        return cls(output, None, after)

    @classmethod
    def error(
        cls,
        error_type: str,
        message: str = "",
        *,
        stack: str = "",
        non_retryable: bool = False,
        after: timedelta = timedelta(0),
    ) -> Reply:
        """Fail with an error of type ``error_type`` after ``after``."""
        return cls(None, FailureDetails(error_type, message, stack, non_retryable), after)


ActivityResponder: TypeAlias = Callable[[ScheduleActivity], object]
"""Answers an activity command: return the output, a :class:`Reply` or :data:`NO_REPLY`, or
raise to fail the attempt (``NonRetryableError`` fails it without retries)."""

ChildResponder: TypeAlias = Callable[[ScheduleChildWorkflow], object]
"""Answers a child workflow command, like :data:`ActivityResponder`."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What :meth:`WorkflowReplayer.run` returns.

    ``outcome`` is the last step's outcome; ``history`` every committed event; ``outcomes`` one
    outcome per step; ``children`` the in-process runs of child workflows by instance ID.
    """

    outcome: StepOutcome
    history: tuple[HistoryEvent, ...]
    outcomes: tuple[StepOutcome, ...]
    children: Mapping[str, RunResult] = field(default_factory=dict)

    @property
    def status(self) -> WorkflowStatus:
        """Status after the last step (RUNNING/SUSPENDED if the run ran out of work)."""
        return self.outcome.status

    @property
    def output(self) -> object:
        """The workflow's output (the new input for CONTINUED_AS_NEW)."""
        return self.outcome.output

    @property
    def failure(self) -> FailureDetails | None:
        """The workflow's failure, if it failed."""
        return self.outcome.failure

    @property
    def commands(self) -> tuple[Command, ...]:
        """Every command of every step, in order."""
        return tuple(command for outcome in self.outcomes for command in outcome.commands)


def call_fake(answer: Callable[[], object], app_id: str) -> object:
    """Run a fake; an exception it raises becomes a failed :class:`Reply`, as in a worker."""
    try:
        return answer()
    except Exception as exc:
        return Reply(
            None,
            FailureDetails.from_exception(
                exc, app_id=app_id, non_retryable=isinstance(exc, NonRetryableError)
            ),
        )
