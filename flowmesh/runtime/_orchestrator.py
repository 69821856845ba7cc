"""The orchestrator: advances the workflows an app hosts.

Every message that concerns a hosted instance (start, activity/child results, due timers,
events, control) lands in that instance's mailbox. One task per instance at a time (that of
the delivery that found no step running) drains it, taking the whole mailbox for one step:
replay (or reuse the cached execution), apply the new events, commit history + state +
outbox + timers atomically with a version check, publish the outbox, then ack the
deliveries. Batching is what keeps a fan-in of hundreds of results cheap, and one drain per
instance means this replica never races itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from flowmesh._app import App
from flowmesh._errors import (
    FlowmeshError,
    SerializationError,
    StoreError,
    TransportError,
    VersionConflictError,
)
from flowmesh.codec import Codec
from flowmesh.engine import StepOutcome, WorkflowExecution
from flowmesh.model import (
    ActivityResult,
    ChildWorkflowScheduled,
    CompleteWorkflow,
    Control,
    ControlAction,
    Describe,
    FailureDetails,
    HistoryEvent,
    Message,
    ParentRef,
    PendingTask,
    RaiseEvent,
    StartAck,
    StartWorkflow,
    StateReply,
    StepStarted,
    TaskNote,
    TimerFired,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
)
from flowmesh.runtime._admission import Existing, decide_start
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._leases import (
    BookkeepingEffects,
    TaskBookkeeping,
    apply_bookkeeping,
    lease_timers_done,
    with_details,
)
from flowmesh.runtime._log import get_logger
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._outbox import OutboxClearer, publish_outbox
from flowmesh.runtime._redelivery import republish, republish_later, retry_delay
from flowmesh.runtime._translate import (
    build_commit,
    build_state,
    command_messages,
    message_to_event,
    new_timers,
    open_timer_seqs,
)
from flowmesh.security import SenderPolicy
from flowmesh.store import Commit, HeldMessage, Waiter, WorkflowStore
from flowmesh.transport import Delivery, Outgoing, QueueKind, Transport

HISTORY_LIMIT_ERROR = "flowmesh.HistoryLimitExceeded"
"""``FailureDetails.error_type`` of a run failed for reaching ``max_history_events``."""

REFUSALS_KEPT = 10
"""Refused messages an instance's state lists (``WorkflowState.refusals``), latest last."""


class _StaleCache(Exception):  # noqa: N818 - internal signal, never escapes the orchestrator
    """The cached execution may be behind the store: re-run the step from a fresh load."""


class _NotHere(Exception):  # noqa: N818 - internal signal, never escapes the orchestrator
    """This replica does not register the instance's workflow: leave its messages to one
    that does (a rolling deploy). STALLED is only for code that has the workflow and
    diverges from its history."""


@dataclass(slots=True)
class _Inbound:
    delivery: Delivery
    message: Message
    done: asyncio.Future[None]


@dataclass(slots=True)
class _StepInput:
    """What one batch contributes to a step, sorted by :meth:`Orchestrator._sort`."""

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


@dataclass(slots=True)
class _Live:
    """A cached execution: valid while the store's version equals ``version``."""

    execution: WorkflowExecution
    state: WorkflowState
    history: list[HistoryEvent] = field(default_factory=list)


class Orchestrator:
    """Runs workflow steps for one app; safe to run in any number of replicas."""

    def __init__(
        self,
        app: App,
        *,
        store: WorkflowStore,
        transport: Transport,
        codec: Codec,
        clock: Clock,
        options: WorkerOptions,
        on_timer_added: Callable[[datetime], None] = lambda _: None,
        on_held: Callable[[datetime], None] = lambda _: None,
        crash: Callable[[str], None] = lambda _: None,
        clearer: OutboxClearer | None = None,
        senders: SenderPolicy | None = None,
    ) -> None:
        self._app = app
        self._store = store
        self._transport = transport
        self._codec = codec
        self._clock = clock
        self._options = options
        self._on_timer_added = on_timer_added
        self._on_held = on_held
        self._crash = crash
        self._clearer = clearer
        self._senders = senders
        self._mailboxes: dict[str, list[_Inbound]] = {}
        self._draining: set[str] = set()
        """Instances whose mailbox a task is draining (one step at a time per instance)."""
        self._cache: OrderedDict[str, _Live] = OrderedDict()
        self._log = get_logger(app_id=app.app_id)

    @property
    def busy(self) -> bool:
        """True while any step is in progress."""
        return bool(self._draining)

    # -- entry points ----------------------------------------------------------------------------

    async def handle(self, delivery: Delivery, message: Message) -> None:
        """Process one decoded message for a hosted instance; returns once it is settled."""
        if isinstance(message, Describe):
            await self._describe(delivery, message)
            return
        if isinstance(message, StartWorkflow) and message.name not in self._app.workflows:
            # A replica of a newer (or older) deployment may have the workflow: the start
            # waits (with backoff) for it instead of being refused and lost.
            await self._retry_later(
                delivery,
                message,
                f"workflow {message.name!r} is not registered on this replica of app "
                f"{self._app.app_id!r}",
            )
            return
        instance_id = getattr(message, "instance_id", "")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mailboxes.setdefault(instance_id, []).append(_Inbound(delivery, message, done))
        if instance_id in self._draining:
            await done  # the instance's drain will take it with its next batch
            return
        # No step runs for this instance: this delivery's task drains the mailbox itself (a
        # task of its own per step would cost more than the step's bookkeeping). Each
        # delivery runs in a task of its own, so no other work waits behind this one.
        self._draining.add(instance_id)
        await self._drain(instance_id)

    async def _drain(self, instance_id: str) -> None:
        try:
            while batch := self._mailboxes.pop(instance_id, None):
                with structlog.contextvars.bound_contextvars(instance_id=instance_id):
                    await self._run_batch(instance_id, batch)
        finally:
            self._draining.discard(instance_id)

    async def _run_batch(self, instance_id: str, batch: list[_Inbound]) -> None:
        try:
            await self._advance(instance_id, batch)
        except Exception as exc:
            await self._step_failed(instance_id, batch, exc)
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)

    async def _retry_transient(
        self, instance_id: str, batch: list[_Inbound], exc: Exception
    ) -> None:
        """The store or broker failed the step: republish the batch after a delay growing
        with its messages' attempts (capped at ``transient_retry_max_backoff``)."""
        attempt = max(item.delivery.attempt for item in batch)
        delay = retry_delay(attempt, first=0.25, cap=self._options.transient_retry_max_backoff)
        self._log.warning(
            "step retried later",
            instance_id=instance_id,
            error=str(exc),
            attempt=attempt,
            retry_in=delay,
        )
        # Real time, not the runner's clock: an outage is real, and a virtual clock only moves
        # while no delivery is in flight.
        await asyncio.sleep(delay)
        await asyncio.gather(
            *(
                republish(self._transport, item.delivery, self._app.app_id, _queue_of(item.message))
                for item in batch
            ),
            return_exceptions=True,
        )

    async def _step_failed(self, instance_id: str, batch: list[_Inbound], exc: Exception) -> None:
        """Settle the deliveries of a step that failed with ``exc`` (nothing was acked)."""
        self._cache.pop(instance_id, None)
        if isinstance(exc, _NotHere):
            # This replica lacks the instance's workflow (an older deployment during a
            # rolling update): leave every message of the instance to a replica that has it.
            await asyncio.gather(
                *(self._retry_later(i.delivery, i.message, str(exc)) for i in batch),
                return_exceptions=True,
            )
            return
        if not isinstance(exc, StoreError | TransportError | OSError):
            # The step itself fails (a state grown past the size limit, ...): one message
            # may be to blame, and it must not take its siblings down with it.
            await self._isolate(instance_id, batch, exc)
            return
        # Store or broker trouble, or other replicas that kept committing first
        # (VersionConflictError is a StoreError): not the messages' fault, so they never
        # count as poison. Retried later by republishing with a growing delay (never a
        # requeue loop, which the broker's delivery limit would end).
        await self._retry_transient(instance_id, batch, exc)

    async def _isolate(self, instance_id: str, batch: list[_Inbound], exc: Exception) -> None:
        """Bisect a batch whose step failed for a reason of its own: each half is stepped
        alone (and acked if it commits), so in the end only a message whose step fails by
        itself is requeued, and past ``max_deliveries`` dead-lettered with the reason."""
        if len(batch) == 1:
            await self._poisoned(instance_id, batch[0], exc)
            return
        self._log.warning(
            "step failed; stepping its messages apart",
            instance_id=instance_id,
            messages=len(batch),
            error=str(exc),
        )
        middle = len(batch) // 2
        for part in (batch[:middle], batch[middle:]):
            try:
                await self._advance(instance_id, part)
            except Exception as part_exc:
                await self._step_failed(instance_id, part, part_exc)

    async def _poisoned(self, instance_id: str, item: _Inbound, exc: Exception) -> None:
        """One message whose step fails by itself: requeued (the failure may pass) until it
        was delivered ``max_deliveries`` times, then dead-lettered and recorded in the
        instance's refusals."""
        count = item.delivery.delivery_count
        kind = type(item.message).__name__
        if count < self._options.max_deliveries:
            self._log.warning(
                "step of one message failed; requeued", kind=kind, deliveries=count, error=str(exc)
            )
            await item.delivery.requeue()
            return
        reason = f"{kind} failed the step of {instance_id} {count} times by itself: {exc}"
        self._log.error("message refused", instance_id=instance_id, reason=reason)
        await self._transport.dead_letter(item.delivery, self._app.app_id, reason)
        await self._record_refusal(instance_id, reason)

    async def _record_refusal(self, instance_id: str, reason: str) -> None:
        """Add ``reason`` to the instance's ``refusals`` (``describe()``) in a state-only
        commit; best effort, the dead-lettered copy carries the reason too."""
        for _ in range(self._options.conflict_retries):
            try:
                state = await self._store.load_state(instance_id)
                if state is None:
                    return
                refusals = (*state.refusals, reason)[-REFUSALS_KEPT:]
                new = dataclasses.replace(state, version=state.version + 1, refusals=refusals)
                await self._store.commit(
                    Commit(instance_id, state.version, new, expected_run_id=state.run_id)
                )
            except VersionConflictError:
                continue
            except FlowmeshError as exc:
                self._log.warning("recording a refusal failed", error=str(exc))
                return
            self._cache.pop(instance_id, None)  # its version is behind now
            return

    # -- one step --------------------------------------------------------------------------------

    async def _advance(self, instance_id: str, batch: list[_Inbound]) -> None:
        use_cache = True
        base_version = 0
        refusals: list[tuple[Delivery, str]] = []
        for conflicts in range(self._options.conflict_retries):
            if conflicts > 1:
                # Replicas stepping one instance at once take turns: a random pause, growing
                # with each loss, lets the one that loaded last get its commit in.
                await asyncio.sleep(random.uniform(0, min(0.001 * 2**conflicts, 0.1)))
            try:
                settled = await self._try_step(
                    instance_id,
                    batch,
                    use_cache=use_cache,
                    refusals=refusals,
                    base_version=base_version,
                )
            except VersionConflictError as conflict:
                # A purged instance keeps its version: a new run continues the numbering.
                base_version = conflict.stored_version
                self._cache.pop(instance_id, None)
                use_cache = False
                continue
            except _StaleCache:
                self._cache.pop(instance_id, None)
                use_cache = False
                continue
            self._crash("after_publish")
            if len(settled) == 1 and not refusals:  # the common case: no task per ack
                await settled[0].ack()
                return
            await asyncio.gather(
                *(d.ack() for d in settled),
                *(
                    self._transport.dead_letter(d, self._app.app_id, f"refused: {reason}")
                    for d, reason in refusals
                ),
            )
            return
        # A StoreError: the deliveries are retried later and never count as poison.
        raise VersionConflictError(
            f"gave up on {instance_id} for now after {self._options.conflict_retries} "
            "conflicts with other replicas",
            stored_version=base_version,
        )

    async def _try_step(
        self,
        instance_id: str,
        batch: list[_Inbound],
        *,
        use_cache: bool,
        refusals: list[tuple[Delivery, str]],
        base_version: int,
    ) -> list[Delivery]:
        """Run one step; returns the deliveries to ack (and fills ``refusals`` with those to
        dead-letter: a sender that may not send them (:meth:`_check_senders`), a result for a
        task that was never dispatched).

        A cached execution is only proven current by a successful commit. So when a step
        based on the cache would commit nothing (results dropped as duplicates, a start
        refused, a purge), it raises :class:`_StaleCache` to be re-run on fresh state: another
        replica may have advanced the instance, and acking on stale state would lose results.
        """
        live = self._cache.get(instance_id) if use_cache else None
        from_cache = live is not None
        starts = [i for i in batch if isinstance(i.message, StartWorkflow)]
        # A batch of starts for an unknown instance skips the load: the commit's version check
        # (expected 0) proves the instance is new, and a conflict re-runs the step with a load.
        assume_new = use_cache and len(starts) == len(batch)
        if live is None and not assume_new:
            live = await self._load(instance_id)
        if live is not None and live.state.name not in self._app.workflows:
            raise _NotHere(
                f"workflow {live.state.name!r} of instance {instance_id!r} is not registered "
                f"on this replica of app {self._app.app_id!r}"
            )
        # Messages that arrived before the instance existed, applied by the step creating it.
        held: list[Message] = []
        if live is None and starts and not assume_new:
            held = [
                self._codec.decode_message(h.body, app_id=self._app.app_id)
                for h in await self._store.held(instance_id)
            ]
        now = self._clock.now()
        step = _StepInput([StepStarted(now)])
        await self._sort(
            instance_id,
            live,
            self._check_senders(live, batch, refusals),
            held,
            step,
            from_cache=from_cache,
        )
        events, origins, to_ack, replies = step.events, step.origins, step.to_ack, step.replies
        send_now, purge, book = step.send_now, step.purge, step.book

        refused = any(isinstance(r, StartAck) and not r.created for _, r in replies)
        if from_cache and (
            purge is not None or refused or send_now or (len(events) == 1 and not book)
        ):
            raise _StaleCache
        if send_now:
            # Answers to parents (a duplicate child ID, a child already finished) are not part
            # of any commit: publish them (confirmed) before the start is acked.
            await self._transport.publish(send_now)
        if purge is not None:
            await self._purge(instance_id, live, purge)
            # Only a finished instance is purged; any other keeps its state.
            kept = live.state if live and not live.state.status.is_terminal else None
            await self._send_replies(_state_replies(step.controls, instance_id, kept))
            return to_ack
        if len(events) == 1 and (not book or live is None):
            answers = _state_replies(step.controls, instance_id, live.state if live else None)
            await self._send_replies([*replies, *answers])
            return to_ack

        if live is None:
            blank = _blank_state(instance_id, self._app.app_id, base_version)
            live = _Live(self._new_execution(), blank)
        elif (full := self._history_full(live)) is not None:
            # The batch is not applied (its deliveries are acked with the failure committed).
            live.execution.fail(full)
            events = [StepStarted(now)]
        outcome = live.execution.step(events)
        effects = apply_bookkeeping(
            book, live.execution, live.state.waiting_on, instance_id=instance_id, now=now
        )
        if from_cache and (outcome.dropped or effects.stale or not (outcome.changed or effects)):
            raise _StaleCache
        refused_now = self._refused(outcome, origins, refusals, to_ack)
        state = (
            await self._commit(
                instance_id, live, outcome, now, effects, refused=refused_now, take_held=len(held)
            )
            if outcome.changed or effects or refused_now
            else live.state
        )
        # Only now, committed: a command sent after a control's answer applies after it.
        await self._send_replies([*replies, *_state_replies(step.controls, instance_id, state)])
        return to_ack

    async def _sort(
        self,
        instance_id: str,
        live: _Live | None,
        checked: list[_Inbound],
        held: list[Message],
        step: _StepInput,
        *,
        from_cache: bool,
    ) -> None:
        """Turn a batch's messages into the step's events, answers and side work."""
        started: WorkflowStarted | None = None
        run_id = live.state.run_id if live is not None else ""
        terminated_early = next(
            (m for m in held if isinstance(m, Control) and m.action is ControlAction.TERMINATE),
            None,
        )
        for item in checked:
            message = item.message
            step.to_ack.append(item.delivery)
            if isinstance(message, Control) and item.delivery.reply_to:
                step.controls.append(item.delivery)
            if isinstance(message, StartWorkflow):
                decision = decide_start(
                    message,
                    app_id=self._app.app_id,
                    existing=_existing(live, started),
                    terminated_early=terminated_early,
                    run_id=uuid.uuid4().hex,
                    encode=self._codec.encode_message,
                )
                if decision.refused:
                    self._log.warning("start refused", reason=decision.refused)
                if decision.started is not None:
                    started = decision.started
                    run_id = started.run_id
                    step.events.append(started)
                    step.events.extend(self._held_events(held))
                if decision.reply is not None and item.delivery.reply_to:
                    step.replies.append((item.delivery, decision.reply))
                if decision.send is not None:
                    step.send_now.append(decision.send)
                continue
            if isinstance(message, Control) and message.action is ControlAction.PURGE:
                step.purge = message
                continue
            if isinstance(message, TaskNote) and item.delivery.reply_to:
                stop = _stop_answer(live, started, message, run_id)
                if stop is not None:
                    if from_cache:
                        raise _StaleCache  # only the store can say a task has ended
                    # The worker asks: it stops retrying a task nobody waits for any more.
                    step.replies.append((item.delivery, stop))
                    continue
            message_run = getattr(message, "run_id", "")
            if message_run and message_run != run_id:
                if from_cache:
                    raise _StaleCache  # the cache may hold an older run: check the store
                self._log.info(
                    "message for another run dropped",
                    kind=type(message).__name__,
                    run_id=message_run,
                    current_run=run_id,
                )
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

    def _refused(
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

    async def _hold_or_drop(self, instance_id: str, item: _Inbound) -> None:
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
            raise _StaleCache  # created meanwhile: apply it to the instance instead
        self._on_held(message.held_at)
        self._log.info(
            "message held until the instance exists",
            kind=type(item.message).__name__,
            hold_for=self._options.hold_unknown_for,
        )

    def _held_events(self, held: list[Message]) -> list[HistoryEvent]:
        """The events of messages held before the instance existed, in arrival order."""
        events = [e for e in map(message_to_event, held) if e is not None]
        if events:
            self._log.info("held messages applied", count=len(events))
        return events

    def _check_senders(
        self, live: _Live | None, batch: list[_Inbound], refusals: list[tuple[Delivery, str]]
    ) -> list[_Inbound]:
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

    async def _commit(
        self,
        instance_id: str,
        live: _Live,
        outcome: StepOutcome,
        now: datetime,
        effects: BookkeepingEffects,
        *,
        refused: tuple[str, ...] = (),
        take_held: int = 0,
    ) -> WorkflowState:
        """Commit the step and publish its outbox; returns the committed state."""
        execution = live.execution
        history = live.history
        append = list(outcome.append)
        replace = False
        commands = list(outcome.commands)
        continued = next(
            (
                c
                for c in commands
                if isinstance(c, CompleteWorkflow) and c.status is WorkflowStatus.CONTINUED_AS_NEW
            ),
            None,
        )
        # A timer leaves the store when its firing is recorded (claims only postpone it).
        cancel = list(outcome.cancelled_timers)
        cancel.extend(e.seq for e in append if isinstance(e, TimerFired))
        ended = outcome.status.is_terminal or continued is not None
        cancel.extend(effects.cancel_timers)
        cancel.extend(lease_timers_done(append, history, ended=ended))
        if outcome.status.is_terminal or continued is not None:
            cancel.extend(open_timer_seqs([*history, *append]))
        if continued is not None:
            # Start the next run right away, in the same atomic commit.
            restart: list[HistoryEvent] = [
                StepStarted(now),
                WorkflowStarted(
                    execution.name,
                    instance_id,
                    self._app.app_id,
                    continued.output,
                    execution.parent,
                    first_seq=execution.next_seq,
                    run_id=uuid.uuid4().hex,
                    seen_event_ids=execution.recent_event_ids,
                ),
                *continued.carried_events,
            ]
            execution = self._new_execution()
            next_outcome = execution.step(restart)
            append = list(next_outcome.append)
            commands = [c for c in commands if c is not continued] + list(next_outcome.commands)
            outcome = next_outcome
            replace = True
            history = []
        try:
            messages = command_messages(
                [*commands, *effects.redispatch],
                instance_id=instance_id,
                app_id=self._app.app_id,
                run_id=execution.run_id,
                parent=execution.parent,
                encode=self._codec.encode_message,
            )
        except SerializationError as exc:
            # Defensive: the engine checks values at the call site, so this means a size limit.
            raise FlowmeshError(f"cannot encode a message of {instance_id}: {exc}") from exc
        version = live.state.version + 1
        state = build_state(
            live.state if live.state.run_id else None,
            outcome,
            instance_id=instance_id,
            app_id=self._app.app_id,
            name=execution.name,
            input_value=execution.input,
            parent=execution.parent,
            now=now,
            version=version,
            history_length=len(history) + len(append),
            run_id=execution.run_id,
            waiting_on=with_details(outcome.waiting_on, live.state.waiting_on, effects.details),
            refusals=(*live.state.refusals, *refused)[-REFUSALS_KEPT:],
        )
        timers = (*new_timers(instance_id, execution.run_id, commands), *effects.add_timers)
        commit = build_commit(
            instance_id=instance_id,
            expected_version=live.state.version,
            expected_run_id=live.state.run_id,
            state=state,
            append=append,
            replace_history=replace,
            messages=messages,
            timers=timers,
            cancel_timers=cancel,
            # The previous step's published entries, if their batched clean-up has not run yet.
            clear_outbox=self._clearer.pending(instance_id) if self._clearer else (),
            take_held=take_held,
            # Result waiters are answered once the instance finishes or stalls; taking them in
            # the same script leaves no window for one to be added and missed.
            take_waiters=state.status.ends_waiting,
        )
        self._crash("before_commit")
        waiters = await self._store.commit(commit)
        self._crash("after_commit")
        if self._clearer is not None and commit.clear_outbox:
            self._clearer.cleared(instance_id, commit.clear_outbox)
        history.extend(append)  # in place: copying it every step would be O(n^2) over a life
        self._remember(instance_id, _Live(execution, state, history))
        for timer in timers:
            self._on_timer_added(timer.fire_at)
        self._log_transition(live.state, state)
        await publish_outbox(
            self._transport,
            self._store,
            commit.outbox,
            attempts=self._options.publish_retries,
            log=self._log,
            crash=self._crash,
            clearer=self._clearer,
        )
        if waiters:
            await self._notify_waiters(instance_id, state, waiters)
        return state

    def _history_full(self, live: _Live) -> FailureDetails | None:
        """The failure that ends a run whose history reached ``max_history_events`` (checked
        before a step, so a history exceeds the limit by at most one step's events), else None.

        Failing, not stalling: a longer history is not fixed by deploying other code, and the
        parent and waiting clients must learn the outcome. The message names the way out.
        """
        count, limit = live.state.history_length, self._options.max_history_events
        if count < limit or live.state.status.is_terminal:
            return None
        self._log.error(
            "workflow history limit reached",
            instance_id=live.state.instance_id,
            events=count,
            limit=limit,
        )
        return FailureDetails(
            HISTORY_LIMIT_ERROR,
            f"the history of {live.state.instance_id!r} has {count} events, the limit is {limit} "
            "(WorkerOptions.max_history_events): a workflow that runs indefinitely must call "
            "ctx.continue_as_new(...) to start a fresh history, or split its work into child "
            "workflows",
            non_retryable=True,
            app_id=self._app.app_id,
        )

    def _log_transition(self, before: WorkflowState, after: WorkflowState) -> None:
        if before.run_id != after.run_id:
            self._log.info("workflow started", instance_id=after.instance_id, workflow=after.name)
        if after.status is not before.status and after.status is not WorkflowStatus.RUNNING:
            self._log.info(
                "workflow " + after.status.value.lower().replace("_", " "),
                instance_id=after.instance_id,
                workflow=after.name,
                reason=after.stall_reason or _failure_shown(after.failure, self._codec),
            )
        else:
            self._log.debug("step committed", instance_id=after.instance_id, version=after.version)

    # -- loading and caching ---------------------------------------------------------------------

    def _new_execution(self) -> WorkflowExecution:
        return WorkflowExecution(
            self._resolve, logger=self._log, check_value=self._codec.check_value
        )

    def _resolve(self, name: str) -> Any:
        return self._app.workflows.get(name)

    async def _load(self, instance_id: str) -> _Live | None:
        """Replay the instance from the store (None if it does not exist)."""
        record = await self._store.load(instance_id)
        if record is None:
            return None
        execution = self._new_execution()
        execution.replay(record.history)
        return _Live(execution, record.state, list(record.history))

    def _remember(self, instance_id: str, live: _Live) -> None:
        if live.state.status.is_terminal:
            self._cache.pop(instance_id, None)
            return
        self._cache[instance_id] = live
        self._cache.move_to_end(instance_id)  # least recently stepped instances go first
        while len(self._cache) > self._options.execution_cache_size:
            self._cache.popitem(last=False)

    # -- replies, purge, waiters -----------------------------------------------------------------

    async def _send_replies(self, replies: Sequence[tuple[Delivery, Message]]) -> None:
        for delivery, reply in replies:
            await self._transport.send_reply(
                delivery.reply_to,
                delivery.correlation_id,
                self._codec.encode_message(reply, app_id=self._app.app_id),
                answer_by=delivery.answer_by,  # a start's answer after its client gave up
            )

    async def _describe(self, delivery: Delivery, message: Describe) -> None:
        try:
            if message.wait:
                # The notice carries this request's correlation ID, which the client chose
                # unguessably: an answer with any other ID is not taken for it.
                waiter = Waiter(delivery.reply_to, delivery.correlation_id)
                state = await self._store.add_waiter(message.instance_id, waiter)
                if state is not None and not state.status.ends_waiting:
                    return  # answered when the instance finishes
            else:
                state = await self._store.load_state(message.instance_id)
            if state is None:
                state = await self._waiting_start_state(message.instance_id)
            else:
                problem = await self._store.publish_problem(message.instance_id)
                state = dataclasses.replace(state, publish_problem=problem) if problem else state
            if delivery.reply_to:
                reply = StateReply(message.instance_id, state)
                await self._transport.send_reply(
                    delivery.reply_to,
                    delivery.correlation_id,
                    self._codec.encode_message(reply),
                    answer_by=delivery.answer_by,
                )
        finally:
            await delivery.ack()

    async def _waiting_start_state(self, instance_id: str) -> WorkflowState | None:
        """A PENDING state for a start that waits for a replica registering its workflow
        (so ``describe()`` says why nothing runs), or None."""
        waiting = await self._store.waiting_start(instance_id)
        if waiting is None:
            return None
        name, note = waiting
        pending = PendingTask("deployment", name, self._app.app_id, detail=note)
        return WorkflowState(
            instance_id, self._app.app_id, name, WorkflowStatus.PENDING, waiting_on=(pending,)
        )

    async def _notify_waiters(
        self, instance_id: str, state: WorkflowState, waiters: Sequence[Waiter]
    ) -> None:
        body = self._codec.encode_message(StateReply(instance_id, state))
        for waiter in waiters:
            # No correlation ID: stored by a host that predates them, for a client that
            # expects the old fixed one.
            correlation_id = waiter.correlation_id or "wait:" + instance_id
            await self._transport.send_reply(waiter.address, correlation_id, body)

    async def _purge(self, instance_id: str, live: _Live | None, message: Control) -> None:
        if live is None:
            return
        if not live.state.status.is_terminal:
            self._log.warning(
                "purge refused: instance is not finished",
                instance_id=instance_id,
                status=live.state.status.value,
            )
            return
        if message.recursive:
            children = [e for e in live.history if isinstance(e, ChildWorkflowScheduled)]
            await self._transport.publish(
                [
                    Outgoing(
                        c.app_id,
                        QueueKind.REPLY,
                        self._codec.encode_message(
                            Control(c.instance_id, ControlAction.PURGE, recursive=True)
                        ),
                    )
                    for c in children
                ]
            )
        await self._store.purge(instance_id)
        self._cache.pop(instance_id, None)
        self._log.info("instance purged", instance_id=instance_id)

    async def _retry_later(self, delivery: Delivery, message: Message, reason: str) -> None:
        """Hold a delivery we cannot serve yet, then hand it to another replica: it is
        republished to the tail of its queue (a requeued message tends to come back to the
        same consumer, and counts toward the delivery limit) and acked, after a delay growing
        with the message's attempt count (a header, so it grows whichever replica retries).

        For a ``start``, the reason is noted in the store for ``describe()`` and a waiting
        client is told (on the first attempt) that its start waits."""
        attempt = delivery.attempt
        delay = retry_delay(attempt, first=1.0, cap=self._options.unknown_name_max_backoff)
        self._log.warning(
            "message waits for a deployment that registers its workflow",
            reason=reason,
            retry_in=delay,
            attempt=attempt,
        )
        start = message if isinstance(message, StartWorkflow) else None
        if start is not None:
            note = f"{reason}; the start waits for a replica that has it"
            with contextlib.suppress(FlowmeshError):  # informative only; the start is kept
                ttl = timedelta(seconds=4 * self._options.unknown_name_max_backoff)
                await self._store.note_waiting_start(start.instance_id, start.name, note, ttl)
            if delivery.reply_to and attempt == 1:
                answer = StartAck(start.instance_id, False, note, "waiting_for_deployment")
                await self._send_replies([(delivery, answer)])
        await republish_later(
            self._transport,
            self._clock,
            delivery,
            self._app.app_id,
            _queue_of(message),
            delay=delay,
        )


def _queue_of(message: Message) -> QueueKind:
    """The queue a hosted instance's message arrives on (and is republished to)."""
    return QueueKind.WORK if isinstance(message, StartWorkflow) else QueueKind.REPLY


def _stop_answer(
    live: _Live | None, started: WorkflowStarted | None, note: TaskNote, run_id: str
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


def _wrong_attempt(live: _Live | None, result: ActivityResult) -> bool:
    action = live.execution.open_activity(result.seq) if live else None
    return action is not None and action.attempt != result.attempt


def _task_apps(execution: WorkflowExecution) -> dict[int, str]:
    """Open activity and child seqs -> the app they were sent to ("" for timers)."""
    return {task.seq: task.app_id for task in execution.waiting_on() if task.kind != "event"}


def _failure_shown(failure: FailureDetails | None, codec: Codec) -> str | None:
    """A failure for the log: its message, or only its type under payload encryption."""
    if failure is None:
        return None
    return failure.message if codec.payload_codec is None else failure.error_type


def _state_replies(
    controls: Sequence[Delivery], instance_id: str, state: WorkflowState | None
) -> list[tuple[Delivery, Message]]:
    """Answers to controls sent with ``reply_to``: the state the step left (None: no such
    instance, or purged)."""
    return [(delivery, StateReply(instance_id, state)) for delivery in controls]


def _blank_state(instance_id: str, app_id: str, version: int) -> WorkflowState:
    """The state an instance is created from (``version``: that of a purged earlier run)."""
    return WorkflowState(
        instance_id=instance_id,
        app_id=app_id,
        name="",
        status=WorkflowStatus.PENDING,
        version=version,
    )


def _existing(live: _Live | None, started: WorkflowStarted | None) -> Existing | None:
    """What a start finds: the stored instance, or one a start of this batch created."""
    if live is not None:
        first = next((e for e in live.history if isinstance(e, WorkflowStarted)), None)
        return Existing(live.state, first)
    return Existing(None, started) if started is not None else None


__all__ = ["FailureDetails", "Orchestrator", "ParentRef"]
