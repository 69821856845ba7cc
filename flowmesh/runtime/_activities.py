"""The activity runner: executes activity tasks from an app's work queue.

A task is acked only after its result was published (and confirmed) to the hosting app's
reply queue, so a crash anywhere before that leads to redelivery: activities run at least
once. Sync activities run in a bounded thread pool so long steps never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from flowmesh._app import App
from flowmesh._errors import DecodeError, FlowmeshError, NonRetryableError, SerializationError
from flowmesh.codec import Codec
from flowmesh.model import ActivityLease, ActivityResult, ActivityTask, FailureDetails, TaskNote
from flowmesh.runtime._activity_context import ActivityContext
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._redelivery import republish, retry_delay
from flowmesh.security._senders import AppUsers
from flowmesh.transport import Delivery, Inbox, Outgoing, QueueKind, Transport

_RESULT_RETRY_MAX_BACKOFF = 5.0
"""Longest wait between attempts to publish a result (seconds)."""


@dataclass(slots=True)
class _Lease:
    """A long activity's switch to a lease (see ``ActivityRunner._run_within_deadline``)."""

    holder: asyncio.Task[None] | None = None
    acked: bool = False
    stopping: bool = False
    sleeping: bool = False
    renewed_at: float = 0.0
    """``time.monotonic()`` of the last confirmed lease (0.0: none yet)."""


class ActivityRunner:
    """Runs activities of one app and reports their results."""

    def __init__(
        self,
        app: App,
        *,
        transport: Transport,
        codec: Codec,
        clock: Clock,
        options: WorkerOptions,
        pool: ThreadPoolExecutor,
        log: Any,
        crash: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._app = app
        self._crash = crash
        self._worker_name = f"{app.app_id}/{socket.gethostname()}/{os.getpid()}"
        self._transport = transport
        self._codec = codec
        self._clock = clock
        self._options = options
        self._pool = pool
        self._log = log
        self._running = 0
        self.completed = 0
        self._inbox: Inbox | None = None
        self._no_inbox = False
        self._inbox_lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        """True while an activity runs."""
        return self._running > 0

    async def handle(
        self, delivery: Delivery, task: ActivityTask, *, quarantined: bool = False
    ) -> None:
        """Run ``task`` (or quarantine it, or fail it as poison), publish the result, then ack.

        A task redelivered from the work queue was in flight when a worker died, maybe killed
        by another task beside it. It moves to the quarantine queue, where each replica runs
        one task at a time: a poison task then only counts its own deaths, and innocent tasks
        that shared a process with it run normally.
        """
        with structlog.contextvars.bound_contextvars(
            instance_id=task.instance_id, task=f"{task.name}#{task.seq}", attempt=task.attempt
        ):
            function = self._app.activities.get(task.name)
            if function is None:
                await self._wait_for_deployment(delivery, task)
                return
            if not quarantined and delivery.delivery_count > 1:
                await self._quarantine(delivery)
                return
            if delivery.delivery_count > self._options.max_deliveries:
                poison = FailureDetails(
                    "flowmesh.PoisonTaskError",
                    f"activity {task.name!r} was delivered {delivery.delivery_count} times without "
                    "finishing; its worker process probably crashes on it",
                    app_id=self._app.app_id,
                )
                self._log.error("poison activity task failed", deliveries=delivery.delivery_count)
                await self._reply(task, None, poison)
                await delivery.ack()
                return
            self._running += 1
            try:
                published, acked = await self._run_within_deadline(delivery, task, function)
            finally:
                self._running -= 1
            if not published:
                return  # on a lease that is lost: the host dispatches the task again
            if not acked:
                await delivery.ack()
            self.completed += 1

    async def _run_and_reply(self, function: Any, task: ActivityTask, lease: _Lease) -> bool:
        """Run the activity and publish its result; False if the result could not be
        published before the lease was lost."""
        started = time.perf_counter()
        output, failure = await self._execute(function, task)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        if failure:
            self._log.info("activity failed", duration_ms=duration_ms)
        else:
            # Debug, not info: one line per task is most of a busy worker's log volume
            # (and 7% of its CPU in W1); failures, leases and stalls stay at info.
            self._log.debug("activity completed", duration_ms=duration_ms)
        self._crash("after_activity")
        published = await self._reply_until_confirmed(task, output, failure, lease)
        self._crash("after_publish")
        return published

    async def _reply_until_confirmed(
        self, task: ActivityTask, output: object, failure: FailureDetails | None, lease: _Lease
    ) -> bool:
        """Publish the result, retrying with backoff while the broker fails (the lease is
        renewed meanwhile), until it is confirmed or the task would run again anyway.

        A result lost to a short outage would otherwise cost a full re-run of a long
        activity once its lease expired. Gives up once no lease was confirmed for a whole
        lease period (the host has dispatched the task again: returns False), or, while the
        delivery is still held, after as long (raises: the delivery is requeued).
        """
        began = time.monotonic()
        delay = 0.5
        while True:
            try:
                await self._reply(task, output, failure)
            except FlowmeshError as exc:
                since = max(lease.renewed_at, began)
                if time.monotonic() - since >= self._options.activity_lease:
                    if not lease.acked:
                        raise
                    self._log.error(
                        "result not published and the lease is lost; the host runs the task again",
                        error=str(exc),
                    )
                    return False
                self._log.warning("result not published yet", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESULT_RETRY_MAX_BACKOFF)
                continue
            return True

    async def _quarantine(self, delivery: Delivery) -> None:
        try:
            await self._transport.publish(
                [
                    Outgoing(
                        self._app.app_id,
                        QueueKind.QUARANTINE,
                        delivery.body,
                        delivery.message_id,
                        attempt=delivery.attempt,
                    )
                ]
            )
        except FlowmeshError:
            await delivery.requeue()
            return
        await delivery.ack()
        self._log.info("redelivered task moved to quarantine", deliveries=delivery.delivery_count)

    async def _run_within_deadline(
        self, delivery: Delivery, task: ActivityTask, function: Any
    ) -> tuple[bool, bool]:
        """Run the activity and publish its result; past the ack deadline, switch to a lease.

        Returns whether the result was published and whether the delivery was already acked
        (lease mode). The activity runs in this task (no task of its own: most activities
        are short); a timer starts the lease holder only if the deadline passes, and the
        holder keeps renewing until the result is published, not just until the activity
        returns.
        """
        lease = _Lease()
        deadline = self._options.ack_deadline
        if deadline is None:
            return await self._run_and_reply(function, task, lease), False

        def hold_on_lease() -> None:
            lease.holder = asyncio.create_task(
                self._hold_on_lease(delivery, task, lease),
                name=f"flowmesh-lease-{task.instance_id}#{task.seq}",
            )

        timer = asyncio.get_running_loop().call_later(deadline, hold_on_lease)
        try:
            published = await self._run_and_reply(function, task, lease)
        finally:
            timer.cancel()
            if lease.holder is not None:
                # A renewal in progress finishes first (lease published, delivery acked),
                # so the delivery is settled exactly once; a sleeping holder just stops.
                lease.stopping = True
                if lease.sleeping:
                    lease.holder.cancel()
                await asyncio.wait([lease.holder])
        return published, lease.acked

    async def _hold_on_lease(self, delivery: Delivery, task: ActivityTask, lease: _Lease) -> None:
        """Take a long activity off RabbitMQ's consumer_timeout clock, then renew its lease.

        The lease is published (confirmed) before the ack, so at every moment either the
        broker or the host's lease timer guarantees the task is run again if this process
        dies. If the lease cannot be published the delivery stays held, and the switch is
        tried again at the next renewal.
        """
        seconds = self._options.activity_lease
        while True:
            try:
                await self._send_lease(task, seconds)
            except FlowmeshError as exc:
                self._log.warning("activity lease not sent", error=str(exc))
            else:
                lease.renewed_at = time.monotonic()
                if not lease.acked:
                    await delivery.ack()
                    lease.acked = True
                    self._log.info("long activity now runs on a lease", lease_seconds=seconds)
            if lease.stopping:
                return
            lease.sleeping = True
            try:
                await asyncio.sleep(seconds / 3)
            finally:
                lease.sleeping = False

    async def _send_lease(self, task: ActivityTask, lease: float) -> None:
        message = ActivityLease(
            task.instance_id, task.seq, task.attempt, lease, self._worker_name, task.run_id
        )
        await self._transport.publish(
            [Outgoing(task.host_app_id, QueueKind.REPLY, self._codec.encode_message(message))]
        )

    async def _execute(
        self, function: Any, task: ActivityTask
    ) -> tuple[object, FailureDetails | None]:
        context = ActivityContext(
            instance_id=task.instance_id,
            seq=task.seq,
            attempt=task.attempt,
            name=task.name,
            app_id=self._app.app_id,
            host_app_id=task.host_app_id,
            run_id=task.run_id,
            heartbeat_sink=self._heartbeat_sink(task),
        )
        try:
            if inspect.iscoroutinefunction(function):
                output = await function(context, task.input)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(
                    contextvars.copy_context().run, function, context, task.input
                )
                output = await loop.run_in_executor(self._pool, call)
        except NonRetryableError as exc:
            return None, FailureDetails.from_exception(
                exc, app_id=self._app.app_id, non_retryable=True
            )
        except Exception as exc:
            error = type(exc).__name__
            if self._codec.payload_codec is None:  # messages often quote user data
                error = f"{error}: {exc}"
            self._log.info("activity raised", error=error)
            return None, FailureDetails.from_exception(exc, app_id=self._app.app_id)
        return output, None

    async def _reply(
        self, task: ActivityTask, output: object, failure: FailureDetails | None
    ) -> None:
        result = ActivityResult(
            task.instance_id, task.seq, task.attempt, output, failure, task.run_id
        )
        try:
            body = self._codec.encode_message(result, app_id=task.host_app_id)
        except SerializationError as exc:
            # The output cannot travel: report that as the activity's (non-retryable) failure.
            failure = FailureDetails.from_exception(
                exc, app_id=self._app.app_id, non_retryable=True
            )
            body = self._codec.encode_message(
                ActivityResult(
                    task.instance_id, task.seq, task.attempt, None, failure, task.run_id
                ),
                app_id=task.host_app_id,
            )
        await self._transport.publish(
            [
                Outgoing(
                    task.host_app_id,
                    QueueKind.REPLY,
                    body,
                    f"result:{task.instance_id}#{task.seq}/{task.attempt}",
                )
            ]
        )

    def _heartbeat_sink(self, task: ActivityTask) -> Callable[[object], None]:
        return functools.partial(self._on_heartbeat, asyncio.get_running_loop(), task)

    def _on_heartbeat(
        self, loop: asyncio.AbstractEventLoop, task: ActivityTask, details: object
    ) -> None:
        # Called from the activity's thread: hop to the loop, which owns the logger config.
        # (Built per heartbeat, not per task: most activities never send one.)
        shown = "<not logged: payload encryption is on>" if self._codec.payload_codec else details
        log = self._log.bind(instance_id=task.instance_id, task=f"{task.name}#{task.seq}")
        loop.call_soon_threadsafe(functools.partial(log.info, "heartbeat", details=shown))

    async def _wait_for_deployment(self, delivery: Delivery, task: ActivityTask) -> None:
        """An activity this app does not register: keep the task, retry with backoff.

        Each attempt sends the host a ``TaskNote`` (the same text every time, so the host
        records it once) and waits a delay doubling with the attempt counted in the message,
        then republishes the task (not a requeue, which would count toward the broker's
        delivery limit). The note asks for an answer: a host answers one for a task that is
        no longer wanted (its workflow ended, the task timed out, ...), and the task is
        dropped instead of bouncing forever.
        """
        attempt = delivery.attempt
        delay = retry_delay(attempt, first=1.0, cap=self._options.unknown_name_max_backoff)
        note = (
            f"activity {task.name!r} is not registered on app {self._app.app_id!r}; the task "
            "waits for a deployment that has it (retried with a growing delay, at most "
            f"{self._options.unknown_name_max_backoff:.0f}s)"
        )
        self._log.warning(
            "activity not registered here; task kept for a deployment that has it",
            activity=task.name,
            waiting_attempt=attempt,  # ``attempt`` is bound: the retry policy's attempt
            retry_in=delay,
        )
        stop = await self._note_and_wait(task, note, delay)
        if stop is not None:
            self._log.info(
                "task dropped: its workflow no longer waits for it", activity=task.name, why=stop
            )
            await delivery.ack()
            return
        await republish(self._transport, delivery, self._app.app_id, QueueKind.WORK)

    async def _note_and_wait(self, task: ActivityTask, note: str, delay: float) -> str | None:
        """Send the host ``note`` and wait ``delay`` seconds for an answer saying the task is
        not wanted any more; returns that answer's reason, or None."""
        inbox = await self._answers()
        correlation_id = uuid.uuid4().hex
        message = TaskNote(task.instance_id, task.seq, task.attempt, note, task.run_id)
        with inbox.expecting(correlation_id) if inbox else contextlib.nullcontext():
            with contextlib.suppress(FlowmeshError):  # the note is informative only
                body = self._codec.encode_message(message)
                await self._transport.publish(
                    [
                        Outgoing(
                            task.host_app_id,
                            QueueKind.REPLY,
                            body,
                            reply_to=inbox.address if inbox else "",
                            correlation_id=correlation_id if inbox else "",
                        )
                    ]
                )
            if inbox is None:
                await self._clock.sleep(delay)
                return None
            return await self._stop_within(inbox, task, correlation_id, delay)

    async def _stop_within(
        self, inbox: Inbox, task: ActivityTask, correlation_id: str, delay: float
    ) -> str | None:
        """The reason of a stop answer arriving within ``delay`` (on this runner's clock, or
        in real time, whichever ends first), or None."""
        sender = (
            AppUsers(self._options.app_user_pattern).user(task.host_app_id)
            if (self._options.app_user_pattern)
            else ""
        )
        answer = asyncio.ensure_future(inbox.receive(correlation_id, delay, sender=sender))
        sleep = asyncio.ensure_future(self._clock.sleep(delay))
        try:
            await asyncio.wait([answer, sleep], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (answer, sleep):
                waiting.cancel()
        body = answer.result() if answer.done() and not answer.cancelled() else None
        if body is None:
            return None
        try:
            stop = self._codec.decode_message(body, app_id=task.host_app_id)
        except DecodeError:
            return None
        if not isinstance(stop, TaskNote) or (stop.instance_id, stop.seq, stop.attempt) != (
            task.instance_id,
            task.seq,
            task.attempt,
        ):
            return None
        return stop.note

    async def _answers(self) -> Inbox | None:
        """This runner's inbox for answers to notes, opened on first use; None if this user
        may not open one (a plan from before stop answers): tasks then keep waiting."""
        async with self._inbox_lock:
            if self._inbox is None and not self._no_inbox:
                try:
                    self._inbox = await self._transport.open_inbox()
                except FlowmeshError as exc:
                    self._no_inbox = True
                    self._log.warning(
                        "no inbox for answers to task notes; tasks for unregistered "
                        "activities are not dropped when their workflow ends",
                        error=str(exc),
                    )
            return self._inbox
