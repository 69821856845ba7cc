"""Checks on the identifiers inside decoded messages, before the runtime acts on them.

The codec guarantees types; this guarantees the identifiers a message carries are the ones
:mod:`flowmesh.model` allows (they become Redis keys, queue names and log fields). A message
from the broker is untrusted even when it decodes: a hostile or buggy peer can send a valid
``StartWorkflow`` whose instance ID is ``*`` or 10 kB long.
"""

from __future__ import annotations

from flowmesh._errors import ValidationError
from flowmesh.model import (
    ActivityTask,
    ChildResult,
    Control,
    Message,
    StartWorkflow,
    check_app_id,
    check_instance_id,
    check_name,
)

# Dead-letter reasons travel as a message header and in a log line: keep them short even when
# the offending ID is megabytes long.
_MAX_REASON = 300


def message_problem(message: Message) -> str | None:
    """Why ``message`` must not be processed (for the dead-letter reason), or None if fine."""
    try:
        _check(message)
    except ValidationError as exc:
        reason = f"invalid {type(message).__name__}: {exc}"
        return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."
    return None


def _check(message: Message) -> None:
    check_instance_id(message.instance_id)
    match message:
        case StartWorkflow():
            check_name(message.name, "workflow")
            check_app_id(message.app_id)
            if message.parent is not None:
                check_instance_id(message.parent.instance_id)
                check_app_id(message.parent.app_id)
        case ActivityTask():
            check_name(message.name, "activity")
            check_app_id(message.app_id)
            check_app_id(message.host_app_id)
        case ChildResult():
            check_instance_id(message.child_instance_id)
        case Control(new_instance_id=new_id) if new_id:
            check_instance_id(new_id)
