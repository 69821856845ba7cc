"""Golden histories: every recorded history replays cleanly against the current code, a
breaking change is caught with both sides named, and history files round-trip exactly."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flowmesh import App, DecodeError, WorkflowContext, WorkflowStatus
from flowmesh.model import EventRaised, TimerCreated, WorkflowStarted
from flowmesh.replay import (
    HistoryFile,
    ReplayResult,
    check_histories,
    check_history,
    dumps_history,
    loads_history,
    read_history,
    write_history,
)
from flowmesh.testing.history import (
    T0,
    activity_completed,
    activity_scheduled,
    event_raised,
    started,
    step,
    workflow_completed,
)
from tests.golden.record import HISTORIES, WORKFLOW_APPS

GOLDEN = sorted(HISTORIES.rglob("*.jsonl"))
APPS = {app.app_id: app for app in WORKFLOW_APPS}


def test_the_golden_set_covers_every_example_workflow_and_running_histories() -> None:
    """Each workflow of workers/ and the scenarios has a history; some are mid-way."""
    histories = [read_history(path) for path in GOLDEN]
    recorded = {(h.app_id, h.workflow) for h in histories}
    for app in WORKFLOW_APPS:
        for name in app.workflows:
            assert (app.app_id, name) in recorded, f"no golden history of {name} on {app.app_id}"
    statuses = {h.status for h in histories}
    assert {WorkflowStatus.RUNNING, WorkflowStatus.SUSPENDED, WorkflowStatus.COMPLETED} <= statuses


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: str(p.relative_to(HISTORIES)))
def test_golden_history_replays_cleanly_at_every_step(path: Path) -> None:
    """The whole history and each step prefix (a running instance's history) replay OK.

    If this fails after a change to workflow code, the change would break instances that
    are running: guard it with ``ctx.is_patched()``; re-record (``make golden``) only if
    breaking them is intended.
    """
    history = read_history(path)
    for steps in range(1, history.steps + 1):
        report = check_history(history.prefix(steps), APPS[history.app_id], source=str(path))
        assert report.ok, f"{path} (first {steps} steps): {report.detail}"


# -- a breaking change is caught -----------------------------------------------------------------


def _pipeline_with_steps_swapped() -> App:
    """A copy of workers/app1.py's ``pipeline`` with its two activities reordered."""
    changed = App("app1")

    @changed.workflow(name="pipeline")
    async def pipeline(ctx: WorkflowContext, document: dict[str, Any]) -> dict[str, Any]:
        finalized = await ctx.call_activity("finalize", document, app_id="app3")
        transformed = await ctx.call_activity("transform", finalized, app_id="app2")
        return {"instance": ctx.instance_id, "result": transformed}

    return changed


def test_reordering_two_activities_of_an_example_breaks_its_golden_histories() -> None:
    """The golden gate fails on the reorder and names both sides of the divergence."""
    paths = sorted((HISTORIES / "app1").glob("pipeline-1*.jsonl"))
    assert paths
    reports = check_histories(
        [(str(p), read_history(p)) for p in paths], [_pipeline_with_steps_swapped()]
    )
    for report in reports:
        assert report.result is ReplayResult.NON_DETERMINISM, report
        assert report.status is WorkflowStatus.STALLED
        assert "seq 0" in report.detail
        assert "activity 'transform' on app 'app2'" in report.detail  # the history's side
        assert "activity 'finalize' on app 'app3'" in report.detail  # the code's side


def test_unchanged_copy_of_an_example_passes() -> None:
    changed = App("app1")

    @changed.workflow(name="pipeline")
    async def pipeline(ctx: WorkflowContext, document: dict[str, Any]) -> dict[str, Any]:
        ctx.set_custom_status({"stage": "renamed variables, same order"})
        first = await ctx.call_activity("transform", document, app_id="app2")
        second = await ctx.call_activity("finalize", first, app_id="app3")
        return {"instance": ctx.instance_id, "result": second}

    report = check_history(read_history(HISTORIES / "app1" / "pipeline-1.jsonl"), changed)
    assert report.ok, report.detail
    assert report.status is WorkflowStatus.COMPLETED


async def _one_step(ctx: WorkflowContext, _: Any) -> str:
    return str(await ctx.call_activity("charge"))


async def _two_steps(ctx: WorkflowContext, _: Any) -> str:
    await ctx.call_activity("charge")
    return str(await ctx.call_activity("ship"))


def test_work_the_history_does_not_record_at_its_end_is_reported_with_both_sides() -> None:
    """A completed history whose code would now schedule more instead of finishing."""
    history = HistoryFile.of(
        [
            *started("wf"),
            activity_scheduled(0, "charge"),
            step(T0),
            activity_completed(0, "ok"),
            workflow_completed("ok"),
        ],
        WorkflowStatus.COMPLETED,
    )
    assert check_history(history, {"wf": _one_step}).ok
    report = check_history(history, {"wf": _two_steps})
    assert report.result is ReplayResult.NON_DETERMINISM
    assert "records the end of the workflow (COMPLETED)" in report.detail
    assert "schedules activity 'ship' on app 'app' at seq 1" in report.detail


def test_history_of_an_app_that_is_not_loaded_is_an_error_not_a_pass() -> None:
    history = read_history(HISTORIES / "app1" / "pipeline-1.jsonl")
    (report,) = check_histories([("f", history)], [App("other")])
    assert report.result is ReplayResult.ERROR
    assert "no App('app1') is loaded (found: other)" in report.detail


def test_unregistered_workflow_is_a_non_determinism() -> None:
    history = read_history(HISTORIES / "app1" / "pipeline-1.jsonl")
    report = check_history(history, {})
    assert report.result is ReplayResult.NON_DETERMINISM
    assert "'pipeline' is not registered" in report.detail


# -- the file format -----------------------------------------------------------------------------


def test_history_file_round_trips_every_golden_history_byte_for_byte() -> None:
    for path in GOLDEN:
        text = path.read_text(encoding="utf-8")
        assert dumps_history(loads_history(text, source=str(path))) == text


def test_values_json_cannot_carry_round_trip_through_escapes(tmp_path: Path) -> None:
    tricky: dict[Any, Any] = {
        "bytes": b"\x00\xff",
        "nan": math.nan,
        "inf": -math.inf,
        1: "int key",
        "nested": [{"$bin": "not an escape"}, {"$map": 1, "other": 2}],
        "when": "2024-01-01",
    }
    history = HistoryFile.of(
        [
            *started("wf", tricky),
            TimerCreated(0, T0 + timedelta(hours=1)),
            step(T0 + timedelta(hours=1)),
            EventRaised("approval", {"ok": True, "bin": b"x"}, "id-1"),
        ],
        WorkflowStatus.RUNNING,
    )
    path = write_history(tmp_path / "a" / "h.jsonl", history)
    loaded = read_history(path)
    assert loaded.app_id == "app" and loaded.workflow == "wf" and loaded.instance_id == "test-1"
    assert loaded.status is WorkflowStatus.RUNNING
    assert loaded.events[2:] == history.events[2:]
    start = loaded.events[1]
    assert isinstance(start, WorkflowStarted)
    value = start.input
    assert isinstance(value, dict)
    assert math.isnan(value.pop("nan"))
    expected = dict(tricky)
    expected.pop("nan")
    assert value == expected
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert '"format": "flowmesh-history", "version": 1' in header


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('{"format": "other"}\n', "not a flowmesh history file"),
        ('{"format": "flowmesh-history", "version": 9}\n', "version 9 is not supported"),
        (
            '{"format": "flowmesh-history", "version": 1, "app_id": "a", "workflow": "w", '
            '"instance_id": "i", "status": "RUNNING", "events": 2}\n[1, "StepStarted", '
            '{"timestamp": 0}]\n',
            "announces 2 events but the file has 1",
        ),
        (
            '{"format": "flowmesh-history", "version": 1, "app_id": "a", "workflow": "w", '
            '"instance_id": "i", "status": "RUNNING", "events": 1}\n[1, "Nope", {}]\n',
            "line 2: unknown history event kind",
        ),
    ],
)
def test_a_file_that_is_not_a_history_is_refused_with_where(text: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        loads_history(text, source="h.jsonl")


def test_a_prefix_is_cut_at_a_step_boundary() -> None:
    history = HistoryFile.of(
        [*started("wf"), activity_scheduled(0, "a"), step(T0), event_raised("e")],
        WorkflowStatus.COMPLETED,
    )
    assert history.steps == 2
    first = history.prefix(1)
    assert first.events == history.events[:3]
    assert first.status is WorkflowStatus.RUNNING
    assert history.prefix(2) is history
