"""Handing a message on for a later attempt: what replaces requeue loops.

A requeued message counts toward the broker's delivery limit (RabbitMQ 4 quorum queues
dead-letter or drop it after 20), and a requeue carries nothing from one attempt to the
next. So a replica that cannot process a message *yet* - the store is down, the workflow or
activity is not registered here - waits a delay that grows with the attempt, republishes the
message (confirmed) to the tail of its queue with the attempt count in a header
(``Outgoing.attempt``, read back as ``Delivery.attempt``), and only then acks it. A crash
while waiting leaves the delivery unacked: the broker redelivers it.

The delivery is held while waiting, which costs a prefetch slot for at most the delay's cap.
That is the backpressure an outage needs, keeps delays exact (a delay queue with per-message
TTLs expires messages only at its head) and needs no extra queues or permissions.
"""

from __future__ import annotations

import time

from flowmesh._errors import FlowmeshError
from flowmesh.runtime._clock import Clock
from flowmesh.transport import Delivery, Outgoing, QueueKind, Transport


def retry_delay(attempt: int, *, first: float, cap: float) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``first`` doubled per attempt, at most
    ``cap``."""
    return min(first * 2.0 ** min(max(attempt, 1) - 1, 32), cap)


def next_attempt(delivery: Delivery, app_id: str, kind: QueueKind) -> Outgoing:
    """The delivery's message as its next attempt, to ``app_id``'s ``kind`` queue (same body,
    message ID and answer address; the answer deadline it had, if any)."""
    answer_within = max(0.0, delivery.answer_by - time.time()) if delivery.answer_by else None
    return Outgoing(
        app_id,
        kind,
        delivery.body,
        delivery.message_id,
        delivery.reply_to,
        delivery.correlation_id,
        answer_within,
        attempt=delivery.attempt + 1,
    )


async def republish(transport: Transport, delivery: Delivery, app_id: str, kind: QueueKind) -> bool:
    """Publish the next attempt, then ack the delivery; True if that worked.

    If the publish fails (the broker is failing too), the delivery is requeued: the only
    requeue left, counted by the broker's delivery limit, which dead-letters rather than
    drops (topology version 2).
    """
    try:
        await transport.publish([next_attempt(delivery, app_id, kind)])
    except FlowmeshError:
        await delivery.requeue()
        return False
    await delivery.ack()
    return True


async def republish_later(
    transport: Transport,
    clock: Clock,
    delivery: Delivery,
    app_id: str,
    kind: QueueKind,
    *,
    delay: float,
) -> bool:
    """Wait ``delay`` seconds, then :func:`republish`."""
    await clock.sleep(delay)
    return await republish(transport, delivery, app_id, kind)
