"""The activity runner: executes activity tasks from an app's work queue.

A task is acked only after its result was published (and confirmed) to the hosting app's
reply queue, so a crash anywhere before that leads to redelivery: activities run at least
once. Sync activities run in a bounded thread pool so long steps never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from flowmesh._app import App
from flowmesh._errors import (
    FlowmeshError,
    NonRetryableError,
    SerializationError,
    TaskCancelledError,
)
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityCancel,
    ActivityLease,
    ActivityResult,
    ActivityTask,
    FailureDetails,
)
from flowmesh.runtime._activity_context import ActivityContext
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._deployment_wait import DeploymentWait
from flowmesh.runtime._options import WorkerOptions
from flowmesh.transport import Delivery, Outgoing, QueueKind, Transport

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


@dataclass(slots=True)
class _Running:
    """An activity running in this process, as a cancel message finds it."""

    context: ActivityContext
    coroutine: asyncio.Task[Any] | None = None
    """The task running an ``async def`` activity (cancelled with it); None for a sync one."""


def _task_key(task: ActivityTask | ActivityCancel) -> tuple[str, str, str, int, int]:
    return (task.host_app_id, task.instance_id, task.run_id, task.seq, task.attempt)


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
        self._active: dict[tuple[str, str, str, int, int], _Running] = {}
        """Tasks running here by (host app, instance, run, seq, attempt): what a cancel finds."""
        self._waiting = DeploymentWait(
            app, transport=transport, codec=codec, clock=clock, options=options, log=log
        )

    @property
    def busy(self) -> bool:
        """True while an activity runs."""
        return self._running > 0

    async def cancel(self, delivery: Delivery, message: ActivityCancel) -> None:
        """Mark the task ``message`` names cancelled if it runs here, then ack (best effort:
        a task running elsewhere, finished or not started yet is not affected)."""
        running = self._active.get(_task_key(message))
        if running is not None:
            running.context.mark_cancelled()
            if running.coroutine is not None:
                running.coroutine.cancel()
            self._log.info(
                "activity cancelled by its workflow",
                instance_id=message.instance_id,
                seq=message.seq,
                attempt=message.attempt,
            )
        await delivery.ack()

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
                await self._waiting.handle(delivery, task)
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
        running = _Running(context)
        key = _task_key(task)
        self._active[key] = running
        try:
            if inspect.iscoroutinefunction(function):
                # Its own asyncio task, so a cancel message can cancel the activity alone.
                running.coroutine = asyncio.ensure_future(function(context, task.input))
                try:
                    output = await running.coroutine
                except asyncio.CancelledError:
                    if not (context.is_cancelled and running.coroutine.cancelled()):
                        raise  # this worker is being stopped, not the task cancelled
                    raise TaskCancelledError("the activity was cancelled by its workflow") from None
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
        finally:
            if self._active.get(key) is running:
                del self._active[key]
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
