"""Readable descriptions of whose value failed to encode, for error messages.

Used only on the error path: when the caller of ``Codec.encode_*`` gives no ``where``, the
codec derives one from the object being encoded, e.g. ``input of activity 'charge'
(instance order-17)``.
"""

from __future__ import annotations

from typing import Final

from flowmesh.model import (
    ActivityCompleted,
    ActivityFailed,
    ActivityResult,
    ActivityScheduled,
    ActivityTask,
    ChildResult,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    Control,
    Describe,
    EventRaised,
    HistoryPage,
    HistoryRequest,
    RaiseEvent,
    StartAck,
    StartWorkflow,
    StateReply,
    TimerCreated,
    TimerDue,
    TimerFired,
    WorkflowCompleted,
    WorkflowStarted,
    WorkflowState,
)

# How a user-value field is called in prose.
_LABELS: Final = {"custom_status": "custom status"}
_MAX_SHOWN: Final = 80


def describe(obj: object) -> str:
    """The whole object, named by its main user value when it has one."""
    label, subject = _parts(obj)
    return f"{label} of {subject}" if label else subject


def describe_value(obj: object, path: str) -> str:
    """The user value at ``path`` (e.g. ``state.custom_status``) inside ``obj``."""
    field = path.rsplit(".", 1)[-1].removesuffix("[]")
    return f"{_LABELS.get(field, field)} of {_parts(obj)[1]}"


def subject(obj: object) -> str:
    """What ``obj`` is about, without naming a field (for errors in typed fields)."""
    return _parts(obj)[1]


def _parts(obj: object) -> tuple[str | None, str]:  # noqa: C901 - one case per message kind
    """(label of the main user value or None, subject) of a message, event or state."""
    match obj:
        # Messages.
        case StartWorkflow():
            return "input", f"workflow {_q(obj.name)} (instance {_s(obj.instance_id)})"
        case ActivityTask():
            return "input", f"activity {_q(obj.name)} (instance {_s(obj.instance_id)})"
        case ActivityResult():
            return "output", f"activity task seq {_s(obj.seq)} of instance {_s(obj.instance_id)}"
        case ChildResult():
            return "output", (
                f"child workflow {_s(obj.child_instance_id)} "
                f"(task seq {_s(obj.seq)} of instance {_s(obj.instance_id)})"
            )
        case RaiseEvent():
            return "data", f"event {_q(obj.name)} for instance {_s(obj.instance_id)}"
        case StateReply():
            return "state", f"instance {_s(obj.instance_id)}"
        case TimerDue():
            return None, f"TimerDue of timer seq {_s(obj.seq)} of instance {_s(obj.instance_id)}"
        case Control() | Describe() | StartAck() | HistoryRequest() | HistoryPage():
            return None, f"{type(obj).__name__} for instance {_s(obj.instance_id)}"
        # The state.
        case WorkflowState():
            return "state", f"workflow {_q(obj.name)} (instance {_s(obj.instance_id)})"
        # History events.
        case WorkflowStarted():
            return "input", f"workflow {_q(obj.name)} (instance {_s(obj.instance_id)})"
        case ActivityScheduled():
            return "input", f"activity {_q(obj.name)} (task seq {_s(obj.seq)})"
        case ActivityCompleted():
            return "output", f"activity task seq {_s(obj.seq)}"
        case ChildWorkflowScheduled():
            return "input", (
                f"child workflow {_q(obj.name)} "
                f"(instance {_s(obj.instance_id)}, task seq {_s(obj.seq)})"
            )
        case ChildWorkflowCompleted():
            return "output", f"child workflow task seq {_s(obj.seq)}"
        case EventRaised():
            return "data", f"event {_q(obj.name)}"
        case WorkflowCompleted():
            return "output", f"the workflow (status {_s(obj.status)})"
        case ActivityFailed() | ChildWorkflowFailed() | TimerCreated() | TimerFired():
            return None, f"{type(obj).__name__} event of task seq {_s(obj.seq)}"
    return None, f"{type(obj).__name__}"


def _s(value: object) -> str:
    # Field values may be wrong (that may be the very error reported), so show anything safely.
    text = str(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _q(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
