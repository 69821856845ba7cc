"""Names of flowmesh's RabbitMQ topology: exchanges, routing keys, queue settings.

Pure data, no aio-pika: the security plan (:mod:`flowmesh.security`) derives permissions and
declarations from the same names the transport routes by.

Every message to an app goes through the durable **topic** exchange ``fm.apps`` with routing
key ``<app>.<kind>`` (``app2.work``, ``app1.reply``, ``app1.dead``); each app queue
``fm.<app>.<kind>`` is bound to it with exactly that key. Answers to inboxes go through the
topic exchange ``fm.inbox`` with the inbox's name as routing key. Nothing is published through
the default exchange: a user allowed to write to it can put messages into *any* queue, while
writes to a topic exchange can be limited per routing key with RabbitMQ topic permissions.

Redelivery limits (topology version 2): the work, reply and quarantine queues declare a
delivery limit and a dead-letter target, so a message whose consumers keep dying goes to the
app's dead queue after :data:`DELIVERY_LIMIT` deliveries, the same on RabbitMQ 3.x and on 4.x
(whose quorum queues otherwise drop it after 20). flowmesh itself never requeues to retry
(it republishes with an attempt header), so only consumer deaths count toward the limit.
Queues declared before version 2 keep their arguments (RabbitMQ cannot change them); the
policy of :func:`redelivery_policy` gives them the same limit and target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from flowmesh.transport._base import QueueKind

__all__ = [
    "APPS_EXCHANGE",
    "DELIVERY_LIMIT",
    "EXCHANGES",
    "EXCHANGE_TYPE",
    "INBOX_EXCHANGE",
    "INBOX_PATTERN",
    "LEGACY_QUEUE_ARGUMENTS",
    "QUEUE_ARGUMENTS",
    "RedeliveryPolicy",
    "queue_arguments",
    "redelivery_policy",
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

LEGACY_QUEUE_ARGUMENTS: Final[dict[str, str | int]] = {"x-queue-type": "quorum"}
"""Arguments of every app queue before topology version 2, and of dead queues still."""

QUEUE_ARGUMENTS: Final = LEGACY_QUEUE_ARGUMENTS
"""Arguments of the dead queues (kept for callers of the version-1 name)."""

DELIVERY_LIMIT: Final = 20
"""Deliveries after which RabbitMQ dead-letters a message of a work, reply or quarantine
queue: RabbitMQ 4's default for quorum queues, made explicit (and given a target) on 3.x
too. Above flowmesh's own limits (``WorkerOptions.max_deliveries``, 5), so it only catches
a message whose consumers keep dying before flowmesh's own checks run."""

_LIMITED = (QueueKind.WORK, QueueKind.REPLY, QueueKind.QUARANTINE)


def queue_arguments(app_id: str, kind: QueueKind) -> dict[str, str | int]:
    """The arguments a new ``fm.<app_id>.<kind>`` queue is declared with (version 2).

    Work, reply and quarantine queues get the delivery limit and dead-letter to the app's
    dead queue, at least once (quorum queues need ``reject-publish`` overflow for that;
    without a length limit nothing is ever rejected). The dead queue has no target.
    """
    if kind not in _LIMITED:
        return dict(LEGACY_QUEUE_ARGUMENTS)
    return {
        **LEGACY_QUEUE_ARGUMENTS,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": APPS_EXCHANGE,
        "x-dead-letter-routing-key": routing_key(app_id, QueueKind.DEAD),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True, slots=True)
class RedeliveryPolicy:
    """A RabbitMQ policy giving an app's version-1 queues what version 2 declares."""

    name: str
    pattern: str
    definition: dict[str, str | int]

    def rabbitmqctl(self, vhost: str) -> list[str]:
        """``rabbitmqctl`` arguments that set it (idempotent: setting it again replaces it)."""
        return [
            "set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "0",
            self.name, self.pattern, json.dumps(self.definition, sort_keys=True),
        ]  # fmt: skip


def redelivery_policy(app_id: str) -> RedeliveryPolicy:
    """The policy for ``app_id``'s work, reply and quarantine queues (one per app: the
    dead-letter routing key names the app).

    Policies apply to existing queues without redeclaring them, and a queue's own argument
    wins over a policy's, so it changes nothing for version-2 queues. RabbitMQ applies one
    policy per queue (the highest priority): fold these keys into an operator's own policy
    if one already matches these queues.
    """
    kinds = "|".join(kind.value for kind in _LIMITED)
    definition = queue_arguments(app_id, QueueKind.WORK)
    return RedeliveryPolicy(
        name=f"flowmesh-redelivery-{app_id}",
        pattern=f"^fm\\.{app_id}\\.({kinds})$",  # app IDs are [a-z0-9-]: nothing to escape
        definition={
            key.removeprefix("x-"): value
            for key, value in definition.items()
            if key not in ("x-queue-type",)
        },
    )


def routing_key(app_id: str, kind: QueueKind) -> str:
    """The routing key that reaches ``queue_name(app_id, kind)`` through ``fm.apps``."""
    return f"{app_id}.{kind.value}"
