"""Request/reply inboxes on RabbitMQ: one exclusive, auto-deleted queue per inbox, bound to the
``fm.inbox`` topic exchange with its own name as routing key (answers never go through the
default exchange, see :mod:`flowmesh.transport._rabbitmq_topology`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

# Shared with the memory transport, which must not import aio-pika.
from flowmesh.transport._common import _AnswerBuffer, _new_inbox_address
from flowmesh.transport._rabbitmq_answers import ANSWERS_TYPE, unpack_answers
from flowmesh.transport._rabbitmq_consumer import BROKER_ERRORS
from flowmesh.transport._rabbitmq_topology import INBOX_EXCHANGE, INBOX_PATTERN

_ADDRESS = re.compile(INBOX_PATTERN)
log = structlog.get_logger("flowmesh.transport")


def is_inbox_address(address: str) -> bool:
    """Whether ``address`` names an inbox (and so not, say, another app's work queue).

    ``reply_to`` comes from whoever sent the request; answering to any queue name it
    names would let a sender inject messages into queues of apps it cannot publish to.
    """
    return _ADDRESS.fullmatch(address) is not None


class RabbitInbox:
    """A private queue on the consuming connection; answers are buffered by correlation ID.

    The queue has a client-chosen name (not a server-named ``amq.gen-*``): aio-pika
    redeclares it under that name after a reconnect, so the address stays valid. Answers
    sent while the connection was down are lost, as with any non-durable queue.
    """

    def __init__(self, *, forget: Callable[[RabbitInbox], None], close_timeout: float) -> None:
        self._address = _new_inbox_address()
        self._forget = forget
        self._close_timeout = close_timeout
        self._buffer = _AnswerBuffer()
        self._channel: AbstractRobustChannel | None = None

    @property
    def address(self) -> str:
        """Pass as ``reply_to`` so receivers can answer here."""
        return self._address

    async def open(self, connection: AbstractRobustConnection) -> None:
        """Declare the queue, bind it and start consuming it (no acks: answers are best
        effort). The robust channel redeclares and rebinds it after a reconnect."""
        self._channel = await connection.channel(publisher_confirms=False)
        queue = await self._channel.declare_queue(
            self._address, exclusive=True, auto_delete=True, durable=False
        )
        await queue.bind(INBOX_EXCHANGE, self._address)
        await queue.consume(self._on_answer, no_ack=True)

    def expecting(self, correlation_id: str) -> AbstractContextManager[None]:
        """Within the block, answers carrying ``correlation_id`` are kept until received."""
        return self._buffer.expecting(correlation_id)

    async def receive(
        self, correlation_id: str, timeout: float, *, sender: str = ""
    ) -> bytes | None:
        """The next answer carrying ``correlation_id`` (sent by broker user ``sender``, if
        given), or None after ``timeout`` seconds."""
        return await self._buffer.get(correlation_id, timeout, sender)

    async def close(self) -> None:
        """Delete the queue and close its channel; waiting receivers get None."""
        self._forget(self)
        self._buffer.close()
        channel, self._channel = self._channel, None
        if channel is None:
            return
        with suppress(*BROKER_ERRORS):
            async with asyncio.timeout(self._close_timeout):
                await channel.queue_delete(self._address)
        with suppress(*BROKER_ERRORS):
            async with asyncio.timeout(self._close_timeout):
                await channel.close()

    def _on_answer(self, message: AbstractIncomingMessage) -> None:
        # A plain function: aio-pika would run a coroutine in a task of its own per answer.
        # RabbitMQ verified user_id against the publisher's connection: the sender's identity.
        user_id = message.user_id or ""
        if message.type != ANSWERS_TYPE:
            self._buffer.put(message.correlation_id or "", message.body, user_id)
            return
        try:
            answers = unpack_answers(message.body, max_bytes=len(message.body))
        except ValueError as exc:
            # Anyone allowed to answer inboxes could send this; it must not stop the inbox.
            log.warning("transport.answers_dropped", inbox=self._address, error=str(exc))
            return
        for correlation_id, body in answers:
            self._buffer.put(correlation_id, body, user_id)
