"""Operations: deploying flowmesh securely, above the transport and the store.

* :class:`SecurityPlan` - least-privilege RabbitMQ users (topic permissions per routing key)
  and Redis ACL users per app ID, built from a :class:`Topology` (who calls whom);
  :func:`render_plan` writes it as a commented shell script (``flowmesh security plan``).
* :func:`topology_from_sources` - the topology read from app modules without importing them.
* :func:`declare_topology` - declares the exchanges, queues and bindings with admin
  credentials (``flowmesh security apply``).
* :func:`password_variable` - the environment variable a plan reads a user's password from.

Used by the CLI; see docs/security-model.md.
"""

from flowmesh.ops._apply import declare_topology
from flowmesh.ops._plan import (
    DEAD_LETTER_POLICY,
    DEAD_LETTER_POLICY_NAME,
    DEAD_QUEUE_PATTERN,
    RabbitUser,
    RedisUser,
    SecurityPlan,
    Topology,
    password_variable,
)
from flowmesh.ops._render import render_plan
from flowmesh.ops._scan import topology_from_sources

__all__ = [
    "DEAD_LETTER_POLICY",
    "DEAD_LETTER_POLICY_NAME",
    "DEAD_QUEUE_PATTERN",
    "RabbitUser",
    "RedisUser",
    "SecurityPlan",
    "Topology",
    "declare_topology",
    "password_variable",
    "render_plan",
    "topology_from_sources",
]
