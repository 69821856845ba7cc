"""Purging a finished instance and, asked recursively, its children on any app, counting
what was deleted.

The host sends each child's host a purge first (durably, to the child app's reply queue),
then deletes its own instance, then waits a bounded time for the children's answers, each
carrying how many instances that child's purge deleted (its own children included). A child
whose host does not answer in time keeps its purge queued: it is applied when a replica of
that app comes back, but it is not counted, and the answer names it (``not_purged``). Sending
the children's purges before deleting the parent means a host that dies halfway leaves no
child without its purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowmesh._errors import FlowmeshError
from flowmesh.codec import Codec
from flowmesh.model import (
    ChildWorkflowScheduled,
    Control,
    ControlAction,
    Message,
    StateReply,
    WorkflowState,
)
from flowmesh.runtime._live import Live
from flowmesh.security import AppUsers
from flowmesh.store import WorkflowStore
from flowmesh.transport import Delivery, Inbox, Outgoing, QueueKind, Transport

CHILD_ANSWER_WAIT = 10.0
"""Longest wait (s) for the children's hosts to confirm their purges. Shorter when the one
asking waits less: the purge request's answer deadline minus :data:`ANSWER_MARGIN`, so the
count reaches the client (or the parent's host) before it gives up."""

ANSWER_MARGIN = 0.5
"""Seconds kept between the end of the wait for children and the asker's deadline."""


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    """What a purge did: how many instances it deleted (this one and its children), the
    state of an instance it left because it has not finished, and children not purged."""

    purged: int = 0
    kept: WorkflowState | None = None
    not_purged: tuple[str, ...] = ()


class Purger:
    """Purges the instances of one app's orchestrator (see the module docstring)."""

    def __init__(
        self,
        app_id: str,
        *,
        store: WorkflowStore,
        transport: Transport,
        codec: Codec,
        users: AppUsers | None,
        log: Any,
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._transport = transport
        self._codec = codec
        self._users = users
        self._log = log

    async def purge(
        self, instance_id: str, live: Live | None, message: Control, askers: Sequence[Delivery]
    ) -> PurgeOutcome:
        """Purge ``instance_id`` if it exists and has finished (an unfinished one is left as
        it is, with a warning); ``askers`` are the deliveries waiting for the answer."""
        if live is None:
            return PurgeOutcome()
        if not live.state.status.is_terminal:
            self._log.warning(
                "purge refused: instance is not finished",
                instance_id=instance_id,
                status=live.state.status.value,
            )
            return PurgeOutcome(kept=live.state)
        children = (
            [e for e in live.history if isinstance(e, ChildWorkflowScheduled)]
            if message.recursive
            else []
        )
        wait = _wait_for(askers) if children and askers else 0.0
        inbox = await self._open_inbox() if wait > 0 else None
        try:
            ids = [secrets.token_hex(16) if inbox else "" for _ in children]
            with contextlib.ExitStack() as expecting:
                if inbox is not None:
                    for correlation_id in ids:
                        expecting.enter_context(inbox.expecting(correlation_id))
                await self._transport.publish(
                    [
                        Outgoing(
                            child.app_id,
                            QueueKind.REPLY,
                            self._codec.encode_message(
                                Control(child.instance_id, ControlAction.PURGE, recursive=True)
                            ),
                            reply_to=inbox.address if inbox else "",
                            correlation_id=correlation_id,
                            answer_within=wait if inbox else None,
                        )
                        for child, correlation_id in zip(children, ids, strict=True)
                    ]
                )
                await self._store.purge(instance_id)
                self._log.info("instance purged", instance_id=instance_id)
                if not children or not askers:
                    return PurgeOutcome(purged=1)
                if inbox is None:
                    return PurgeOutcome(1, None, tuple(_unconfirmed(c, wait) for c in children))
                answers = await asyncio.gather(
                    *(
                        self._child_answer(inbox, correlation_id, child, wait)
                        for child, correlation_id in zip(children, ids, strict=True)
                    )
                )
        finally:
            if inbox is not None:
                with contextlib.suppress(FlowmeshError, OSError):
                    await inbox.close()
        return PurgeOutcome(
            purged=1 + sum(count for count, _ in answers),
            not_purged=tuple(note for _, notes in answers for note in notes),
        )

    async def _open_inbox(self) -> Inbox | None:
        """An inbox for the children's answers; None if this user may not open one (a
        security plan from before counted purges): the children are then not waited for."""
        try:
            return await self._transport.open_inbox()
        except FlowmeshError as exc:
            self._log.warning("no inbox for the answers of child purges", error=str(exc))
            return None

    async def _child_answer(
        self, inbox: Inbox, correlation_id: str, child: ChildWorkflowScheduled, wait: float
    ) -> tuple[int, tuple[str, ...]]:
        """(instances the child's purge deleted, children it did not purge and why)."""
        sender = self._users.user(child.app_id) if self._users else ""
        raw = await inbox.receive(correlation_id, wait, sender=sender)
        if raw is None:
            return 0, (_unconfirmed(child, wait),)
        try:
            answer: Message = self._codec.decode_message(raw, app_id=child.app_id)
        except FlowmeshError as exc:
            return 0, (f"{_child(child)}: bad answer ({exc})",)
        if not isinstance(answer, StateReply):
            return 0, (f"{_child(child)}: answered with {type(answer).__name__}",)
        if answer.state is not None:
            status = answer.state.status.value
            return 0, (f"{_child(child)} has not finished (status {status}): not purged",)
        return answer.purged, answer.not_purged


def purge_replies(
    askers: Sequence[Delivery], instance_id: str, outcome: PurgeOutcome
) -> list[tuple[Delivery, Message]]:
    """The answers to a purge: the count, and the state only if the instance was kept."""
    reply = StateReply(
        instance_id, outcome.kept, purged=outcome.purged, not_purged=outcome.not_purged
    )
    return [(delivery, reply) for delivery in askers]


def _wait_for(askers: Sequence[Delivery]) -> float:
    """How long to wait for children's answers, given the askers' answer deadlines."""
    deadline = max(d.answer_by for d in askers)
    if deadline <= 0:
        return CHILD_ANSWER_WAIT
    return max(0.0, min(CHILD_ANSWER_WAIT, deadline - time.time() - ANSWER_MARGIN))


def _child(child: ChildWorkflowScheduled) -> str:
    return f"child {child.instance_id!r} on app {child.app_id!r}"


def _unconfirmed(child: ChildWorkflowScheduled, wait: float) -> str:
    return (
        f"{_child(child)}: no answer within {wait:.1f}s; its purge stays queued for that app "
        "and applies when a replica of it runs"
    )
