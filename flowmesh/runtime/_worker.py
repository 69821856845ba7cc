"""``Worker``: one replica of one app ID, wired from a transport, a store and a clock.

It consumes the app's work queue (workflow starts and activity tasks) and, if the app hosts
workflows, its reply queue; and it runs the timer poller and the outbox relay. Nothing starts
in the constructor: :meth:`start` does, :meth:`stop` drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flowmesh._app import App
from flowmesh._errors import ConfigurationError, DecodeError
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityCancel,
    ActivityLease,
    ActivityResult,
    ActivityTask,
    ChildResult,
    Control,
    Describe,
    HistoryRequest,
    Message,
    RaiseEvent,
    StartWorkflow,
    TaskNote,
    TimerDue,
)
from flowmesh.runtime._activities import ActivityRunner
from flowmesh.runtime._clock import Clock, SystemClock
from flowmesh.runtime._crash import CrashHook
from flowmesh.runtime._held import HeldSweeper
from flowmesh.runtime._log import get_logger
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._orchestrator import Orchestrator
from flowmesh.runtime._outbox import OutboxClearer, OutboxRelay
from flowmesh.runtime._timers import TimerPoller
from flowmesh.security import AppUsers, SenderPolicy, message_problem
from flowmesh.store import WorkflowStore
from flowmesh.transport import Delivery, QueueKind, Subscription, Transport

_REPLY_KINDS = (
    ActivityResult,
    ActivityLease,
    TaskNote,
    ChildResult,
    TimerDue,
    RaiseEvent,
    Control,
    Describe,
    HistoryRequest,
)


class Worker:
    """Serves one app's workflows and activities until stopped."""

    def __init__(
        self,
        app: App,
        *,
        transport: Transport,
        store: WorkflowStore | None = None,
        codec: Codec | None = None,
        clock: Clock | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        if app.hosts_workflows and store is None:
            raise ConfigurationError(
                f"app {app.app_id!r} hosts workflows and needs a store (a Redis URL)"
            )
        self.app = app
        self._transport = transport
        self._store = store
        self._codec = codec or Codec()
        self._clock = clock or SystemClock()
        self._options = options or WorkerOptions()
        self._log = get_logger(app_id=app.app_id)
        self._crash = CrashHook(self._options.crash_at)
        self._subscriptions: list[Subscription] = []
        self._background: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._quiet = asyncio.Event()  # set whenever no delivery is in flight
        self._quiet.set()
        self._pool: ThreadPoolExecutor | None = None
        self._activities: ActivityRunner | None = None
        self._orchestrator: Orchestrator | None = None
        self._timers: TimerPoller | None = None
        self._relay: OutboxRelay | None = None
        self._held: HeldSweeper | None = None
        self._clearer: OutboxClearer | None = None
        self._senders = (
            SenderPolicy(app.app_id, AppUsers(self._options.app_user_pattern))
            if self._options.app_user_pattern
            else None
        )

    @property
    def idle(self) -> bool:
        """True when no delivery is being handled in this replica."""
        return self._in_flight == 0

    @property
    def activities_completed(self) -> int:
        """Activities this replica ran to completion (for tests and metrics)."""
        return self._activities.completed if self._activities else 0

    async def start(self) -> None:
        """Declare queues and start consuming."""
        self._pool = ThreadPoolExecutor(
            max_workers=self._options.concurrency, thread_name_prefix=f"flowmesh-{self.app.app_id}"
        )
        self._activities = ActivityRunner(
            self.app,
            transport=self._transport,
            codec=self._codec,
            clock=self._clock,
            options=self._options,
            pool=self._pool,
            log=self._log,
            crash=self._crash,
        )
        await self._transport.declare_app(self.app.app_id)
        if self._store is not None and self.app.hosts_workflows:
            self._timers = TimerPoller(
                self.app.app_id,
                store=self._store,
                transport=self._transport,
                codec=self._codec,
                clock=self._clock,
                options=self._options,
                log=self._log,
            )
            # Well within a sweep interval, so the relay never sees a published entry twice;
            # long enough that most entries are cleared by their instance's next commit.
            self._clearer = OutboxClearer(
                self._store, log=self._log, delay=self._options.outbox_sweep_interval / 5
            )
            self._held = HeldSweeper(
                self.app.app_id,
                self._store,
                self._transport,
                self._clock,
                hold_for=self._options.hold_unknown_for,
                interval=self._options.outbox_sweep_interval,
                log=self._log,
            )
            self._orchestrator = Orchestrator(
                self.app,
                store=self._store,
                transport=self._transport,
                codec=self._codec,
                clock=self._clock,
                options=self._options,
                on_timer_added=lambda _: self._timers.notify() if self._timers else None,
                on_held=lambda at: self._held.notify(at) if self._held else None,
                crash=self._crash,
                clearer=self._clearer,
                senders=self._senders,
            )
            self._relay = OutboxRelay(
                self._store,
                self._transport,
                self._clock,
                interval=self._options.outbox_sweep_interval,
                log=self._log,
                max_backoff=self._options.outbox_max_backoff,
            )
            self._subscriptions.append(
                await self._transport.consume(
                    self.app.app_id,
                    QueueKind.REPLY,
                    self._on_reply,
                    prefetch=reply_prefetch(self._options, self._codec.limits.max_message_bytes),
                )
            )
            self._background.append(asyncio.create_task(self._timers.run(), name="flowmesh-timers"))
            self._background.append(asyncio.create_task(self._relay.run(), name="flowmesh-outbox"))
            self._background.append(asyncio.create_task(self._held.run(), name="flowmesh-held"))
        self._subscriptions.append(
            await self._transport.consume(
                self.app.app_id, QueueKind.WORK, self._on_work, prefetch=self._options.concurrency
            )
        )
        if self.app.activities:
            # One quarantined task at a time: if it kills the process, nothing else dies with it.
            self._subscriptions.append(
                await self._transport.consume(
                    self.app.app_id, QueueKind.QUARANTINE, self._on_quarantine, prefetch=1
                )
            )
        self._log.info(
            "worker started",
            workflows=sorted(self.app.workflows),
            activities=sorted(self.app.activities),
            concurrency=self._options.concurrency,
        )

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, let in-flight work finish (up to ``timeout``), release the rest."""
        # Cancel every consumer at once: each waits for its in-flight handlers, and the drain
        # budget applies to the replica as a whole, not to each queue in turn.
        await asyncio.gather(
            *(subscription.cancel() for subscription in self._subscriptions),
            return_exceptions=True,
        )
        self._subscriptions.clear()
        drain = timeout if timeout is not None else self._options.drain_timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), drain)
        if self._clearer is not None:
            await self._clearer.flush()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._log.info("worker stopped", unfinished=self._in_flight)

    async def tick(self) -> None:
        """Fire due timers and sweep the outbox once (the test environment drives this)."""
        if self._timers is not None:
            await self._timers.fire_due()
        if self._relay is not None:
            await self._relay.sweep()
        if self._held is not None:
            await self._held.sweep()

    # -- consumers -------------------------------------------------------------------------------

    async def _decode(self, delivery: Delivery, queue: str) -> Message | None:
        try:
            # Messages that do not name their workflow's app arrive on its own reply queue.
            message = self._codec.decode_message(delivery.body, app_id=self.app.app_id)
        except DecodeError as exc:
            await self._dead_letter(delivery, queue, f"undecodable message: {exc}")
            return None
        problem = message_problem(message)  # IDs become Redis keys and queue names
        if problem is not None:
            await self._dead_letter(delivery, queue, problem)
            return None
        return message

    async def _dead_letter(self, delivery: Delivery, queue: str, reason: str) -> None:
        self._log.error(
            "message dead-lettered",
            queue=queue,
            reason=reason,
            size=len(delivery.body),
            message_id=delivery.message_id,
        )
        await self._transport.dead_letter(delivery, self.app.app_id, reason)

    async def _refused(self, delivery: Delivery, message: Message, queue: str) -> bool:
        """Dead-letter ``message`` if its verified sender may not send it (sender checks)."""
        if self._senders is None:
            return False
        reason = self._senders.refuse(delivery.user_id, message)
        if reason is None:
            return False
        await self._dead_letter(delivery, queue, f"sender refused: {reason}")
        return True

    def _enter(self) -> None:
        self._in_flight += 1
        self._quiet.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._quiet.set()

    async def _on_work(self, delivery: Delivery) -> None:
        self._enter()
        try:
            message = await self._decode(delivery, "work")
            if message is None or await self._refused(delivery, message, "work"):
                return
            self._crash("after_receive")
            if isinstance(message, ActivityTask) and self._activities is not None:
                await self._activities.handle(delivery, message)
            elif isinstance(message, ActivityCancel):
                if self._activities is not None:
                    await self._activities.cancel(delivery, message)
                else:
                    await delivery.ack()  # nothing runs here to cancel
            elif isinstance(message, StartWorkflow) and self._orchestrator is not None:
                await self._orchestrator.handle(delivery, message)
            elif isinstance(message, StartWorkflow):
                await self._dead_letter(
                    delivery,
                    "work",
                    f"app {self.app.app_id!r} hosts no workflows; cannot start {message.name!r}",
                )
            else:
                await self._dead_letter(
                    delivery, "work", f"unexpected {type(message).__name__} on a work queue"
                )
        finally:
            self._leave()

    async def _on_quarantine(self, delivery: Delivery) -> None:
        # No sender check: only this app may publish to its quarantine queue, and the task was
        # checked when it first arrived on the work queue.
        self._enter()
        try:
            message = await self._decode(delivery, "quarantine")
            if message is None:
                return
            if isinstance(message, ActivityTask) and self._activities is not None:
                await self._activities.handle(delivery, message, quarantined=True)
            else:
                await self._dead_letter(
                    delivery, "quarantine", f"unexpected {type(message).__name__} in quarantine"
                )
        finally:
            self._leave()

    async def _on_reply(self, delivery: Delivery) -> None:
        self._enter()
        try:
            message = await self._decode(delivery, "reply")
            if message is None or await self._refused(delivery, message, "reply"):
                return
            self._crash("after_receive")
            if not isinstance(message, _REPLY_KINDS) or self._orchestrator is None:
                await self._dead_letter(
                    delivery, "reply", f"unexpected {type(message).__name__} on a reply queue"
                )
                return
            await self._orchestrator.handle(delivery, message)
        finally:
            self._leave()

    def describe_components(self) -> dict[str, Any]:
        """What this replica runs (for logs and the CLI)."""
        return {
            "app_id": self.app.app_id,
            "hosts_workflows": self._orchestrator is not None,
            "activities": sorted(self.app.activities),
        }


def reply_prefetch(options: WorkerOptions, max_message_bytes: int) -> int:
    """The reply queue's prefetch: ``options.reply_prefetch``, lowered so that that many
    deliveries of the largest decodable size fit in ``options.reply_buffer_bytes``."""
    return max(1, min(options.reply_prefetch, options.reply_buffer_bytes // max_message_bytes))
