"""Answers: replies to a step's senders, ``describe()`` requests and result waiters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flowmesh.codec import Codec
from flowmesh.model import (
    Describe,
    Message,
    PendingTask,
    StateReply,
    WorkflowState,
    WorkflowStatus,
)
from flowmesh.store import Waiter, WorkflowStore
from flowmesh.transport import Delivery, Transport


class Replies:
    """Sends the answers of one app's orchestrator over the transport's reply path."""

    def __init__(
        self, app_id: str, *, store: WorkflowStore, transport: Transport, codec: Codec
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._transport = transport
        self._codec = codec

    async def send(self, replies: Sequence[tuple[Delivery, Message]]) -> None:
        for delivery, reply in replies:
            await self._transport.send_reply(
                delivery.reply_to,
                delivery.correlation_id,
                self._codec.encode_message(reply, app_id=self._app_id),
                answer_by=delivery.answer_by,  # a start's answer after its client gave up
            )

    async def describe(self, delivery: Delivery, message: Describe) -> None:
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
                state = await self.waiting_start_state(message.instance_id)
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

    async def waiting_start_state(self, instance_id: str) -> WorkflowState | None:
        """A PENDING state for a start that waits for a replica registering its workflow
        (so ``describe()`` says why nothing runs), or None."""
        waiting = await self._store.waiting_start(instance_id)
        if waiting is None:
            return None
        name, note = waiting
        pending = PendingTask("deployment", name, self._app_id, detail=note)
        return WorkflowState(
            instance_id, self._app_id, name, WorkflowStatus.PENDING, waiting_on=(pending,)
        )

    async def notify_waiters(
        self, instance_id: str, state: WorkflowState, waiters: Sequence[Waiter]
    ) -> None:
        body = self._codec.encode_message(StateReply(instance_id, state))
        for waiter in waiters:
            # No correlation ID: stored by a host that predates them, for a client that
            # expects the old fixed one.
            correlation_id = waiter.correlation_id or "wait:" + instance_id
            await self._transport.send_reply(waiter.address, correlation_id, body)


def state_replies(
    controls: Sequence[Delivery], instance_id: str, state: WorkflowState | None
) -> list[tuple[Delivery, Message]]:
    """Answers to controls sent with ``reply_to``: the state the step left (None: no such
    instance, or purged)."""
    return [(delivery, StateReply(instance_id, state)) for delivery in controls]
