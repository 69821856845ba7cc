"""Settling a batch whose step failed, and messages this replica cannot serve yet.

What happens depends on why the step failed (invariant 11, per-message outcomes):

* store or broker trouble, or replicas that kept committing first: not the messages' fault;
  the batch is republished after a delay growing with its attempts (:meth:`retry_transient`);
* a failure of the step itself: the batch is bisected until the one message whose step fails
  by itself is found, requeued, and past ``max_deliveries`` dead-lettered and recorded in the
  instance's refusals (:meth:`isolate`, :meth:`poisoned`);
* the workflow is not registered on this replica (a rolling deploy): every message waits for
  a replica that has it (:meth:`retry_later`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from flowmesh._errors import FlowmeshError, StoreError, TransportError, VersionConflictError
from flowmesh.model import FailureDetails, Message, StartAck, StartWorkflow, WorkflowState
from flowmesh.runtime._clock import Clock
from flowmesh.runtime._live import Inbound, NotHere
from flowmesh.runtime._options import WorkerOptions
from flowmesh.runtime._redelivery import republish, republish_later, retry_delay
from flowmesh.runtime._replies import Replies
from flowmesh.store import Commit, WorkflowStore
from flowmesh.transport import Delivery, QueueKind, Transport

REFUSALS_KEPT = 10
"""Refused messages an instance's state lists (``WorkflowState.refusals``), latest last."""

HISTORY_LIMIT_ERROR = "flowmesh.HistoryLimitExceeded"
"""``FailureDetails.error_type`` of a run failed for reaching ``max_history_events``."""


def history_full(
    state: WorkflowState, *, limit: int, app_id: str, log: Any
) -> FailureDetails | None:
    """The failure that ends a run whose history reached ``limit`` events
    (``WorkerOptions.max_history_events``; checked before a step, so a history exceeds the
    limit by at most one step's events), else None.

    Failing, not stalling: a longer history is not fixed by deploying other code, and the
    parent and waiting clients must learn the outcome. The message names the way out.
    """
    count = state.history_length
    if count < limit or state.status.is_terminal:
        return None
    log.error(
        "workflow history limit reached", instance_id=state.instance_id, events=count, limit=limit
    )
    return FailureDetails(
        HISTORY_LIMIT_ERROR,
        f"the history of {state.instance_id!r} has {count} events, the limit is {limit} "
        "(WorkerOptions.max_history_events): a workflow that runs indefinitely must call "
        "ctx.continue_as_new(...) to start a fresh history, or split its work into child "
        "workflows",
        non_retryable=True,
        app_id=app_id,
    )


class StepFailures:
    """Settles the deliveries of failed steps for one app's orchestrator."""

    def __init__(
        self,
        app_id: str,
        *,
        store: WorkflowStore,
        transport: Transport,
        clock: Clock,
        options: WorkerOptions,
        replies: Replies,
        advance: Callable[[str, list[Inbound]], Awaitable[None]],
        forget: Callable[[str], None],
        log: Any,
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._transport = transport
        self._clock = clock
        self._options = options
        self._replies = replies
        self._advance = advance
        """Steps a part of a batch alone (the orchestrator's step, for bisection)."""
        self._forget = forget
        """Drops an instance's cached execution (its version is behind the store)."""
        self._log = log

    async def retry_transient(self, instance_id: str, batch: list[Inbound], exc: Exception) -> None:
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
                republish(self._transport, item.delivery, self._app_id, queue_of(item.message))
                for item in batch
            ),
            return_exceptions=True,
        )

    async def step_failed(self, instance_id: str, batch: list[Inbound], exc: Exception) -> None:
        """Settle the deliveries of a step that failed with ``exc`` (nothing was acked)."""
        self._forget(instance_id)
        if isinstance(exc, NotHere):
            # This replica lacks the instance's workflow (an older deployment during a
            # rolling update): leave every message of the instance to a replica that has it.
            await asyncio.gather(
                *(self.retry_later(i.delivery, i.message, str(exc)) for i in batch),
                return_exceptions=True,
            )
            return
        if not isinstance(exc, StoreError | TransportError | OSError):
            # The step itself fails (a state grown past the size limit, ...): one message
            # may be to blame, and it must not take its siblings down with it.
            await self.isolate(instance_id, batch, exc)
            return
        # Store or broker trouble, or other replicas that kept committing first
        # (VersionConflictError is a StoreError): not the messages' fault, so they never
        # count as poison. Retried later by republishing with a growing delay (never a
        # requeue loop, which the broker's delivery limit would end).
        await self.retry_transient(instance_id, batch, exc)

    async def isolate(self, instance_id: str, batch: list[Inbound], exc: Exception) -> None:
        """Bisect a batch whose step failed for a reason of its own: each half is stepped
        alone (and acked if it commits), so in the end only a message whose step fails by
        itself is requeued, and past ``max_deliveries`` dead-lettered with the reason."""
        if len(batch) == 1:
            await self.poisoned(instance_id, batch[0], exc)
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
                await self.step_failed(instance_id, part, part_exc)

    async def poisoned(self, instance_id: str, item: Inbound, exc: Exception) -> None:
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
        await self._transport.dead_letter(item.delivery, self._app_id, reason)
        await self.record_refusal(instance_id, reason)

    async def record_refusal(self, instance_id: str, reason: str) -> None:
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
            self._forget(instance_id)  # its version is behind now
            return

    async def retry_later(self, delivery: Delivery, message: Message, reason: str) -> None:
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
                await self._replies.send([(delivery, answer)])
        await republish_later(
            self._transport,
            self._clock,
            delivery,
            self._app_id,
            queue_of(message),
            delay=delay,
        )


def queue_of(message: Message) -> QueueKind:
    """The queue a hosted instance's message arrives on (and is republished to)."""
    return QueueKind.WORK if isinstance(message, StartWorkflow) else QueueKind.REPLY
