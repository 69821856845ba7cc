"""Sample messages, events and states with a distinctive secret in every protected field."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from flowmesh.model import (
    ActivityCancel,
    ActivityCompleted,
    ActivityFailed,
    ActivityLease,
    ActivityResult,
    ActivityScheduled,
    ActivityTask,
    ChildResult,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    Control,
    ControlAction,
    Describe,
    EventRaised,
    EventSent,
    FailureDetails,
    HistoryEvent,
    Message,
    ParentRef,
    PatchRecorded,
    PendingTask,
    RaiseEvent,
    StartAck,
    StartWorkflow,
    StateReply,
    StepStarted,
    TaskCancelled,
    TaskNote,
    TimerCreated,
    TimerDue,
    TimerFired,
    WorkflowCompleted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
)

SECRET = "s3cr3t-Zebra-Quokka-7781"
"""Distinctive plaintext that must never appear in encrypted bytes."""

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))

NOW = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
FAILURE = FailureDetails(
    error_type="builtins.ValueError",
    message=f"card {SECRET} declined",
    stack_trace=f'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: {SECRET}',
    non_retryable=True,
    app_id="payments",
)
HOST = "orders"
"""The app hosting the samples' workflow: messages that do not name it are bound to it."""


class Where(TypedDict):
    """The keyword arguments that bind an event or state to its place (``**AT``)."""

    app_id: str
    instance_id: str


AT: Where = {"app_id": HOST, "instance_id": "order-17"}
"""Where the samples' history events and state are kept."""

PARENT = ParentRef(instance_id="parent-1", app_id="orders", seq=4)
STATE = WorkflowState(
    instance_id="order-17",
    app_id="orders",
    name="process_order",
    status=WorkflowStatus.FAILED,
    input={"card": SECRET, "items": ["a", "b"], 3: b"\x00\xff"},
    output=[SECRET],
    failure=FAILURE,
    custom_status={"stage": SECRET},
    created_at=NOW,
    updated_at=NOW + timedelta(seconds=5),
    parent=PARENT,
    waiting_on=(PendingTask("activity", "charge", "payments", 3, NOW, "attempt 2"),),
    history_length=12,
    version=5,
)

MESSAGES: list[Message] = [
    StartWorkflow("order-17", "process_order", "orders", {"card": SECRET}, PARENT, "req-1"),
    StartWorkflow("order-18", "process_order", "orders"),
    ActivityTask("order-17", "orders", "payments", 3, 2, "charge", [SECRET, 1, 2.5, None]),
    ActivityResult("order-17", 3, 2, output={"receipt": SECRET}),
    ActivityResult("order-17", 3, 2, failure=FAILURE),
    ActivityLease("order-17", 3, 2, 300.0, "gpu-trainer/1234"),
    TaskNote("order-17", 3, 2, "activity 'train' is not registered on app 'gpu-trainer'"),
    ChildResult("order-17", 5, "order-17-child", output=SECRET.encode()),
    ChildResult("order-17", 5, "order-17-child", failure=FAILURE),
    TimerDue("order-17", 6),
    TimerDue("order-17", -7),
    RaiseEvent("order-17", "approved", {"by": SECRET}, "ev-1"),
    *(Control("order-17", action, "operator", recursive=True) for action in ControlAction),
    Describe("order-17", wait=True),
    StartAck("order-17", created=False, error="already exists", code="exists"),
    StateReply("order-17", STATE),
    StateReply("nope", None, error="not found"),
    ActivityCancel("order-17", "orders", "payments", 3, 2, "run-1"),
]

EVENTS: list[HistoryEvent] = [
    WorkflowStarted("process_order", "order-17", "orders", {"card": SECRET}, PARENT, "req-1"),
    WorkflowStarted("process_order", "order-18", "orders"),
    StepStarted(NOW),
    ActivityScheduled(3, "charge", "payments", {"card": SECRET}, attempt=2),
    ActivityCompleted(3, {"receipt": SECRET}),
    ActivityFailed(3, FAILURE),
    ChildWorkflowScheduled(5, "ship", "shipping", "order-17-child", [SECRET]),
    ChildWorkflowCompleted(5, SECRET),
    ChildWorkflowFailed(5, FAILURE),
    TimerCreated(6, NOW + timedelta(hours=1)),
    TimerFired(6),
    EventRaised("approved", {"by": SECRET}, "ev-1"),
    EventSent(7, "order-18", "orders", "approved"),
    TaskCancelled(3),
    PatchRecorded("use-new-pricing"),
    WorkflowSuspended("maintenance"),
    WorkflowResumed(),
    WorkflowTerminated("cancelled", recursive=True),
    WorkflowCompleted(WorkflowStatus.COMPLETED, output={"total": SECRET}),
    WorkflowCompleted(WorkflowStatus.FAILED, failure=FAILURE),
]


def random_key() -> bytes:
    """A fresh AES-256 key."""
    return os.urandom(32)
