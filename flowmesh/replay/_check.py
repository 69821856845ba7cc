"""Replaying recorded histories against the current workflow code.

A history replays cleanly when the engine, given the whole history, neither stalls (history
and code disagree at some sequence number: the engine's ``stall_reason`` names both sides)
nor asks for work the history does not record at its end (the code would now schedule more
in the last recorded step, or no longer finish where the history finished). That is the same
test as :func:`flowmesh.testing.history.verify_replay`; this module reports it as data.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from flowmesh._app import App
from flowmesh.engine import WorkflowFunction, replay_step
from flowmesh.model import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    HistoryEvent,
    PatchRecorded,
    StepStarted,
    TimerCreated,
    WorkflowCompleted,
    WorkflowStatus,
)
from flowmesh.replay._file import HistoryFile

__all__ = ["ReplayReport", "ReplayResult", "check_histories", "check_history"]

_NO_APP: Final = "no App({app_id!r}) is loaded (found: {found}); load the module that defines it"


class ReplayResult(enum.StrEnum):
    """How one history fared: replayed cleanly, diverged, or could not be checked."""

    OK = "ok"
    NON_DETERMINISM = "non-determinism"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """The verdict on one history.

    ``detail`` is empty when ``result`` is OK; for a non-determinism it names both sides (what
    the history records and what the code now does), for an error what kept the check from
    running. ``status`` is where the replay left the workflow (e.g. RUNNING for a history
    stopped mid-way, STALLED on a non-determinism).
    """

    source: str
    app_id: str
    workflow: str
    instance_id: str
    events: int
    result: ReplayResult
    status: WorkflowStatus | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the history replays cleanly."""
        return self.result is ReplayResult.OK

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (public type names, the status by value)."""
        return {
            "source": self.source,
            "app_id": self.app_id,
            "workflow": self.workflow,
            "instance_id": self.instance_id,
            "events": self.events,
            "result": self.result.value,
            "status": self.status.value if self.status else None,
            "detail": self.detail,
        }


def check_history(
    history: HistoryFile,
    workflows: Mapping[str, WorkflowFunction] | App,
    *,
    source: str = "",
) -> ReplayReport:
    """Replay ``history`` from scratch with ``workflows`` (an app or name -> function)."""
    table = workflows.workflows if isinstance(workflows, App) else workflows

    def report(result: ReplayResult, status: WorkflowStatus | None, detail: str) -> ReplayReport:
        return ReplayReport(
            source or history.instance_id,
            history.app_id,
            history.workflow,
            history.instance_id,
            len(history.events),
            result,
            status,
            detail,
        )

    outcome = replay_step(table.get, history.events, (), logger=_QUIET)
    if outcome.status is WorkflowStatus.STALLED:
        return report(ReplayResult.NON_DETERMINISM, outcome.status, outcome.stall_reason)
    unrecorded = [e for e in outcome.append if not isinstance(e, StepStarted)]
    if unrecorded:
        return report(
            ReplayResult.NON_DETERMINISM,
            outcome.status,
            f"history {_history_end(history.events)}, but the workflow code now "
            f"{_code_side(unrecorded)}",
        )
    return report(ReplayResult.OK, outcome.status, "")


def check_histories(
    histories: Iterable[tuple[str, HistoryFile]], apps: Iterable[App]
) -> list[ReplayReport]:
    """Check each ``(source, history)`` with the app hosting it (by the history's app ID);
    a history of an app not among ``apps`` is reported as an ERROR."""
    by_id = {app.app_id: app for app in apps}
    reports: list[ReplayReport] = []
    for source, history in histories:
        app = by_id.get(history.app_id)
        if app is None:
            found = ", ".join(sorted(by_id)) or "none"
            reports.append(
                ReplayReport(
                    source,
                    history.app_id,
                    history.workflow,
                    history.instance_id,
                    len(history.events),
                    ReplayResult.ERROR,
                    detail=_NO_APP.format(app_id=history.app_id, found=found),
                )
            )
            continue
        reports.append(check_history(history, app, source=source))
    return reports


def _history_end(events: tuple[HistoryEvent, ...]) -> str:
    last = events[-1] if events else None
    if isinstance(last, WorkflowCompleted):
        return f"records the end of the workflow ({last.status.value}) after event {len(events)}"
    return f"ends after event {len(events)} ({type(last).__name__ if last else 'empty'})"


def _code_side(unrecorded: Sequence[HistoryEvent]) -> str:
    asks: list[str] = []
    for event in unrecorded:
        match event:
            case ActivityScheduled(seq=seq, name=name, app_id=app_id):
                asks.append(f"schedules activity {name!r} on app {app_id!r} at seq {seq}")
            case ChildWorkflowScheduled(seq=seq, name=name, app_id=app_id):
                asks.append(f"starts child workflow {name!r} on app {app_id!r} at seq {seq}")
            case TimerCreated(seq=seq):
                asks.append(f"creates a durable timer at seq {seq}")
            case PatchRecorded(name=name):
                asks.append(f"records patch {name!r}")
            case WorkflowCompleted(status=status):
                asks.append(f"ends the workflow ({status.value})")
            case _:
                asks.append(f"records {type(event).__name__}")
    return " and ".join(asks) + " there, which the history does not record"


class _QuietLogger:
    """Replay-check replays histories to judge them; the workflows' own log lines would
    only be noise (and the engine already suppresses them while replaying)."""

    def debug(self, msg: str, *args: object, **kwargs: object) -> None:
        """Drop the line."""

    def info(self, msg: str, *args: object, **kwargs: object) -> None:
        """Drop the line."""

    def warning(self, msg: str, *args: object, **kwargs: object) -> None:
        """Drop the line."""

    def error(self, msg: str, *args: object, **kwargs: object) -> None:
        """Drop the line."""


_QUIET: Final = _QuietLogger()
