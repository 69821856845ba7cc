"""Restart: run an instance's workflow again with the same input, decided on the host.

The host reads the workflow's name and input from the stored ``WorkflowStarted`` of the
instance's current run, so inputs (encrypted or large) never travel through the client:

* under the same ID, only once the instance has finished: the step that takes the restart
  starts a new run (new ``run_id``) whose history *replaces* the old one, in one atomic
  commit checked against the old run and version (as continue-as-new does);
* under a new ID, whatever the source's status: the host publishes a ``StartWorkflow`` of the
  new ID to its own work queue, carrying the client's reply address and correlation ID, so
  admission answers the client exactly as for a start (``exists``, ...).

A restarted instance has no parent: its result goes to clients, not to a parent workflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flowmesh.model import Control, StartAck, StartWorkflow, WorkflowStarted, WorkflowState
from flowmesh.runtime._live import Live
from flowmesh.runtime._translate import Encode, blank_state
from flowmesh.transport import Delivery, Outgoing, QueueKind


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """What a restart does: start a new run of the same ID, forward a start, or refuse."""

    started: WorkflowStarted | None = None
    """The first event of a new run of the same instance ID (its history is replaced)."""
    forward: Outgoing | None = None
    """A start of the new instance ID, for the app's own work queue."""
    reply: StartAck | None = None
    """The answer (sent after the commit); None when the forwarded start answers."""
    refused: str = ""


def decide_restart(
    message: Control,
    delivery: Delivery,
    *,
    live: Live | None,
    app_id: str,
    run_id: str,
    new_run_started: bool,
    encode: Encode,
    now: float,
) -> RestartDecision:
    """Decide ``message`` (a restart control) given the stored instance ``live``.

    ``new_run_started``: an earlier restart of the same batch already started a new run
    (which is running). ``now`` is the wall clock (epoch seconds), for the forwarded start's
    answer deadline.
    """
    source = message.instance_id
    target = message.new_instance_id or source
    first = (
        next((e for e in live.history if isinstance(e, WorkflowStarted)), None) if live else None
    )
    if live is None or first is None:
        return _refuse(target, f"no workflow {source!r} on app {app_id!r} to restart", "not_found")
    # The client's request ID (unguessable) recognises a redelivered restart as the same one.
    request_id = delivery.correlation_id or delivery.message_id
    if target != source:
        start = StartWorkflow(target, first.name, app_id, first.input, request_id=request_id)
        within = max(delivery.answer_by - now, 0.1) if delivery.answer_by else None
        forward = Outgoing(
            app_id,
            QueueKind.WORK,
            encode(start),
            reply_to=delivery.reply_to,
            correlation_id=delivery.correlation_id,
            answer_within=within if delivery.reply_to else None,
        )
        return RestartDecision(forward=forward)
    status = "RUNNING" if new_run_started else live.state.status.value
    if new_run_started or not live.state.status.is_terminal:
        return _refuse(
            target,
            f"workflow instance {source!r} on app {app_id!r} has not finished (status "
            f"{status}): terminate it first, or restart it under a new instance ID",
            "not_finished",
        )
    started = WorkflowStarted(
        first.name, source, app_id, first.input, None, request_id, run_id=run_id
    )
    return RestartDecision(started=started, reply=StartAck(target, True))


def new_run_base(state: WorkflowState) -> WorkflowState:
    """The state a same-ID restart's new run is built on: blank, but with the old run's
    version and run ID, which its commit is checked against (and which it replaces)."""
    blank = blank_state(state.instance_id, state.app_id, state.version)
    return dataclasses.replace(blank, run_id=state.run_id)


def _refuse(target: str, reason: str, code: str) -> RestartDecision:
    return RestartDecision(reply=StartAck(target, False, reason, code), refused=reason)
