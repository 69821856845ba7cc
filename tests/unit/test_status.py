"""Which statuses end a workflow, and which end a caller's wait for its result."""

from __future__ import annotations

from flowmesh.model import WorkflowStatus


def test_terminal_statuses_are_the_three_final_outcomes() -> None:
    assert {s for s in WorkflowStatus if s.is_terminal} == {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.TERMINATED,
    }


def test_waiting_ends_at_a_terminal_status_or_a_stall() -> None:
    assert {s for s in WorkflowStatus if s.ends_waiting} == {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.TERMINATED,
        WorkflowStatus.STALLED,
    }
