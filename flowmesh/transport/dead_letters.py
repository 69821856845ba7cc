"""Operator access to an app's dead-letter queue ``fm.<app>.dead``: list, redrive, drop.

Nothing consumes a dead queue, so reading it means taking messages with ``basic.get`` and
giving back the ones left alone: every message taken is held unacknowledged on one channel
until :meth:`DeadLetters.close`, which returns the rest to the queue (closing the channel,
so they keep their place at its head). The queue is only looked up (passive declare), never
created. A redrive publishes a copy to the message's original queue through ``fm.apps`` with
a publisher confirm and only then acks the dead copy, so a failure leaves it dead-lettered.

Headers written by :meth:`RabbitMQTransport.dead_letter` (``docs/protocol.md``):
``x-flowmesh-reason``, ``x-flowmesh-delivery-count``, ``x-flowmesh-original-queue``,
``x-flowmesh-original-user-id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from flowmesh._errors import TransportError
from flowmesh.transport._base import QueueKind, queue_name
from flowmesh.transport._rabbitmq_topology import APPS_EXCHANGE, routing_key

__all__ = ["DeadLetter", "DeadLetters"]

_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead queue, as the operator sees it."""

    position: int
    """0 for the oldest message read."""
    message_id: str
    reason: str
    original_queue: str
    """``fm.<app>.<kind>`` it was taken from; empty if unknown (then it cannot be redriven)."""
    original_user_id: str
    delivery_count: int
    body: bytes
    correlation_id: str
    reply_to: str


class DeadLetters:
    """The dead queue of ``app_id`` on one connection (``async with``)."""

    def __init__(self, url: str, app_id: str, *, limit: int = 10_000) -> None:
        self._url = url
        self._app_id = app_id
        self._limit = limit
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._taken: list[tuple[DeadLetter, AbstractIncomingMessage]] = []

    async def __aenter__(self) -> Self:
        try:
            async with asyncio.timeout(_TIMEOUT):
                self._connection = await aio_pika.connect(self._url)
                self._channel = await self._connection.channel(publisher_confirms=True)
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
            await self.close()
            raise TransportError(f"cannot connect to RabbitMQ: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def read(self) -> list[DeadLetter]:
        """Every message of the queue, oldest first (at most ``limit``), held until close."""
        channel = self._require()
        name = queue_name(self._app_id, QueueKind.DEAD)
        try:
            async with asyncio.timeout(_TIMEOUT):
                queue = await channel.declare_queue(name, passive=True)
                while len(self._taken) < self._limit:
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    letter = _letter(len(self._taken), message)
                    self._taken.append((letter, message))
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise TransportError(f"app {self._app_id!r} has no dead queue {name!r}") from exc
        except (TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise TransportError(f"reading {name!r} failed: {exc}") from exc
        return [letter for letter, _ in self._taken]

    async def drop(self, letter: DeadLetter) -> None:
        """Delete ``letter`` from the dead queue for good."""
        await self._message(letter).ack()

    async def redrive(self, letter: DeadLetter) -> None:
        """Publish ``letter`` to its original queue (confirmed), then delete the dead copy.

        The copy carries this connection's user as ``user_id`` (RabbitMQ allows no other),
        and no flowmesh headers.
        """
        target = _original(letter.original_queue, self._app_id)
        if target is None:
            raise TransportError(
                f"message {letter.message_id!r} has no usable x-flowmesh-original-queue "
                f"({letter.original_queue!r}): cannot tell where to redrive it"
            )
        channel = self._require()
        message = aio_pika.Message(
            letter.body,
            message_id=letter.message_id or None,
            correlation_id=letter.correlation_id or None,
            reply_to=letter.reply_to or None,
            content_type="application/x-msgpack",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=_user(self._url),
        )
        try:
            async with asyncio.timeout(_TIMEOUT):
                exchange = await channel.get_exchange(APPS_EXCHANGE, ensure=False)
                await exchange.publish(message, routing_key=routing_key(*target), mandatory=True)
        except aio_pika.exceptions.PublishError as exc:
            raise TransportError(f"no queue takes {routing_key(*target)!r}: {exc}") from exc
        except (TimeoutError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"redriving {letter.message_id!r} failed: {exc}") from exc
        await self._message(letter).ack()

    async def close(self) -> None:
        """Give back every message read and not dropped or redriven; close the connection."""
        connection, self._connection, self._channel = self._connection, None, None
        self._taken = []
        if connection is not None:
            try:
                async with asyncio.timeout(_TIMEOUT):
                    await connection.close()
            except (TimeoutError, aio_pika.exceptions.AMQPError, OSError):
                pass

    def _require(self) -> AbstractChannel:
        if self._channel is None:
            raise TransportError("not connected: use `async with DeadLetters(...)`")
        return self._channel

    def _message(self, letter: DeadLetter) -> AbstractIncomingMessage:
        return self._taken[letter.position][1]


def _letter(position: int, message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}

    def text(name: str) -> str:
        value = headers.get(name)
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")

    count = headers.get("x-flowmesh-delivery-count")
    reason, original_queue = text("x-flowmesh-reason"), text("x-flowmesh-original-queue")
    if not reason:
        # Dead-lettered by the broker itself (the queue's delivery limit), not by flowmesh:
        # RabbitMQ records why and where from in the first x-death entry.
        reason, original_queue = _broker_death(headers)
    return DeadLetter(
        position=position,
        message_id=message.message_id or "",
        reason=reason,
        original_queue=original_queue,
        original_user_id=text("x-flowmesh-original-user-id"),
        delivery_count=count if isinstance(count, int) else 0,
        body=message.body,
        correlation_id=message.correlation_id or "",
        reply_to=message.reply_to or "",
    )


def _broker_death(headers: Mapping[str, object]) -> tuple[str, str]:
    """``(reason, original queue)`` from RabbitMQ's ``x-death`` header ('' if absent)."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return "", ""
    first = deaths[0]

    def text(value: object) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")

    cause = text(first.get("reason"))
    return f"dead-lettered by the broker: {cause}", text(first.get("queue"))


def _original(queue: str, app_id: str) -> tuple[str, QueueKind] | None:
    """``(app, kind)`` of ``fm.<app>.<kind>``, if it is one of ``app_id``'s live queues."""
    for kind in (QueueKind.WORK, QueueKind.REPLY, QueueKind.QUARANTINE):
        if queue == queue_name(app_id, kind):
            return app_id, kind
    return None


def _user(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    username = urlsplit(url).username
    return unquote(username) if username else "guest"
