"""How to reach RabbitMQ: :class:`RabbitMQConfig` (re-exported by
:mod:`flowmesh.transport.rabbitmq`), and the AMQP property values every publish uses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from flowmesh._errors import ConfigurationError
from flowmesh._masking import mask_secrets
from flowmesh._tls import TLSConfig
from flowmesh.transport._rabbitmq_nodes import split_node_urls

CONTENT_TYPE = "application/x-msgpack"

PERSISTENT = 2
NOT_PERSISTENT = 1
"""AMQP ``delivery_mode`` values."""

_RABBITMQ_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""The broker's ``max_message_size`` flowmesh asks for (deploy/rabbitmq/flowmesh.conf): the
codec's default ``max_message_bytes``. RabbitMQ's own default is 128 MiB."""

QUORUM_SIZE_ENV = "FLOWMESH_QUORUM_SIZE"
"""Where :attr:`RabbitMQConfig.quorum_size` comes from when not given."""

_DEFAULT_QUORUM_SIZE = 3


@dataclass(frozen=True, slots=True)
class RabbitMQConfig:
    """How to reach RabbitMQ and how long to wait for it.

    ``max_message_bytes`` should match the broker's ``max_message_size`` (4 MiB in flowmesh's
    broker config, the codec's limit; ``None`` turns the client-side check off): a larger
    message would make the broker close the publishing channel, failing every publish in
    flight on it. Timeouts are in seconds.

    ``url`` is one node's URL or a comma-separated list of a cluster's nodes
    (:mod:`flowmesh.transport._rabbitmq_nodes`: later entries may be just ``host:port``). The
    transport connects to one node, chosen at random, and fails over to the next on
    connection loss.
    """

    url: str = field(repr=False)  # may carry a password
    connection_name: str = "flowmesh"
    publish_timeout: float = 10.0
    """Longest wait for the publisher confirms of one
    :meth:`~flowmesh.transport.rabbitmq.RabbitMQTransport.publish`."""
    operation_timeout: float = 10.0
    """Longest wait for connecting, declaring, queue stats and closing."""
    reconnect_interval: float = 1.0
    max_message_bytes: int | None = _RABBITMQ_MAX_MESSAGE_SIZE
    drain_timeout: float = 0.0
    """How long cancelling a subscription (or closing) lets running handlers finish and
    settle before cancelling them; by default they are cancelled at once."""
    tls: TLSConfig | None = None
    """TLS settings for an ``amqps://`` URL. None: the URL's query parameters (``cafile``,
    ``certfile``, ``keyfile``, ``no_verify_ssl``) if any, else verify against the system's
    CAs."""
    user_id: str | None = None
    """The ``user_id`` property of published messages; None means the URL's user name
    (``guest`` without one), which RabbitMQ checks against the connection's user. Set it when
    the broker authenticates otherwise (``auth=external`` in the URL leaves it unset), or ``""``
    to send none."""
    quorum_size: int | None = None
    """Replicas of each quorum queue this transport creates (``x-quorum-initial-group-size``;
    it only matters when a queue is created). None: ``FLOWMESH_QUORUM_SIZE`` if set, else
    ``min(3, number of nodes in url)`` for a list of nodes, else the broker's default (every
    cluster member) for a single URL."""
    nodes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The node URLs of ``url``, each a full URL (may carry a password)."""
    group_size: int | None = field(init=False, repr=False, compare=False)
    """The ``x-quorum-initial-group-size`` new queues get (None: none, the broker decides)."""

    def __post_init__(self) -> None:
        nodes = split_node_urls(self.url)
        object.__setattr__(self, "nodes", nodes)  # frozen: set once, here
        object.__setattr__(self, "group_size", _group_size(self.quorum_size, len(nodes)))
        scheme = urlsplit(nodes[0]).scheme
        if self.tls is not None and scheme != "amqps":
            raise ConfigurationError(f"TLS settings need an amqps:// URL, not {self.masked_url}")
        for name in ("publish_timeout", "operation_timeout", "reconnect_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"RabbitMQConfig.{name} must be positive")
        if self.drain_timeout < 0:
            raise ConfigurationError("RabbitMQConfig.drain_timeout must not be negative")
        if self.max_message_bytes is not None and self.max_message_bytes < 1:
            raise ConfigurationError("RabbitMQConfig.max_message_bytes must be positive or None")

    @property
    def masked_url(self) -> str:
        """The URL (every node's, comma-separated) with passwords masked, safe to log."""
        return ",".join(mask_secrets(node) for node in self.nodes)

    @property
    def effective_tls(self) -> TLSConfig | None:
        """The TLS settings in force: ``tls``, else the URL's, else defaults for amqps://."""
        first = self.nodes[0]
        if urlsplit(first).scheme != "amqps":
            return None
        return self.tls or TLSConfig.from_amqp_query(first) or TLSConfig()

    @property
    def message_user_id(self) -> str:
        """What :meth:`~flowmesh.transport.rabbitmq.RabbitMQTransport.publish` puts in
        ``user_id`` ('' for nothing)."""
        if self.user_id is not None:
            return self.user_id
        parts = urlsplit(self.nodes[0])  # every node shares the credentials
        query = {k.lower(): v.lower() for k, v in parse_qsl(parts.query)}
        if query.get("auth") == "external":
            return ""  # the user name comes from the client certificate
        return unquote(parts.username) if parts.username else "guest"


def _group_size(configured: int | None, nodes: int) -> int | None:
    if configured is None:
        raw = os.environ.get(QUORUM_SIZE_ENV, "").strip()
        if not raw:
            return min(_DEFAULT_QUORUM_SIZE, nodes) if nodes > 1 else None
        try:
            configured = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"{QUORUM_SIZE_ENV} must be a positive integer, not {raw[:40]!r}"
            ) from None
    if isinstance(configured, bool) or configured < 1:
        raise ConfigurationError(
            f"the quorum queue size (RabbitMQConfig.quorum_size, {QUORUM_SIZE_ENV}) must be "
            f"a positive integer, not {configured!r}"
        )
    return configured


__all__ = ["CONTENT_TYPE", "NOT_PERSISTENT", "PERSISTENT", "QUORUM_SIZE_ENV", "RabbitMQConfig"]
