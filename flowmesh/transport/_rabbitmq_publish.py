"""Publishing on RabbitMQ: persistent messages with publisher confirms, one outcome each, and
best-effort answers to inboxes.

Pitfalls of aio-pika/RabbitMQ defaults this module deals with:

* A returned (unroutable) mandatory message is *confirmed* by RabbitMQ. aio-pika raises for
  it only on a channel opened with ``on_return_raises=True``; otherwise ``publish`` returns
  the returned message as if all went well.
* aiormq matches a return to its publish by ``message_id``: every message gets one, and two
  publishes with the same ID are never in flight at once on the confirming channel.
* Publishing waits forever by default, including for a robust connection that is
  reconnecting: every publish here runs under ``publish_timeout``.
* A refusal (ACCESS_REFUSED) closes the channel it came on and fails every publish in flight
  there: the first message to a target goes alone on a probe channel.
* A message larger than the broker's ``max_message_size`` closes the publishing channel and
  fails every publish in flight on it: sizes are checked before anything is sent.
* A publish in flight when its connection is lost (a cluster node died) is never confirmed:
  it fails, and is retried once on the new connection (to the next node) before its
  failure is reported. Never reported as success without a confirm.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import structlog
from aio_pika.abc import AbstractRobustChannel, HeadersType
from aiormq import spec

from flowmesh._errors import FlowmeshError, TransportError, UnroutableError
from flowmesh.transport._base import Outgoing, QueueKind, queue_name
from flowmesh.transport._common import answer_deadline
from flowmesh.transport._rabbitmq_answers import ANSWERS_TYPE, Answer, chunks, pack_answers
from flowmesh.transport._rabbitmq_config import (
    CONTENT_TYPE,
    NOT_PERSISTENT,
    PERSISTENT,
    RabbitMQConfig,
)
from flowmesh.transport._rabbitmq_consumer import ANSWER_BY_HEADER, ATTEMPT_HEADER
from flowmesh.transport._rabbitmq_declare import Declarations
from flowmesh.transport._rabbitmq_errors import (
    Translating,
    connection_lost,
    refused,
    took_channel_down,
)
from flowmesh.transport._rabbitmq_link import Link, open_channel
from flowmesh.transport._rabbitmq_topology import APPS_EXCHANGE, INBOX_EXCHANGE, routing_key

log = structlog.get_logger("flowmesh.transport")

_ANSWERS_FRAME_BYTES = 64 * 1024
"""Answers batched into one message stay under this size (a lone larger answer goes alone)."""

_REFUSAL_REMEMBERED = 1.0
"""Seconds a refused target fails without being sent (each probe closes a channel)."""

Target = tuple[str, QueueKind]
"""An app and one of its queues: what RabbitMQ grants or refuses a publish to."""


class _Route(NamedTuple):
    """How to publish to one target, worked out once per target rather than per message."""

    key: str
    """The routing key on ``fm.apps``."""
    translating: Translating
    """The error boundary of a publish there (it names the queue and the routing key)."""


class Publisher:
    """Publishes for one transport, remembering which targets RabbitMQ accepted or refused.

    The constructor does no I/O; every method takes the open :class:`Link`.
    """

    def __init__(
        self, config: RabbitMQConfig, declarations: Declarations, user_id: str | None
    ) -> None:
        self._timeout = config.publish_timeout
        self._max_bytes = config.max_message_bytes
        self._declarations = declarations
        self._user_id = user_id
        self._no_confirm = f"no publisher confirm within {self._timeout}s"
        self._routes: dict[Target, _Route] = {}
        self._proven: set[Target] = set()
        """Targets this user published to with success: they share the confirming channel.
        Others are probed first, one message at a time on a channel of their own."""
        self._refused: dict[Target, tuple[float, FlowmeshError]] = {}
        """Targets whose probe RabbitMQ refused, when, and how."""
        self._probe_lock = asyncio.Lock()
        self._probing: dict[Target, asyncio.Future[None]] = {}
        self._ids_in_flight: dict[str, asyncio.Future[None]] = {}
        self._message_id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._message_count = 0

    def check_size(self, body: bytes) -> None:
        """Raise :class:`~flowmesh.TransportError` if ``body`` exceeds ``max_message_bytes``."""
        if self._max_bytes is not None and len(body) > self._max_bytes:
            raise TransportError(
                f"message of {len(body)} bytes exceeds the maximum of {self._max_bytes}"
            )

    def new_message_id(self) -> str:
        """A message ID unique to this transport (a random prefix and a counter: cheaper than
        a UUID per message, and just as unique)."""
        self._message_count += 1
        return f"{self._message_id_prefix}{self._message_count:x}"

    async def publish_each(
        self, link: Link, messages: Sequence[Outgoing]
    ) -> list[FlowmeshError | None]:
        """One outcome per message (None: confirmed); see
        :meth:`~flowmesh.transport.rabbitmq.RabbitMQTransport.publish_each`."""
        outcomes: list[FlowmeshError | None] = [None] * len(messages)
        for index, message in enumerate(messages):
            try:
                self.check_size(message.body)
            except TransportError as exc:
                outcomes[index] = exc
        todo = await self._declare_targets(link, messages, outcomes)
        if any(_target(messages[i]) not in self._proven for i in todo):
            todo = await self._probe(link, messages, todo, outcomes)
        await self._publish_proven(link, messages, todo, outcomes)
        await self._redeclare_deleted(link, messages, outcomes)
        await self._retry_lost(link, messages, outcomes)
        return outcomes

    async def _retry_lost(
        self, link: Link, messages: Sequence[Outgoing], outcomes: list[FlowmeshError | None]
    ) -> None:
        """Publish again, once, the messages whose connection was lost before their confirm
        came (a node of the cluster died): the robust channels wait for the connection to
        the next node (up to ``publish_timeout``), so this is the retry on the next node.
        A message may then be delivered twice (the broker may have queued the first copy);
        receivers deduplicate. A second loss is the message's outcome: the caller retries."""
        lost = [i for i, outcome in enumerate(outcomes) if connection_lost(outcome)]
        if not lost:
            return
        log.debug("transport.publish_retried", messages=len(lost), reason="connection lost")
        todo = lost
        if any(_target(messages[i]) not in self._proven for i in lost):
            todo = await self._probe(link, messages, lost, outcomes)
        await self._publish_proven(link, messages, todo, outcomes)

    async def _declare_targets(
        self, link: Link, messages: Sequence[Outgoing], outcomes: list[FlowmeshError | None]
    ) -> list[int]:
        """Declare the queues of apps not declared yet; a failure is the outcome of each of
        the app's messages. Returns the messages left to publish."""
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        for app_id in {messages[i].app_id for i in todo}:
            if self._declarations.declared(app_id):
                continue
            try:
                await self._declarations.app(link, app_id)
            except FlowmeshError as exc:
                for index in todo:
                    if messages[index].app_id == app_id:
                        outcomes[index] = exc
        return [i for i in todo if outcomes[i] is None]

    async def _publish_proven(
        self,
        link: Link,
        messages: Sequence[Outgoing],
        todo: list[int],
        outcomes: list[FlowmeshError | None],
    ) -> None:
        """Publish the messages of proven targets on the confirming channel, all in flight at
        once. If a refusal took the channel down, probe their targets again and retry."""
        if len(todo) == 1:  # the common case: no gather, no task per message
            outcomes[todo[0]] = await self._publish_one(link, messages[todo[0]])
            return
        if not todo:
            return
        results = await asyncio.gather(*(self._publish_one(link, messages[i]) for i in todo))
        for index, result in zip(todo, results, strict=True):
            outcomes[index] = result
        taken_down = [i for i in todo if took_channel_down(outcomes[i])]
        if taken_down:
            self._proven.difference_update(_target(messages[i]) for i in taken_down)
            again = await self._probe(link, messages, taken_down, outcomes)
            for index in again:
                outcomes[index] = await self._publish_one(link, messages[index])

    async def _probe(
        self,
        link: Link,
        messages: Sequence[Outgoing],
        todo: list[int],
        outcomes: list[FlowmeshError | None],
    ) -> list[int]:
        """Publish the first message of each unproven target alone on the probe channel;
        returns the messages left to publish on the confirming channel (those of proven
        targets). A refused target's other messages get its refusal without being sent."""
        by_target: dict[Target, list[int]] = {}
        for index in todo:
            by_target.setdefault(_target(messages[index]), []).append(index)
        left = []
        for target, indexes in by_target.items():
            while (probing := self._probing.get(target)) is not None:
                await asyncio.shield(probing)  # all waiters wake in one turn, publish together
            if target in self._proven:
                left += indexes
                continue
            refusal = self._refused.get(target)
            if refusal is not None and time.monotonic() - refusal[0] < _REFUSAL_REMEMBERED:
                for index in indexes:
                    outcomes[index] = _not_sent(refusal[1])
                continue
            outcome = outcomes[indexes[0]] = await self._probe_one(
                link, target, messages[indexes[0]]
            )
            if outcome is None:
                self._proven.add(target)
                self._refused.pop(target, None)
                left += indexes[1:]
            elif refused(outcome):
                self._refused[target] = (time.monotonic(), outcome)
                for index in indexes[1:]:
                    outcomes[index] = _not_sent(outcome)
            else:
                left += indexes[1:]  # not refused (unroutable, no confirm): each tries itself
        return left

    async def _probe_one(
        self, link: Link, target: Target, outgoing: Outgoing
    ) -> FlowmeshError | None:
        """Publish ``outgoing`` alone on the probe channel; other publishers to ``target``
        wait for the outcome meanwhile."""
        self._probing[target] = done = asyncio.get_running_loop().create_future()
        try:
            async with self._probe_lock:  # one probe in flight: a refusal takes no sibling
                return await self._publish_one(link, outgoing, link.probe)
        finally:
            del self._probing[target]
            done.set_result(None)

    async def _publish_one(
        self, link: Link, outgoing: Outgoing, channel: AbstractRobustChannel | None = None
    ) -> FlowmeshError | None:
        """Publish one message; its error instead of raising it."""
        try:
            await self._publish_outgoing(outgoing, channel or link.confirms)
        except FlowmeshError as exc:
            return exc
        return None

    async def _redeclare_deleted(
        self, link: Link, messages: Sequence[Outgoing], outcomes: list[FlowmeshError | None]
    ) -> None:
        """Declare again the queues of apps whose messages came back unroutable although this
        transport declared them (deleted since), and retry those messages once. Apps whose
        queues this user may not declare are left to the security plan."""
        returned = [
            i
            for i, outcome in enumerate(outcomes)
            if isinstance(outcome, UnroutableError)
            and self._declarations.redeclarable(messages[i].app_id)
        ]
        for app_id in {messages[i].app_id for i in returned}:
            log.warning("transport.queue_redeclared", app_id=app_id, reason="unroutable")
            self._declarations.forget(app_id)
            try:
                await self._declarations.app(link, app_id)
            except FlowmeshError:
                continue  # the message keeps its own failure
        for index in returned:
            if self._declarations.declared(messages[index].app_id):
                outcomes[index] = await self._publish_one(link, messages[index])

    async def _publish_outgoing(self, outgoing: Outgoing, channel: AbstractRobustChannel) -> None:
        headers: HeadersType | None = None
        if outgoing.answer_within is not None:
            # Integer milliseconds: every AMQP client reads a long; not every one a double.
            deadline = answer_deadline(outgoing.answer_within, time.time())
            headers = {ANSWER_BY_HEADER: round(deadline * 1000)}
        if outgoing.attempt > 1:
            headers = {**(headers or {}), ATTEMPT_HEADER: outgoing.attempt}
        properties = spec.Basic.Properties(
            headers=headers,
            delivery_mode=PERSISTENT,
            content_type=CONTENT_TYPE,
            # aiormq needs an ID to match a returned message to its publish.
            message_id=outgoing.message_id or self.new_message_id(),
            reply_to=outgoing.reply_to or None,
            correlation_id=outgoing.correlation_id or None,
            user_id=self._user_id,
        )
        await self.publish_confirmed(
            channel, outgoing.app_id, outgoing.kind, outgoing.body, properties
        )

    async def publish_confirmed(
        self,
        confirms: AbstractRobustChannel,
        app_id: str,
        kind: QueueKind,
        body: bytes,
        properties: spec.Basic.Properties,
    ) -> None:
        """Publish ``body`` to ``app_id``'s ``kind`` queue and wait for the confirm.

        Straight on the aiormq channel under the robust one: aio-pika's ``Message`` and
        ``Exchange.publish`` add several microseconds per message and nothing we use.
        """
        key, translating = self._route(app_id, kind)
        # aiormq finds the publish a returned message belongs to by message ID; with two in
        # flight the return would fail the wrong one and the other would look confirmed.
        message_id = properties.message_id or ""
        while (busy := self._ids_in_flight.get(message_id)) is not None:
            await asyncio.shield(busy)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ids_in_flight[message_id] = done
        try:
            with translating:
                async with asyncio.timeout(self._timeout):
                    channel = await open_channel(confirms)
                    await channel.basic_publish(
                        body,
                        exchange=APPS_EXCHANGE,
                        routing_key=key,
                        properties=properties,
                        mandatory=True,
                        # Do not hold the channel's lock until the writer has taken the
                        # frame: concurrent publishes then queue in one loop turn and leave
                        # in one socket write. The confirm is still awaited (and the frame
                        # queue is bounded, so a slow socket still pushes back).
                        wait=False,
                    )
        finally:
            del self._ids_in_flight[message_id]
            done.set_result(None)

    def _route(self, app_id: str, kind: QueueKind) -> _Route:
        route = self._routes.get((app_id, kind))
        if route is None:
            queue, key = queue_name(app_id, kind), routing_key(app_id, kind)
            action = f"publish to {queue!r} (routing key {key!r} on {APPS_EXCHANGE!r})"
            route = _Route(
                key, Translating(action, user_id=self._user_id, timeout=self._no_confirm)
            )
            self._routes[(app_id, kind)] = route
        return route

    async def publish_answers(self, link: Link, address: str, answers: Sequence[Answer]) -> None:
        """Send ``answers`` to the inbox at ``address``: not persistent, not mandatory, so
        dropped if the inbox is gone; several framed into one message where they fit."""
        limit = min(_ANSWERS_FRAME_BYTES, self._max_bytes or _ANSWERS_FRAME_BYTES)
        with Translating(
            f"send answers to {address!r} on {INBOX_EXCHANGE!r}",
            user_id=self._user_id,
            timeout=f"not sent within {self._timeout}s",
        ):
            async with asyncio.timeout(self._timeout):
                channel = await open_channel(link.replies)
                for group in chunks(answers, limit):
                    if len(group) == 1:
                        correlation_id, body = group[0]
                        kind = None
                    else:
                        correlation_id, body, kind = "", pack_answers(group), ANSWERS_TYPE
                    properties = spec.Basic.Properties(
                        delivery_mode=NOT_PERSISTENT,
                        correlation_id=correlation_id or None,
                        content_type=CONTENT_TYPE,
                        message_type=kind,
                        user_id=self._user_id,
                    )
                    await channel.basic_publish(
                        body,
                        exchange=INBOX_EXCHANGE,
                        routing_key=address,
                        properties=properties,
                        wait=False,  # see publish_confirmed
                    )


def _target(outgoing: Outgoing) -> Target:
    return outgoing.app_id, outgoing.kind


def _not_sent(refusal: FlowmeshError) -> TransportError:
    error = TransportError(f"not sent: {refusal}")
    error.__cause__ = refusal.__cause__
    return error


__all__ = ["Publisher", "Target"]
