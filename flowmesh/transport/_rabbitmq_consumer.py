"""Consuming from RabbitMQ: deliveries, their settlement, and the per-queue subscription."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from contextlib import suppress

import aiormq.abc
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from flowmesh._errors import TransportError
from flowmesh.transport._base import Handler

# Shared with the memory transport, which must not import aio-pika.
from flowmesh.transport._common import _run_handler, _stop_handlers

log = structlog.get_logger("flowmesh.transport")

BROKER_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError, not an AMQPError
    OSError,
)
"""What aio-pika/aiormq raise when the broker, the channel or the socket fails.

``TimeoutError`` is an ``OSError``: catch it first where a timeout means something else.
"""


ANSWER_BY_HEADER = "x-flowmesh-answer-by"
"""Header of a request: when its sender stops waiting for the answer (epoch milliseconds)."""


ATTEMPT_HEADER = "x-flowmesh-attempt"
"""Header of a message flowmesh republished because it could not process it yet: the attempt
the copy is (2 for the first republish). Absent means 1."""


def describe(exc: BaseException) -> str:
    """A one-line description of ``exc`` (some aiormq errors have an empty ``str``)."""
    return str(exc) or type(exc).__name__


class RabbitDelivery:
    """A message received from a queue; settling it acks or rejects it on its channel."""

    __slots__ = ("_message", "_queue", "_settle_timeout", "_settled")

    def __init__(
        self, message: AbstractIncomingMessage, queue: str, *, settle_timeout: float = 10.0
    ) -> None:
        self._message = message
        self._queue = queue
        self._settle_timeout = settle_timeout
        self._settled = False

    @property
    def body(self) -> bytes:
        """The raw message bytes."""
        return self._message.body

    @property
    def message_id(self) -> str:
        """The publisher's message ID ('' if none)."""
        return self._message.message_id or ""

    @property
    def reply_to(self) -> str:
        """Inbox address to answer on ('' if none)."""
        return self._message.reply_to or ""

    @property
    def correlation_id(self) -> str:
        """Correlation ID to answer with ('' if none)."""
        return self._message.correlation_id or ""

    @property
    def user_id(self) -> str:
        """The publisher's RabbitMQ user (the broker checked it), or '' if not set."""
        return self._message.user_id or ""

    @property
    def answer_by(self) -> float:
        """When the sender stops waiting for an answer (epoch seconds; 0.0 if the message
        does not say, or says it in a form other than a positive integer)."""
        headers = self._message.headers
        raw = headers.get(ANSWER_BY_HEADER) if headers else None
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            return raw / 1000
        return 0.0

    @property
    def delivery_count(self) -> int:
        """1 on first delivery, then 1 + the quorum queue's ``x-delivery-count`` header.

        Quorum queues add the header on redelivery (after a requeue or when the consuming
        channel closed with the message unacked); classic queues never do.
        """
        previous = (self._message.headers or {}).get("x-delivery-count")
        if isinstance(previous, int) and not isinstance(previous, bool) and previous >= 0:
            return previous + 1
        return 1

    @property
    def attempt(self) -> int:
        """The ``x-flowmesh-attempt`` header (1 if absent or not a positive integer)."""
        headers = self._message.headers
        raw = headers.get(ATTEMPT_HEADER) if headers else None
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 1:
            return raw
        return 1

    @property
    def queue(self) -> str:
        """The queue the message came from."""
        return self._queue

    @property
    def pending(self) -> bool:
        """Not settled through this object yet."""
        return not self._settled

    @property
    def channel_open(self) -> bool:
        """Whether the channel the message came on can still settle it."""
        try:
            _ = self._message.channel  # raises once the channel is closed
        except aiormq.exceptions.ChannelInvalidStateError:
            return False
        return True

    async def ack(self) -> None:
        """Remove the message from the queue."""
        await self._settle(requeue=None)

    async def requeue(self) -> None:
        """Give the message back to the queue; a quorum queue counts the redelivery."""
        await self._settle(requeue=True)

    @staticmethod
    async def _send_settle(
        channel: aiormq.abc.AbstractChannel, tag: int, requeue: bool | None
    ) -> None:
        # wait=False: the frame is queued for the connection's writer, not waited for. A
        # settle has no answer anyway, and a queued frame is lost only with the connection,
        # when the broker redelivers the message as after any lost settle.
        if requeue is None:
            await channel.basic_ack(delivery_tag=tag, wait=False)
        else:
            await channel.basic_reject(delivery_tag=tag, requeue=requeue, wait=False)

    async def _settle(self, *, requeue: bool | None) -> None:
        """Ack (``requeue`` None) or reject, straight on the aiormq channel the message came
        on (aio-pika's ``IncomingMessage.ack`` adds bookkeeping we do here ourselves)."""
        if self._settled:
            raise TransportError(f"delivery {self.message_id!r} was already settled")
        self._settled = True
        action = "ack" if requeue is None else "requeue"
        try:
            # Bounded: aiormq queues outgoing frames in a small per-connection queue (10
            # frames) that only the connection's writer task empties. When the connection
            # dies under load, an ack/reject issued before the channel notices can wait for
            # room in that queue forever, wedging the handler (and, in the orchestrator,
            # every later message of the same instance). Past the timeout the settle did
            # not reach the broker, which redelivers the message like after any lost settle.
            channel = self._message.channel  # raises once the channel is closed
            tag = self._message.delivery_tag
            if tag is None:  # a no_ack delivery: nothing to settle
                return
            frames: asyncio.Queue[object] | None = getattr(channel, "write_queue", None)
            if frames is not None and not frames.full():
                # Room in the queue: the frame is queued without waiting, so no timer is
                # needed (a timer per settle is a measurable share of a busy worker's CPU).
                await self._send_settle(channel, tag, requeue)
            else:
                async with asyncio.timeout(self._settle_timeout):
                    await self._send_settle(channel, tag, requeue)
        except TimeoutError:
            log.warning(
                "transport.settle_failed",
                action=action,
                queue=self._queue,
                message_id=self.message_id,
                error=f"no answer from the connection within {self._settle_timeout}s",
            )
        except BROKER_ERRORS as exc:
            # The channel the message came on is gone (connection lost, consumer cancelled):
            # the broker has already put the message back and will deliver it again.
            log.warning(
                "transport.settle_failed",
                action=action,
                queue=self._queue,
                message_id=self.message_id,
                error=describe(exc),
            )


class RabbitSubscription:
    """A consumer on its own robust channel, so prefetch and recovery are per subscription.

    aio-pika restores the channel, its QoS and the consumer after a connection loss.
    """

    def __init__(
        self,
        queue_name: str,
        channel: AbstractRobustChannel,
        handler: Handler,
        *,
        forget: Callable[[RabbitSubscription], None],
        close_timeout: float,
        drain_timeout: float,
    ) -> None:
        self._queue_name = queue_name
        self._channel = channel
        self._handler = handler
        self._forget = forget
        self._close_timeout = close_timeout
        self._drain_timeout = drain_timeout
        self._queue: AbstractRobustQueue | None = None
        self._consumer_tag = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = True

    async def start(self, queue: AbstractRobustQueue) -> None:
        """Start consuming ``queue`` (declared on this subscription's channel)."""
        self._queue = queue
        self._consumer_tag = await queue.consume(self._on_message)

    async def cancel(self) -> None:
        """Stop receiving, let handlers finish for the drain timeout, cancel the rest, then
        close the channel: that returns the deliveries still unsettled to the queue."""
        if not self._active:
            return
        self._active = False
        self._forget(self)
        if self._queue is not None:
            # Tell the broker first so it stops sending while handlers unwind.
            with suppress(*BROKER_ERRORS):
                async with asyncio.timeout(self._close_timeout):
                    await self._queue.cancel(self._consumer_tag)
        await _stop_handlers(self._tasks, self._drain_timeout)
        with suppress(*BROKER_ERRORS):
            async with asyncio.timeout(self._close_timeout):
                await self._channel.close()

    def _on_message(self, message: AbstractIncomingMessage) -> None:
        # The handler gets a task of its own, not aiormq's consumer task, which a channel
        # close cancels: a connection loss must not interrupt it half way (its settle then
        # fails harmlessly and the broker redelivers). A plain function, not a coroutine:
        # aio-pika would wrap a coroutine in one more task per message.
        if not self._active:
            return  # left unacked: the channel close that follows returns it
        delivery = RabbitDelivery(message, self._queue_name, settle_timeout=self._close_timeout)
        task = asyncio.create_task(
            _run_handler(self._handler, delivery, self._queue_name),
            name=f"flowmesh-consume-{self._queue_name}",
            context=contextvars.Context(),  # no log bindings from whatever ran before
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = [
    "ANSWER_BY_HEADER",
    "ATTEMPT_HEADER",
    "BROKER_ERRORS",
    "RabbitDelivery",
    "RabbitSubscription",
    "describe",
]
