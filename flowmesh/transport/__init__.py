"""Message transports: the interface, in-memory and RabbitMQ implementations."""

from flowmesh.transport._base import (
    Delivery,
    Handler,
    Inbox,
    Outgoing,
    QueueKind,
    QueueStats,
    Subscription,
    Transport,
    queue_name,
)

__all__ = [
    "Delivery",
    "Handler",
    "Inbox",
    "Outgoing",
    "QueueKind",
    "QueueStats",
    "Subscription",
    "Transport",
    "queue_name",
]
