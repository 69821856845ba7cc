"""Sorting a batch's messages into what its step applies, answers and side work.

A start is decided by :func:`~flowmesh.runtime._admission.decide_start`; a message for an
instance that does not exist yet is held in the store until its start arrives; a result for
another run or attempt is dropped; a result from a sender the policy refuses goes to the
step's refusals. What remains becomes history events for the engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowmesh.codec import Codec
from flowmesh.engine import StepOutcome, WorkflowExecution
from flowmesh.model import (
    ActivityResult,
    Control,
    ControlAction,
    HistoryEvent,
    Message,
    RaiseEvent,
    StartWorkflow,
    TaskNote,
    WorkflowStarted,
)
from flowmesh.runtime._admission import Existing, decide_start
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._leases import TaskBookkeeping
from flowmesh.runtime._live import Inbound, Live, StaleCache
from flowmesh.runtime._restart import decide_restart
from flowmesh.runtime._translate import message_to_event
from flowmesh.security import SenderPolicy
from flowmesh.store import HeldMessage, WorkflowStore
from flowmesh.transport import Delivery, Outgoing


@dataclass(slots=True)
class StepInput:
    """What one batch contributes to a step, sorted by :meth:`StepSorter.sort`."""

    events: list[HistoryEvent]
    origins: dict[int, Delivery] = field(default_factory=dict)
    """id(event) -> the delivery it came from (to dead-letter what the engine refuses)."""
    to_ack: list[Delivery] = field(default_factory=list)
    replies: list[tuple[Delivery, Message]] = field(default_factory=list)
    send_now: list[Outgoing] = field(default_factory=list)
    """Answers to parents outside any commit (a child ID taken, a finished child's result)."""
    purge: Control | None = None
    book: TaskBookkeeping = field(default_factory=TaskBookkeeping)
    controls: list[Delivery] = field(default_factory=list)
    """Controls sent with ``reply_to``: answered with the state the step leaves."""
    new_run: bool = False
    """A restart under the same ID starts a new run, which replaces the history."""


class StepSorter:
    """Sorts the batches of one app's orchestrator (see the module docstring)."""

    def __init__(
        self,
        app_id: str,
        *,
        store: WorkflowStore,
        codec: Codec,
        clock: Clock,
        hold_unknown_for: float,
        on_held: Callable[[datetime], None],
        senders: SenderPolicy | None,
        log: Any,
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._codec = codec
        self._clock = clock
        self._hold_unknown_for = hold_unknown_for
        self._on_held = on_held
        self._senders = senders
        self._log = log

    async def sort(
        self,
        instance_id: str,
        live: Live | None,
        checked: list[Inbound],
        held: list[Message],
        step: StepInput,
        *,
        from_cache: bool,
    ) -> None:
        """Turn a batch's messages into the step's events, answers and side work."""
        started: WorkflowStarted | None = None
        run_id = live.state.run_id if live is not None else ""
        terminated_early = _held_terminate(held)
        for item in checked:
            message = item.message
            step.to_ack.append(item.delivery)
            if isinstance(message, Control) and message.action is ControlAction.RESTART:
                started, run_id = self._restart(message, item, live, step, (started, run_id))
                continue
            if isinstance(message, Control) and item.delivery.reply_to:
                step.controls.append(item.delivery)
            if isinstance(message, StartWorkflow):
                created = self._start(
                    message,
                    item,
                    live=live,
                    started=started,
                    terminated_early=terminated_early,
                    held=held,
                    step=step,
                )
                if created is not None:
                    started, run_id = created, created.run_id
                continue
            if isinstance(message, Control) and message.action is ControlAction.PURGE:
                step.purge = message
                continue
            if isinstance(message, TaskNote) and self._answered_stop(
                message, item, live, started, run_id=run_id, step=step, from_cache=from_cache
            ):
                continue
            if self._other_run(message, run_id, from_cache=from_cache):
                continue
            if step.book.add(message):
                continue
            if live is None and started is None:
                await self._hold_or_drop(instance_id, item)
                continue
            if isinstance(message, ActivityResult) and _wrong_attempt(live, message):
                # Each attempt has its own seq, so a mismatch is a forged or corrupt result.
                self._log.warning(
                    "activity result for another attempt dropped",
                    seq=message.seq,
                    attempt=message.attempt,
                )
                continue
            event = message_to_event(message)
            if event is not None:
                step.events.append(event)
                step.origins[id(event)] = item.delivery

    def _start(
        self,
        message: StartWorkflow,
        item: Inbound,
        *,
        live: Live | None,
        started: WorkflowStarted | None,
        terminated_early: Control | None,
        held: list[Message],
        step: StepInput,
    ) -> WorkflowStarted | None:
        """Admit or answer one start (``_admission.decide_start``); the new run's
        ``WorkflowStarted`` if it creates the instance, followed by the held messages."""
        decision = decide_start(
            message,
            app_id=self._app_id,
            existing=_existing(live, started),
            terminated_early=terminated_early,
            run_id=uuid.uuid4().hex,
            encode=self._codec.encode_message,
        )
        if decision.refused:
            self._log.warning("start refused", reason=decision.refused)
        if decision.started is not None:
            step.events.append(decision.started)
            step.events.extend(self._held_events(held))
        if decision.reply is not None and item.delivery.reply_to:
            step.replies.append((item.delivery, decision.reply))
        if decision.send is not None:
            step.send_now.append(decision.send)
        return decision.started

    def _restart(
        self,
        message: Control,
        item: Inbound,
        live: Live | None,
        step: StepInput,
        current: tuple[WorkflowStarted | None, str],
    ) -> tuple[WorkflowStarted | None, str]:
        """Decide a restart (``_restart.decide_restart``); returns the run that later messages
        of the batch belong to: the new one if it restarts the instance under its own ID,
        else ``current`` (the ``WorkflowStarted`` of a run this batch created, and the run)."""
        decision = decide_restart(
            message,
            item.delivery,
            live=live,
            app_id=self._app_id,
            run_id=uuid.uuid4().hex,
            new_run_started=step.new_run,
            encode=self._codec.encode_message,
            now=time.time(),
        )
        if decision.refused:
            self._log.warning("restart refused", reason=decision.refused)
        if decision.started is not None:
            # What came before it in the batch was for the finished run: dropped, as it was.
            del step.events[1:]
            step.events.append(decision.started)
            step.new_run = True
            self._log.info("instance restarted", new_run=decision.started.run_id)
        if decision.forward is not None:
            step.send_now.append(decision.forward)
        if decision.reply is not None and item.delivery.reply_to:
            step.replies.append((item.delivery, decision.reply))
        if decision.started is None:
            return current
        return decision.started, decision.started.run_id

    @staticmethod
    def _answered_stop(
        note: TaskNote,
        item: Inbound,
        live: Live | None,
        started: WorkflowStarted | None,
        *,
        run_id: str,
        step: StepInput,
        from_cache: bool,
    ) -> bool:
        """A worker asks (``reply_to``) about a task that has ended: answer "stop", so it
        stops retrying a task nobody waits for any more. True if answered."""
        if not item.delivery.reply_to:
            return False
        stop = _stop_answer(live, started, note, run_id)
        if stop is None:
            return False
        if from_cache:
            raise StaleCache  # only the store can say a task has ended
        step.replies.append((item.delivery, stop))
        return True

    def _other_run(self, message: Message, run_id: str, *, from_cache: bool) -> bool:
        """True if ``message`` names another run than ``run_id`` (it is dropped); raises
        StaleCache first if the run came from the cache, which may hold an older one."""
        message_run = getattr(message, "run_id", "")
        if not message_run or message_run == run_id:
            return False
        if from_cache:
            raise StaleCache
        self._log.info(
            "message for another run dropped",
            kind=type(message).__name__,
            run_id=message_run,
            current_run=run_id,
        )
        return True

    def refused(
        self,
        outcome: StepOutcome,
        origins: dict[int, Delivery],
        refusals: list[tuple[Delivery, str]],
        to_ack: list[Delivery],
    ) -> tuple[str, ...]:
        """Move the deliveries of events the engine refused from ``to_ack`` to
        ``refusals``; returns the reasons, recorded in the instance's state."""
        reasons = []
        for event, reason in outcome.refused:
            self._log.error("message refused", reason=reason)
            reasons.append(reason)
            delivery = origins.get(id(event))
            if delivery is None:  # held messages are events and controls, never refused
                continue
            to_ack[:] = [d for d in to_ack if d is not delivery]
            refusals.append((delivery, reason))
        return tuple(reasons)

    async def _hold_or_drop(self, instance_id: str, item: Inbound) -> None:
        """A message for an instance that does not exist: an event or control (but purge)
        may precede its start, so it is held until the instance is created (or dead-lettered
        past the holding bound); anything else belongs to a purged or unknown run."""
        if not isinstance(item.message, RaiseEvent | Control) or item.delivery.reply_to:
            # A control whose sender waits for the answer is answered "no such instance"
            # instead: held, it would turn a mistyped ID into a tombstone.
            self._log.warning(
                "message for unknown instance dropped", kind=type(item.message).__name__
            )
            return
        message = HeldMessage(
            item.delivery.body,
            self._clock.now(),
            item.delivery.user_id,
            item.delivery.message_id,
        )
        if not await self._store.hold(instance_id, message):
            raise StaleCache  # created meanwhile: apply it to the instance instead
        self._on_held(message.held_at)
        self._log.info(
            "message held until the instance exists",
            kind=type(item.message).__name__,
            hold_for=self._hold_unknown_for,
        )

    def _held_events(self, held: list[Message]) -> list[HistoryEvent]:
        """The events of messages held before the instance existed, in arrival order."""
        events = [e for e in map(message_to_event, held) if e is not None]
        if events:
            self._log.info("held messages applied", count=len(events))
        return events

    def check_senders(
        self, live: Live | None, batch: list[Inbound], refusals: list[tuple[Delivery, str]]
    ) -> list[Inbound]:
        """The batch without messages whose verified sender may not send them for this
        instance (a result from another app than the task's, ...), which go to ``refusals``."""
        refusals.clear()
        if self._senders is None or live is None:
            return batch
        task_apps = _task_apps(live.execution)
        children = live.execution.child_instances()
        accepted = []
        for item in batch:
            reason = self._senders.refuse_for_instance(
                item.delivery.user_id,
                item.message,
                task_apps=task_apps,
                child_apps=children,
                parent=live.state.parent,
            )
            if reason is None:
                accepted.append(item)
            else:
                self._log.error(
                    "message refused", instance_id=live.state.instance_id, reason=reason
                )
                refusals.append((item.delivery, f"sender refused: {reason}"))
        return accepted


def _stop_answer(
    live: Live | None, started: WorkflowStarted | None, note: TaskNote, run_id: str
) -> TaskNote | None:
    """The answer to a worker's ``TaskNote`` about a task that is no longer wanted (the note
    back, saying why), or None if it still is (or this step cannot tell: the instance is
    being created by the same batch)."""
    if live is None:
        if started is not None:
            return None
        why = f"instance {note.instance_id!r} does not exist (never started, or purged)"
    elif note.run_id and note.run_id != run_id:
        why = "the task belongs to an earlier run of the instance"
    elif live.state.status.is_terminal:
        why = f"the workflow has ended ({live.state.status.value})"
    elif (action := live.execution.open_activity(note.seq)) is None or (
        action.attempt != note.attempt
    ):
        why = "the task is no longer open (answered, timed out, retried or cancelled)"
    else:
        return None
    return TaskNote(note.instance_id, note.seq, note.attempt, why, note.run_id)


def _held_terminate(held: list[Message]) -> Control | None:
    """A terminate held before the instance existed (it refuses the start), if any."""
    return next(
        (m for m in held if isinstance(m, Control) and m.action is ControlAction.TERMINATE),
        None,
    )


def _wrong_attempt(live: Live | None, result: ActivityResult) -> bool:
    action = live.execution.open_activity(result.seq) if live else None
    return action is not None and action.attempt != result.attempt


def _task_apps(execution: WorkflowExecution) -> dict[int, str]:
    """Open activity and child seqs -> the app they were sent to ("" for timers)."""
    return {task.seq: task.app_id for task in execution.waiting_on() if task.kind != "event"}


def _existing(live: Live | None, started: WorkflowStarted | None) -> Existing | None:
    """What a start finds: the stored instance, or one a start of this batch created."""
    if live is not None:
        first = next((e for e in live.history if isinstance(e, WorkflowStarted)), None)
        return Existing(live.state, first)
    return Existing(None, started) if started is not None else None
