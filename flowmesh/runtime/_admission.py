"""Deciding what a ``StartWorkflow`` does: create the instance, answer a duplicate, or refuse.

Pure: the orchestrator gathers what is known about the instance (stored state, a start
admitted earlier in the same batch, a terminate held before the start arrived) and carries out
the decision. The rules (README "Guarantees"):

* a redelivered client start (same ``request_id``) is answered as the first time;
* a child start from the parent (same instance, app, task ``seq`` and run) that created the
  child is a duplicate: nothing changes, and if the child already finished its result is sent
  to the parent again (the first one may have been lost with a purge of the parent's outbox);
* any other start of an existing ID is refused: a client gets ``StartAck(created=False)``, a
  parent gets a ``ChildResult`` failure of type ``flowmesh.WorkflowAlreadyExistsError`` at
  once, so its await fails instead of waiting forever;
* a start that arrives after a terminate for the same ID was held (the terminate overtook the
  start) is refused, the terminate being a tombstone.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowmesh.model import (
    Control,
    FailureDetails,
    Message,
    ParentRef,
    StartAck,
    StartWorkflow,
    WorkflowStarted,
    WorkflowState,
)
from flowmesh.runtime._translate import Encode, child_result, final_child_result
from flowmesh.transport import Outgoing

ALREADY_EXISTS = "flowmesh.WorkflowAlreadyExistsError"
"""``FailureDetails.error_type`` of a child start refused because its ID is taken; the parent
sees ``ChildWorkflowFailedError`` caused by ``WorkflowAlreadyExistsError``."""


@dataclass(frozen=True, slots=True)
class Existing:
    """What is known about an instance a start names: its stored state, or a start admitted
    earlier in the same batch (``state`` None)."""

    state: WorkflowState | None
    started: WorkflowStarted | None
    """The event that created it (from history or from this batch), if known."""

    @property
    def parent(self) -> ParentRef | None:
        if self.state is not None:
            return self.state.parent
        return self.started.parent if self.started else None

    @property
    def status_shown(self) -> str:
        return self.state.status.value if self.state is not None else "PENDING"


@dataclass(frozen=True, slots=True)
class StartDecision:
    """What to do with one start."""

    started: WorkflowStarted | None = None
    """Create the instance with this event."""
    reply: Message | None = None
    """The answer to a client start (sent if it has a reply-to address)."""
    send: Outgoing | None = None
    """A ``ChildResult`` to publish to the parent now (confirmed before the start is acked)."""
    refused: str = ""
    """Why the start was refused, for the log ('' when created or a harmless duplicate)."""


def decide_start(
    message: StartWorkflow,
    *,
    app_id: str,
    existing: Existing | None,
    terminated_early: Control | None,
    run_id: str,
    encode: Encode,
) -> StartDecision:
    """Decide what ``message`` does given what exists (see the module docstring)."""
    instance_id = message.instance_id
    if existing is not None:
        request = existing.started.request_id if existing.started else ""
        if message.request_id and message.request_id == request:
            return StartDecision(reply=StartAck(instance_id, True))
        if message.parent is not None and _same_parent(existing.parent, message.parent):
            state = existing.state
            resend = final_child_result(state, encode) if state is not None else None
            return StartDecision(send=resend)
        reason = (
            f"workflow instance {instance_id!r} already exists on app {app_id!r} "
            f"(status {existing.status_shown})"
        )
        if message.parent is not None:
            failure = FailureDetails(ALREADY_EXISTS, reason, app_id=app_id)
            return StartDecision(
                send=child_result(message.parent, instance_id, None, failure, encode),
                refused=reason,
            )
        return StartDecision(reply=StartAck(instance_id, False, reason, "exists"), refused=reason)
    if terminated_early is not None:
        reason = f"workflow instance {instance_id!r} was terminated before it started" + (
            f": {terminated_early.reason}" if terminated_early.reason else ""
        )
        if message.parent is not None:
            failure = FailureDetails("WorkflowTerminated", reason, app_id=app_id)
            return StartDecision(
                send=child_result(message.parent, instance_id, None, failure, encode),
                refused=reason,
            )
        return StartDecision(
            reply=StartAck(instance_id, False, reason, "terminated"), refused=reason
        )
    started = WorkflowStarted(
        message.name,
        instance_id,
        app_id,
        message.input,
        message.parent,
        message.request_id,
        run_id=run_id,
    )
    return StartDecision(started=started, reply=StartAck(instance_id, True))


def _same_parent(existing: ParentRef | None, asking: ParentRef) -> bool:
    """True if ``asking`` is the parent task that created the child (a redelivered start).

    Runs are compared only when both sides carry one (children created before run IDs
    existed have none)."""
    if existing is None:
        return False
    if (existing.instance_id, existing.app_id, existing.seq) != (
        asking.instance_id,
        asking.app_id,
        asking.seq,
    ):
        return False
    return not (existing.run_id and asking.run_id) or existing.run_id == asking.run_id
