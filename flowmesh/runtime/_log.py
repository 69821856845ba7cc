"""structlog access for the runtime. Configuration happens in the CLI only."""

from __future__ import annotations

from typing import Any

import structlog

from flowmesh.codec import Codec
from flowmesh.model import FailureDetails, WorkflowState, WorkflowStatus


def get_logger(**initial: Any) -> Any:
    """A structlog logger with ``initial`` bound (``app_id``, ...)."""
    return structlog.get_logger("flowmesh").bind(**initial)


def log_transition(log: Any, before: WorkflowState, after: WorkflowState, codec: Codec) -> None:
    """Log what a committed step changed: a new run, a status other than RUNNING reached."""
    if before.run_id != after.run_id:
        log.info("workflow started", instance_id=after.instance_id, workflow=after.name)
    if after.status is not before.status and after.status is not WorkflowStatus.RUNNING:
        log.info(
            "workflow " + after.status.value.lower().replace("_", " "),
            instance_id=after.instance_id,
            workflow=after.name,
            reason=after.stall_reason or _failure_shown(after.failure, codec),
        )
    else:
        log.debug("step committed", instance_id=after.instance_id, version=after.version)


def _failure_shown(failure: FailureDetails | None, codec: Codec) -> str | None:
    """A failure for the log: its message, or only its type under payload encryption."""
    if failure is None:
        return None
    return failure.message if codec.payload_codec is None else failure.error_type
