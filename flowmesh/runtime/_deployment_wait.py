"""Tasks for an activity this deployment does not register: wait for one that does.

During a rolling deploy (or before an app's new version is out) a worker receives tasks it
cannot run. It keeps them instead of failing them: it tells the host why the task waits
(a ``TaskNote``, shown in ``describe()``), waits a delay doubling with the attempt counted in
the message, and republishes the task for the next attempt (``runtime/_redelivery.py``).

The worker cannot read the host's store, so it asks: the note carries ``reply_to`` (this
runner's inbox), and a host answers a note about a task that is no longer wanted (its
workflow ended, it was purged, the task was answered, timed out or retried) with a "stop"
``TaskNote``. The task is then acked and dropped instead of bouncing forever. The note's text
never changes between attempts or replicas, so the host records it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from flowmesh._app import App
from flowmesh._errors import DecodeError, FlowmeshError
from flowmesh.codec import Codec
from flowmesh.model import ActivityTask, TaskNote
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._redelivery import republish, retry_delay
from flowmesh.security import AppUsers
from flowmesh.transport import Delivery, Inbox, Outgoing, QueueKind, Transport


class DeploymentWait:
    """Keeps the tasks of one app's unregistered activities until they can run or end."""

    def __init__(
        self,
        app: App,
        *,
        transport: Transport,
        codec: Codec,
        clock: Clock,
        options: WorkerOptions,
        log: Any,
    ) -> None:
        self._app = app
        self._transport = transport
        self._codec = codec
        self._clock = clock
        self._options = options
        self._log = log
        self._inbox: Inbox | None = None
        self._no_inbox = False
        self._inbox_lock = asyncio.Lock()

    async def handle(self, delivery: Delivery, task: ActivityTask) -> None:
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
        if not answer.done() or answer.cancelled() or answer.exception() is not None:
            return None  # no answer in time (or the inbox failed): keep the task
        body = answer.result()
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
