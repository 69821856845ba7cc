"""Connections and channels of the RabbitMQ transport.

Two robust connections: one publishes (publisher confirms, ``mandatory``), one consumes, so
flow control that blocks a publishing connection cannot stall consumers' acks, and the
reverse. Both start at the same randomly chosen node of the URL list and fail over on their
own (:mod:`flowmesh.transport._rabbitmq_failover`). Broker calls that may fail with a channel
error (a passive declare, a declaration with other arguments) use short-lived plain channels
(:func:`plain_channel`): the error closes the channel, and a robust one would then reopen
itself.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection

from flowmesh.transport._rabbitmq_config import RabbitMQConfig
from flowmesh.transport._rabbitmq_errors import FAILURES
from flowmesh.transport._rabbitmq_failover import FailoverConnection, connect_failover
from flowmesh.transport._rabbitmq_nodes import NodeRing

log = structlog.get_logger("flowmesh.transport")


@dataclass(frozen=True, slots=True)
class Link:
    """What :meth:`~flowmesh.transport.rabbitmq.RabbitMQTransport.connect` opens."""

    publish: AbstractRobustConnection
    consume: AbstractRobustConnection
    confirms: AbstractRobustChannel
    """Publisher confirms on, returned messages raise."""
    replies: AbstractRobustChannel
    """No confirms: answers to inboxes are best effort."""
    probe: AbstractRobustChannel
    """Like ``confirms``, for the first message to a target not proven yet: a refusal
    (ACCESS_REFUSED) closes the channel it came on, failing every publish in flight there."""


async def open_connections(config: RabbitMQConfig, opened: list[AbstractRobustConnection]) -> None:
    """Open the publishing and the consuming connection, appending each to ``opened`` as it
    opens (so that the caller can close them if the next step fails).

    Each connection tries the nodes in turn from one random start (the same for both, so a
    transport normally uses one node), each for up to ``operation_timeout``.
    """
    context = ssl_context(config)
    start = random.randrange(len(config.nodes))  # spreads load; not a secret
    for role in ("publish", "consume"):
        # connect's own timeout, not an outer one: cancelling it half way would leave its
        # reconnect loop running in the background.
        opened.append(
            await connect_failover(
                NodeRing(config.nodes, start),
                timeout=config.operation_timeout,
                connection_name=f"{config.connection_name} {role}",
                reconnect_interval=config.reconnect_interval,
                ssl_context=context,
            )
        )


async def open_link(publish: AbstractRobustConnection, consume: AbstractRobustConnection) -> Link:
    """The publishing channels on ``publish``, with both connections (callers bound the
    wait)."""
    confirms = await publish.channel(publisher_confirms=True, on_return_raises=True)
    replies = await publish.channel(publisher_confirms=False)
    probe = await publish.channel(publisher_confirms=True, on_return_raises=True)
    return Link(publish, consume, confirms, replies, probe)


def node_of(connection: AbstractRobustConnection) -> str:
    """``host:port`` of the node ``connection`` uses (or reconnects to next)."""
    return connection.node if isinstance(connection, FailoverConnection) else "?"


def ssl_context(config: RabbitMQConfig) -> ssl.SSLContext | None:
    """The TLS context for an ``amqps://`` URL (None for ``amqp://``)."""
    tls = config.effective_tls
    if tls is None:
        return None
    if not tls.verify:
        log.warning(
            "transport.tls_verification_disabled",
            url=config.masked_url,
            detail="the broker's certificate is not checked: anyone on the path can "
            "impersonate it (development only)",
        )
    return tls.ssl_context()


@asynccontextmanager
async def plain_channel(
    connection: AbstractRobustConnection, close_timeout: float
) -> AsyncIterator[AbstractChannel]:
    """A short-lived, non-robust channel for calls that may fail with a channel error.

    A broker error closes the channel; a robust one would then try to reopen itself.
    """
    await connection.ready()
    channel = aio_pika.Channel(connection, publisher_confirms=False)
    await channel.initialize()
    try:
        yield channel
    finally:
        if not channel.is_closed:
            await close_quietly(channel, close_timeout)


async def close_quietly(
    closable: AbstractChannel | AbstractRobustConnection, timeout: float
) -> None:
    """Close a channel or a connection, giving up after ``timeout``; a failure is ignored
    (the broker drops what a dead connection held)."""
    with suppress(*FAILURES):
        async with asyncio.timeout(timeout):
            await closable.close()


async def open_channel(channel: AbstractRobustChannel) -> aiormq.Channel:
    """The aiormq channel under ``channel``, once it is open (its ``basic_publish`` takes
    ``wait``, which the abstract interface does not declare).

    Waits out a reconnect, or a robust channel reopening after a channel error (such as an
    oversized message), instead of failing at once. Right after the error ``ready()`` can
    still report the old, open state, so poll briefly; callers bound the wait with their
    timeout.
    """
    await channel.ready()
    while channel.is_closed:
        await asyncio.sleep(0.05)
        await channel.ready()
    return cast("aiormq.Channel", await channel.get_underlay_channel())


__all__ = [
    "Link",
    "close_quietly",
    "node_of",
    "open_channel",
    "open_connections",
    "open_link",
    "plain_channel",
    "ssl_context",
]
