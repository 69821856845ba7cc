"""Connections that fail over between the nodes of a RabbitMQ cluster.

aio-pika's robust connection already does what a reconnect needs: on connection loss it
connects again, then reopens every robust channel with its QoS and publisher-confirm mode,
declares its exchanges and queues again (with the same arguments), restores their bindings
and restarts their consumers. It reconnects to one URL, though. :class:`FailoverConnection`
keeps all of that and changes only where it reconnects to: each failed attempt and each lost
connection moves it to the next node of a :class:`~flowmesh.transport._rabbitmq_nodes.NodeRing`
(started at a random node). The next node is tried after :data:`NEXT_NODE_PAUSE`; once every
node failed in a round the pause is ``reconnect_interval``, doubling with every further round
up to :data:`MAX_BACKOFF`. With one URL nothing changes: the same node, every
``reconnect_interval``.

Failover happens underneath the transport's robust channels, so nothing above them changes:
publishes wait for the channel to come back (bounded by ``publish_timeout``), consumers resume
on the new node, and deliveries received on the lost connection are settled on their own
(closed) channel, which fails harmlessly: the broker has already returned them to their queue
and delivers them again (see ``docs/protocol.md``, "RabbitMQ cluster").
"""

from __future__ import annotations

import asyncio
import ssl
import time
from contextlib import suppress
from typing import Any

import structlog
from yarl import URL

from flowmesh._masking import mask_secrets
from flowmesh.transport._rabbitmq_consumer import describe
from flowmesh.transport._rabbitmq_errors import FAILURES
from flowmesh.transport._rabbitmq_nodes import NodeRing, node_address
from flowmesh.transport._rabbitmq_writes import (
    BufferingRobustConnection,
    TurnBufferedTransportFactory,
)

log = structlog.get_logger("flowmesh.transport")

MAX_BACKOFF = 30.0
"""Longest pause between reconnect attempts once every node of a list failed (seconds; the
configured ``reconnect_interval`` if that is longer)."""

NEXT_NODE_PAUSE = 0.1
"""Pause before trying the next node while not every node failed yet (seconds)."""

_LOG_EVERY = 30.0
"""Failed reconnect attempts are logged at most once per this many seconds per connection."""


class FailoverConnection(BufferingRobustConnection):
    """A robust connection that reconnects to the next node of its ring.

    aio-pika's reconnect loop reads ``self.url`` for every attempt and calls
    ``_on_connection_close`` after every failed attempt and every lost connection, so that is
    where the next node is chosen; ``reconnect_interval`` is read after each attempt, so that
    is where the backoff goes.
    """

    def __init__(self, ring: NodeRing, *, name: str, **kwargs: Any) -> None:
        super().__init__(URL(ring.current), **kwargs)
        self._ring = ring
        self._name = name
        self._base_interval: float = self.reconnect_interval
        self._up = False
        self._down_since = 0.0
        self._failed_attempts = 0
        self._logged_at = 0.0

    @property
    def node(self) -> str:
        """``host:port`` of the node this connection uses (or tries next)."""
        return node_address(self._ring.current)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed):
            self._next_node(closing)
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()  # raises if restoring the channels failed
        self._ring.connected()
        self.reconnect_interval = self._base_interval
        if self._down_since:
            log.info(
                "transport.reconnected",
                connection=self._name,
                node=self.node,
                after_s=round(time.monotonic() - self._down_since, 3),
                failed_attempts=self._failed_attempts,
            )
        self._up, self._down_since, self._failed_attempts = True, 0.0, 0

    def _next_node(self, closing: asyncio.Future[Any]) -> None:
        """Point the next attempt at the next node and pick the pause before it."""
        error = _reason(closing)
        was_up, lost = self._up, self.node
        self._up = False
        self._ring.advance(failed=not was_up)
        self.url = URL(self._ring.current)
        now = time.monotonic()
        if was_up:
            self._down_since = now
            log.warning(
                "transport.connection_lost",
                connection=self._name,
                node=lost,
                next_node=self.node,
                error=error,
            )
            return
        self._failed_attempts += 1
        if self._ring.size > 1:
            self.reconnect_interval = _pause(self._ring.rounds_failed, self._base_interval)
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning(
                "transport.reconnect_failed",
                connection=self._name,
                node=lost,
                next_node=self.node,
                failed_attempts=self._failed_attempts,
                retry_in_s=self.reconnect_interval,
                error=error,
            )


def _pause(rounds_failed: int, base: float) -> float:
    """The pause before the next attempt, when there are several nodes: short while some
    node of this round is untried (another node is as likely to be up as any), then
    ``base``, doubling with every round in which all failed, up to :data:`MAX_BACKOFF`."""
    if rounds_failed == 0:
        return min(base, NEXT_NODE_PAUSE)
    return min(max(MAX_BACKOFF, base), base * 2.0 ** (rounds_failed - 1))


def _reason(closing: asyncio.Future[Any]) -> str:
    if closing.cancelled():
        return "cancelled"
    exc = closing.exception()
    return mask_secrets(describe(exc)) if exc is not None else "closed"


async def connect_failover(
    ring: NodeRing,
    *,
    timeout: float,
    connection_name: str,
    reconnect_interval: float,
    ssl_context: ssl.SSLContext | None,
) -> FailoverConnection:
    """A connected :class:`FailoverConnection`, trying each node once, from the ring's
    current one, each for up to ``timeout`` seconds; the last failure is raised if none
    accepts.

    Each try is a connection object of its own: aio-pika's first connect fails fast (it does
    not start reconnecting), and a failed one cannot be connected again.
    """
    last: BaseException | None = None
    for _ in range(ring.size):
        tried = ring.current
        connection = FailoverConnection(
            ring,
            name=connection_name,
            ssl_context=ssl_context,
            client_properties={"connection_name": connection_name},
            reconnect_interval=reconnect_interval,
            transport_factory=TurnBufferedTransportFactory(),
        )
        try:
            await connection.connect(timeout=timeout)
        except FAILURES as exc:
            last = exc
            with suppress(*FAILURES):
                await connection.close()
            if ring.current == tried:  # the failed attempt did not move the ring itself
                ring.advance(failed=True)
            if ring.size > 1:
                log.warning(
                    "transport.node_unreachable",
                    connection=connection_name,
                    node=node_address(tried),
                    error=mask_secrets(describe(exc)),
                )
            continue
        return connection
    assert last is not None
    raise last


__all__ = ["MAX_BACKOFF", "NEXT_NODE_PAUSE", "FailoverConnection", "connect_failover"]
