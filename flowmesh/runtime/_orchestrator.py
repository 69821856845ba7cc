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
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from flowmesh._app import App
from flowmesh._errors import FlowmeshError, SerializationError, VersionConflictError
from flowmesh.codec import Codec
from flowmesh.engine import StepOutcome, WorkflowExecution
from flowmesh.model import (
    Command,
    Describe,
    FailureDetails,
    HistoryRequest,
    Message,
    ParentRef,
    StartAck,
    StartWorkflow,
    StepStarted,
    WorkflowState,
)
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._failures import REFUSALS_KEPT, StepFailures, history_full
from flowmesh.runtime._history_pages import HistoryPages
from flowmesh.runtime._leases import (
    BookkeepingEffects,
    apply_bookkeeping,
    with_details,
)
from flowmesh.runtime._live import Inbound, Live, NotHere, StaleCache
from flowmesh.runtime._log import get_logger, log_transition
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._outbox import OutboxClearer, publish_outbox
from flowmesh.runtime._purge import Purger, purge_replies
from flowmesh.runtime._replies import Replies, state_replies
from flowmesh.runtime._restart import new_run_base
from flowmesh.runtime._step_input import StepInput, StepSorter
from flowmesh.runtime._translate import (
    blank_state,
    build_commit,
    build_state,
    command_messages,
    continued_as_new,
    new_timers,
    timers_to_cancel,
)
from flowmesh.security import SenderPolicy
from flowmesh.store import WorkflowStore
from flowmesh.transport import Delivery, Outgoing, Transport


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
        self._crash = crash
        self._clearer = clearer
        self._mailboxes: dict[str, list[Inbound]] = {}
        self._draining: set[str] = set()
        """Instances whose mailbox a task is draining (one step at a time per instance)."""
        self._cache: OrderedDict[str, Live] = OrderedDict()
        self._log = get_logger(app_id=app.app_id)
        self._replies = Replies(app.app_id, store=store, transport=transport, codec=codec)
        self._pages = HistoryPages(app.app_id, store=store, transport=transport, codec=codec)
        self._purger = Purger(
            app.app_id,
            store=store,
            transport=transport,
            codec=codec,
            users=senders.users if senders else None,
            log=self._log,
        )
        self._sorter = StepSorter(
            app.app_id,
            store=store,
            codec=codec,
            clock=clock,
            hold_unknown_for=options.hold_unknown_for,
            on_held=on_held,
            senders=senders,
            log=self._log,
        )
        self._failures = StepFailures(
            app.app_id,
            store=store,
            transport=transport,
            clock=clock,
            options=options,
            replies=self._replies,
            advance=self._advance,
            forget=self._forget,
            log=self._log,
        )

    @property
    def busy(self) -> bool:
        """True while any step is in progress."""
        return bool(self._draining)

    # -- entry points ----------------------------------------------------------------------------

    async def handle(self, delivery: Delivery, message: Message) -> None:
        """Process one decoded message for a hosted instance; returns once it is settled."""
        if isinstance(message, Describe):
            await self._replies.describe(delivery, message)
            return
        if isinstance(message, HistoryRequest):
            await self._pages.answer(delivery, message)
            return
        if isinstance(message, StartWorkflow) and message.name not in self._app.workflows:
            # A replica of a newer (or older) deployment may have the workflow: the start
            # waits (with backoff) for it instead of being refused and lost.
            await self._failures.retry_later(
                delivery,
                message,
                f"workflow {message.name!r} is not registered on this replica of app "
                f"{self._app.app_id!r}",
            )
            return
        instance_id = getattr(message, "instance_id", "")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mailboxes.setdefault(instance_id, []).append(Inbound(delivery, message, done))
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

    async def _run_batch(self, instance_id: str, batch: list[Inbound]) -> None:
        try:
            await self._advance(instance_id, batch)
        except Exception as exc:
            await self._failures.step_failed(instance_id, batch, exc)
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)

    # -- one step --------------------------------------------------------------------------------

    async def _advance(self, instance_id: str, batch: list[Inbound]) -> None:
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
            except StaleCache:
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
        batch: list[Inbound],
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
        refused, a purge), it raises :class:`StaleCache` to be re-run on fresh state: another
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
            raise NotHere(
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
        step = StepInput([StepStarted(now)])
        await self._sorter.sort(
            instance_id,
            live,
            self._sorter.check_senders(live, batch, refusals),
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
            raise StaleCache
        if send_now:
            # Answers to parents (a duplicate child ID, a child already finished) are not part
            # of any commit: publish them (confirmed) before the start is acked.
            await self._transport.publish(send_now)
        if purge is not None:
            purged = await self._purger.purge(instance_id, live, purge, step.controls)
            self._cache.pop(instance_id, None)
            await self._replies.send(purge_replies(step.controls, instance_id, purged))
            return to_ack
        if len(events) == 1 and (not book or live is None):
            answers = state_replies(step.controls, instance_id, live.state if live else None)
            await self._replies.send([*replies, *answers])
            return to_ack

        if live is None:
            blank = blank_state(instance_id, self._app.app_id, base_version)
            live = Live(self._new_execution(), blank)
        elif step.new_run:
            live = Live(self._new_execution(), new_run_base(live.state))
        elif (
            full := history_full(
                live.state,
                limit=self._options.max_history_events,
                app_id=self._app.app_id,
                log=self._log,
            )
        ) is not None:
            # The batch is not applied (its deliveries are acked with the failure committed).
            live.execution.fail(full)
            events = [StepStarted(now)]
        outcome = live.execution.step(events)
        effects = apply_bookkeeping(
            book, live.execution, live.state.waiting_on, instance_id=instance_id, now=now
        )
        if from_cache and (outcome.dropped or effects.stale or not (outcome.changed or effects)):
            raise StaleCache
        refused_now = self._sorter.refused(outcome, origins, refusals, to_ack)
        state = (
            await self._commit(
                instance_id,
                live,
                outcome,
                now,
                effects,
                refused=refused_now,
                take_held=len(held),
                new_run=step.new_run,
            )
            if outcome.changed or effects or refused_now
            else live.state
        )
        # Only now, committed: a command sent after a control's answer applies after it.
        await self._replies.send([*replies, *state_replies(step.controls, instance_id, state)])
        return to_ack

    async def _commit(
        self,
        instance_id: str,
        live: Live,
        outcome: StepOutcome,
        now: datetime,
        effects: BookkeepingEffects,
        *,
        refused: tuple[str, ...] = (),
        take_held: int = 0,
        new_run: bool = False,
    ) -> WorkflowState:
        """Commit the step and publish its outbox; returns the committed state. A
        ``new_run`` (a restart) replaces the history."""
        execution = live.execution
        history = live.history
        replace = new_run
        commands = list(outcome.commands)
        continued = continued_as_new(commands)
        cancel = timers_to_cancel(
            outcome, effects, history, ended=outcome.status.is_terminal or continued is not None
        )
        if continued is not None:
            # Start the next run right away, in the same atomic commit.
            execution, outcome = execution.continue_as_new_restart(
                continued, now=now, run_id=uuid.uuid4().hex
            )
            commands = [c for c in commands if c is not continued] + list(outcome.commands)
            replace = True
            history = []
        append = list(outcome.append)
        messages = self._encode(instance_id, execution, [*commands, *effects.redispatch])
        state = build_state(
            live.state if live.state.run_id else None,
            outcome,
            instance_id=instance_id,
            app_id=self._app.app_id,
            name=execution.name,
            input_value=execution.input,
            parent=execution.parent,
            now=now,
            version=live.state.version + 1,
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
        self._remember(instance_id, Live(execution, state, history))
        for timer in timers:
            self._on_timer_added(timer.fire_at)
        log_transition(self._log, live.state, state, self._codec)
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
            await self._replies.notify_waiters(instance_id, state, waiters)
        return state

    def _encode(
        self, instance_id: str, execution: WorkflowExecution, commands: list[Command]
    ) -> list[Outgoing]:
        """The messages ``commands`` send, for the commit's outbox."""
        try:
            return command_messages(
                commands,
                instance_id=instance_id,
                app_id=self._app.app_id,
                run_id=execution.run_id,
                parent=execution.parent,
                encode=self._codec.encode_message,
            )
        except SerializationError as exc:
            # Defensive: the engine checks values at the call site, so this means a size limit.
            raise FlowmeshError(f"cannot encode a message of {instance_id}: {exc}") from exc

    # -- loading and caching ---------------------------------------------------------------------

    def _new_execution(self) -> WorkflowExecution:
        return WorkflowExecution(
            self._resolve, logger=self._log, check_value=self._codec.check_value
        )

    def _resolve(self, name: str) -> Any:
        return self._app.workflows.get(name)

    async def _load(self, instance_id: str) -> Live | None:
        """Replay the instance from the store (None if it does not exist)."""
        record = await self._store.load(instance_id)
        if record is None:
            return None
        execution = self._new_execution()
        execution.replay(record.history)
        return Live(execution, record.state, list(record.history))

    def _forget(self, instance_id: str) -> None:
        self._cache.pop(instance_id, None)

    def _remember(self, instance_id: str, live: Live) -> None:
        if live.state.status.is_terminal:
            self._cache.pop(instance_id, None)
            return
        self._cache[instance_id] = live
        self._cache.move_to_end(instance_id)  # least recently stepped instances go first
        while len(self._cache) > self._options.execution_cache_size:
            self._cache.popitem(last=False)


__all__ = ["FailureDetails", "Orchestrator", "ParentRef"]
