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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    StartAck,
    StartWorkflow,
    StateReply,
    StepStarted,
    TimerFired,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
)
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
from flowmesh.runtime._translate import (
    build_commit,
    build_state,
    command_messages,
    message_to_event,
    new_timers,
    open_timer_seqs,
)
from flowmesh.security._senders import SenderPolicy
from flowmesh.store import WorkflowStore
from flowmesh.transport import Delivery, Outgoing, QueueKind, Transport


class _StaleCache(Exception):  # noqa: N818 - internal signal, never escapes the orchestrator
    """The cached execution may be behind the store: re-run the step from a fresh load."""


@dataclass(slots=True)
class _Inbound:
    delivery: Delivery
    message: Message
    done: asyncio.Future[None]


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
        if (
            isinstance(message, StartWorkflow)
            and message.name not in self._app.workflows
            and not delivery.reply_to
        ):
            # A child start from another workflow: a newer deployment may add the workflow,
            # so the start waits (with backoff) instead of being dropped.
            await self._retry_later(delivery, f"workflow {message.name!r} is not registered")
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
            # Store or broker trouble: nothing was acked, so the broker redelivers later. A
            # delivery that keeps failing its step (e.g. a state grown past the size limit)
            # would loop forever, so after max_deliveries it goes to the dead-letter queue.
            self._cache.pop(instance_id, None)
            self._log.warning(
                "step failed; deliveries requeued", instance_id=instance_id, error=str(exc)
            )
            transient = isinstance(exc, StoreError | TransportError | OSError)
            limit = self._options.max_deliveries if not transient else float("inf")
            if transient:
                # Back off a little so an outage does not turn into a hot redelivery loop.
                attempts = max(item.delivery.delivery_count for item in batch)
                await asyncio.sleep(min(0.05 * 2**attempts, 2.0))
            await asyncio.gather(
                *(
                    self._transport.dead_letter(
                        item.delivery,
                        self._app.app_id,
                        f"step of {instance_id} failed {item.delivery.delivery_count} times: {exc}",
                    )
                    if item.delivery.delivery_count >= limit
                    else item.delivery.requeue()
                    for item in batch
                ),
                return_exceptions=True,
            )
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)

    # -- one step --------------------------------------------------------------------------------

    async def _advance(self, instance_id: str, batch: list[_Inbound]) -> None:
        use_cache = True
        refusals: list[tuple[Delivery, str]] = []
        for _ in range(self._options.conflict_retries):
            try:
                settled = await self._try_step(
                    instance_id, batch, use_cache=use_cache, refusals=refusals
                )
            except (VersionConflictError, _StaleCache):
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
                    self._transport.dead_letter(d, self._app.app_id, f"sender refused: {reason}")
                    for d, reason in refusals
                ),
            )
            return
        raise FlowmeshError(
            f"gave up on {instance_id} after {self._options.conflict_retries} conflicts"
        )

    async def _try_step(
        self,
        instance_id: str,
        batch: list[_Inbound],
        *,
        use_cache: bool,
        refusals: list[tuple[Delivery, str]],
    ) -> list[Delivery]:
        """Run one step; returns the deliveries to ack (and fills ``refusals`` with those to
        dead-letter because their sender may not send them, see :meth:`_check_senders`).

        A cached execution is only proven current by a successful commit. So when a step
        based on the cache would commit nothing (results dropped as duplicates, a start
        refused, a purge), it raises :class:`_StaleCache` to be re-run on fresh state: another
        replica may have advanced the instance, and acking on stale state would lose results.
        """
        live = self._cache.get(instance_id) if use_cache else None
        from_cache = live is not None
        # A batch of starts for an unknown instance skips the load: the commit's version check
        # (expected 0) proves the instance is new, and a conflict re-runs the step with a load.
        assume_new = use_cache and all(isinstance(i.message, StartWorkflow) for i in batch)
        if live is None and not assume_new:
            live = await self._load(instance_id)
        now = self._clock.now()
        events: list[HistoryEvent] = [StepStarted(now)]
        to_ack: list[Delivery] = []
        replies: list[tuple[Delivery, Message]] = []
        purge: Control | None = None
        book = TaskBookkeeping()
        for item in self._check_senders(live, batch, refusals):
            message = item.message
            if book.add(message):
                pass
            elif isinstance(message, StartWorkflow):
                self._admit_start(live, message, item.delivery, events, replies)
            elif isinstance(message, Control) and message.action is ControlAction.PURGE:
                purge = message
            elif live is None and not any(isinstance(e, WorkflowStarted) for e in events):
                self._log.warning(
                    "message for unknown instance dropped",
                    instance_id=instance_id,
                    kind=type(message).__name__,
                )
            elif isinstance(message, ActivityResult) and _wrong_attempt(live, message):
                # Each attempt has its own seq, so a mismatch is a forged or corrupt result.
                self._log.warning(
                    "activity result for another attempt dropped",
                    instance_id=instance_id,
                    seq=message.seq,
                    attempt=message.attempt,
                )
            else:
                event = message_to_event(message)
                if event is not None:
                    events.append(event)
            to_ack.append(item.delivery)

        refused = any(isinstance(r, StartAck) and not r.created for _, r in replies)
        if from_cache and (purge is not None or refused or (len(events) == 1 and not book)):
            raise _StaleCache
        if purge is not None:
            await self._purge(instance_id, live, purge)
            return to_ack
        if len(events) == 1 and (not book or live is None):
            await self._send_replies(replies)
            return to_ack

        if live is None:
            live = _Live(
                self._new_execution(),
                _blank_state(instance_id, self._app.app_id),
            )
        outcome = live.execution.step(events)
        effects = apply_bookkeeping(
            book, live.execution, live.state.waiting_on, instance_id=instance_id, now=now
        )
        if from_cache and (outcome.dropped or effects.stale or not (outcome.changed or effects)):
            raise _StaleCache
        if outcome.changed or effects:
            await self._commit(instance_id, live, outcome, now, effects)
        await self._send_replies(replies)
        return to_ack

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
                refusals.append((item.delivery, reason))
        return accepted

    def _admit_start(
        self,
        live: _Live | None,
        message: StartWorkflow,
        delivery: Delivery,
        events: list[HistoryEvent],
        replies: list[tuple[Delivery, Message]],
    ) -> None:
        """Turn a start into a WorkflowStarted event, or answer why it cannot start."""
        exists = live is not None or any(isinstance(e, WorkflowStarted) for e in events)
        if exists and message.request_id and message.request_id == _start_request(live, events):
            # The same request redelivered (the replica that created it died before acking):
            # answer as the first time.
            if delivery.reply_to:
                replies.append((delivery, StartAck(message.instance_id, True)))
            return
        if exists:
            if delivery.reply_to:
                status = live.state.status.value if live else "PENDING"
                error = (
                    f"workflow instance {message.instance_id!r} already exists (status {status})"
                )
                replies.append((delivery, StartAck(message.instance_id, False, error, "exists")))
            return  # a duplicate start (redelivery, or retried child start) changes nothing
        if message.name not in self._app.workflows:
            # Only client starts get here (see handle): refuse them clearly, write nothing.
            error = f"workflow {message.name!r} is not registered on app {self._app.app_id!r}"
            replies.append(
                (delivery, StartAck(message.instance_id, False, error, "unknown_workflow"))
            )
            return
        events.append(
            WorkflowStarted(
                message.name,
                message.instance_id,
                self._app.app_id,
                message.input,
                message.parent,
                message.request_id,
            )
        )
        if delivery.reply_to:
            replies.append((delivery, StartAck(message.instance_id, True)))

    async def _commit(
        self,
        instance_id: str,
        live: _Live,
        outcome: StepOutcome,
        now: datetime,
        effects: BookkeepingEffects,
    ) -> None:
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
                parent=execution.parent,
                encode=self._codec.encode_message,
            )
        except SerializationError as exc:
            # Defensive: the engine checks values at the call site, so this means a size limit.
            raise FlowmeshError(f"cannot encode a message of {instance_id}: {exc}") from exc
        version = live.state.version + 1
        state = build_state(
            live.state if live.state.version else None,
            outcome,
            instance_id=instance_id,
            app_id=self._app.app_id,
            name=execution.name,
            input_value=execution.input,
            parent=execution.parent,
            now=now,
            version=version,
            history_length=len(history) + len(append),
            waiting_on=with_details(outcome.waiting_on, live.state.waiting_on, effects.details),
        )
        timers = (*new_timers(instance_id, commands), *effects.add_timers)
        commit = build_commit(
            instance_id=instance_id,
            expected_version=live.state.version,
            state=state,
            append=append,
            replace_history=replace,
            messages=messages,
            timers=timers,
            cancel_timers=cancel,
            # The previous step's published entries, if their batched clean-up has not run yet.
            clear_outbox=self._clearer.pending(instance_id) if self._clearer else (),
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

    def _log_transition(self, before: WorkflowState, after: WorkflowState) -> None:
        if before.version == 0 or (
            after.history_length < before.history_length and after.status is WorkflowStatus.RUNNING
        ):
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
                state = await self._store.add_waiter(message.instance_id, delivery.reply_to)
                if state is not None and not state.status.ends_waiting:
                    return  # answered when the instance finishes
            else:
                state = await self._store.load_state(message.instance_id)
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

    async def _notify_waiters(
        self, instance_id: str, state: WorkflowState, waiters: Sequence[str]
    ) -> None:
        body = self._codec.encode_message(StateReply(instance_id, state))
        for address in waiters:
            await self._transport.send_reply(address, "wait:" + instance_id, body)

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

    async def _retry_later(self, delivery: Delivery, reason: str) -> None:
        """Hold a delivery we cannot serve yet, then hand it back (backoff by delivery count)."""
        delay = min(2.0 ** (delivery.delivery_count - 1), self._options.unknown_name_max_backoff)
        self._log.warning(
            "task waits for a deployment that registers it", reason=reason, retry_in=delay
        )
        await self._clock.sleep(delay)
        await delivery.requeue()


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


def _start_request(live: _Live | None, pending: list[HistoryEvent]) -> str:
    """The request ID that created the instance (from history or this step's events)."""
    events = [*(live.history if live else ()), *pending]
    started = next((e for e in events if isinstance(e, WorkflowStarted)), None)
    return started.request_id if started else ""


def _blank_state(instance_id: str, app_id: str) -> WorkflowState:
    return WorkflowState(
        instance_id=instance_id, app_id=app_id, name="", status=WorkflowStatus.PENDING
    )


__all__ = ["FailureDetails", "Orchestrator", "ParentRef"]
