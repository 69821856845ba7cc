"""Message transports: the interface, in-memory and RabbitMQ implementations.

The broker topology (exchange names, queue arguments, routing keys, the redelivery policy) is
exposed here too: the operations layer (:mod:`flowmesh.ops`) declares and grants exactly what
the RabbitMQ transport uses. None of it imports aio-pika; ``flowmesh.transport.rabbitmq`` does.
"""

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
from flowmesh.transport._rabbitmq_nodes import split_node_urls
from flowmesh.transport._rabbitmq_topology import (
    APPS_EXCHANGE,
    DELIVERY_LIMIT,
    EXCHANGE_TYPE,
    EXCHANGES,
    INBOX_EXCHANGE,
    INBOX_PATTERN,
    LEGACY_QUEUE_ARGUMENTS,
    QUEUE_ARGUMENTS,
    RedeliveryPolicy,
    queue_arguments,
    redelivery_policy,
    routing_key,
)

__all__ = [
    "APPS_EXCHANGE",
    "DELIVERY_LIMIT",
    "EXCHANGES",
    "EXCHANGE_TYPE",
    "INBOX_EXCHANGE",
    "INBOX_PATTERN",
    "LEGACY_QUEUE_ARGUMENTS",
    "QUEUE_ARGUMENTS",
    "Delivery",
    "Handler",
    "Inbox",
    "Outgoing",
    "QueueKind",
    "QueueStats",
    "RedeliveryPolicy",
    "Subscription",
    "Transport",
    "queue_arguments",
    "queue_name",
    "redelivery_policy",
    "routing_key",
    "split_node_urls",
]
