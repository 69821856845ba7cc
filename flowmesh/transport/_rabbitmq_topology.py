"""Names of flowmesh's RabbitMQ topology: exchanges, routing keys, queue settings.

Pure data, no aio-pika: the security plan (:mod:`flowmesh.security`) derives permissions and
declarations from the same names the transport routes by.

Every message to an app goes through the durable **topic** exchange ``fm.apps`` with routing
key ``<app>.<kind>`` (``app2.work``, ``app1.reply``, ``app1.dead``); each app queue
``fm.<app>.<kind>`` is bound to it with exactly that key. Answers to inboxes go through the
topic exchange ``fm.inbox`` with the inbox's name as routing key. Nothing is published through
the default exchange: a user allowed to write to it can put messages into *any* queue, while
writes to a topic exchange can be limited per routing key with RabbitMQ topic permissions.
"""

from __future__ import annotations

from typing import Final

from flowmesh.transport._base import QueueKind

__all__ = [
    "APPS_EXCHANGE",
    "EXCHANGES",
    "EXCHANGE_TYPE",
    "INBOX_EXCHANGE",
    "INBOX_PATTERN",
    "QUEUE_ARGUMENTS",
    "routing_key",
]

APPS_EXCHANGE: Final = "fm.apps"
"""Topic exchange of every app queue; routing key ``<app>.<kind>``."""

INBOX_EXCHANGE: Final = "fm.inbox"
"""Topic exchange of inboxes; routing key = the inbox address ``fm.inbox.<32 hex>``."""

EXCHANGES: Final = (APPS_EXCHANGE, INBOX_EXCHANGE)
EXCHANGE_TYPE: Final = "topic"
"""Both exchanges are durable topic exchanges (topic permissions only apply to those)."""

INBOX_PATTERN: Final = r"fm\.inbox\.[0-9a-f]{32}"
"""Regular expression of an inbox address (and queue name)."""

QUEUE_ARGUMENTS: Final[dict[str, str]] = {"x-queue-type": "quorum"}
"""Arguments of every app queue. Every declaration must use exactly these: RabbitMQ refuses a
redeclaration with other arguments (PRECONDITION_FAILED)."""


def routing_key(app_id: str, kind: QueueKind) -> str:
    """The routing key that reaches ``queue_name(app_id, kind)`` through ``fm.apps``."""
    return f"{app_id}.{kind.value}"
