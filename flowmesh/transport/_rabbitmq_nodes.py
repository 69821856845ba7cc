"""The nodes of a RabbitMQ cluster, from one ``FLOWMESH_AMQP_URL``, and the order a transport
tries them in. Pure: no aio-pika, no I/O.

A URL list is comma-separated. Each entry is a full ``amqp://`` / ``amqps://`` URL, or, after
the first, the short form ``host[:port]``, which takes everything else (scheme, credentials,
virtual host, query) from the first entry::

    amqp://fm-app1:secret@rabbit-1:5672/prod?heartbeat=30,rabbit-2:5672,rabbit-3
    amqp://guest:guest@127.0.0.1:5701,amqp://guest:guest@127.0.0.1:5702

A short entry without a port gets the scheme's default (5672, or 5671 for ``amqps``), not the
first entry's port. Full entries must agree with the first on everything but host and port:
users, permissions and virtual hosts are cluster-wide in RabbitMQ, and the TLS settings are
the transport's. A comma inside a password must be percent-encoded (``%2C``), as any reserved
character in a URL should be; an unencoded one is still read right where the entry it splits
carries the ``@`` that ends the credentials.
"""

from __future__ import annotations

import random
import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

from flowmesh._errors import ConfigurationError
from flowmesh._masking import mask_secrets

_SCHEMES = ("amqp", "amqps")
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_SHORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.\-]*)(?::(?P<port>\d{1,5}))?"
)


def split_node_urls(text: str) -> tuple[str, ...]:
    """The node URLs of ``text`` (one URL or a comma-separated list), each a full URL.

    Raises :class:`~flowmesh.ConfigurationError` naming the bad entry (passwords masked).
    """
    entries = _entries(text)
    first = _full(entries[0], text)
    nodes = [urlunsplit(first)]
    for entry in entries[1:]:
        if "://" in entry:
            parts = _full(entry, text)
            if _shared(parts) != _shared(first):
                raise ConfigurationError(
                    f"RabbitMQ node URL {mask_secrets(entry)!r} differs from the first "
                    f"({mask_secrets(nodes[0])!r}) in more than host and port: the nodes of "
                    "one cluster share users, virtual hosts and TLS settings (list the other "
                    "nodes as host:port)"
                )
        else:
            parts = _short(entry, first, text)
        nodes.append(urlunsplit(parts))
    seen: set[tuple[str, int]] = set()
    for node in nodes:
        address = _address(urlsplit(node))
        if address in seen:
            raise ConfigurationError(
                f"RabbitMQ node {address[0]}:{address[1]} is listed twice in {mask_secrets(text)!r}"
            )
        seen.add(address)
    return tuple(nodes)


def _entries(text: str) -> list[str]:
    """``text`` split at commas; a piece that carries credentials' ``@`` but no scheme belongs
    to the entry before it (an unencoded comma in a password)."""
    entries: list[str] = []
    last_full = 0  # index of the last entry with a scheme
    for piece in text.split(","):
        stripped = piece.strip()
        if entries and "://" not in stripped and "@" in stripped:
            entries[last_full:] = [",".join([*entries[last_full:], stripped])]
            continue
        if "://" in stripped:
            last_full = len(entries)
        entries.append(stripped)
    for entry in entries:
        if not entry:
            raise ConfigurationError(f"empty entry in the RabbitMQ URL list {mask_secrets(text)!r}")
    return entries


def _full(entry: str, text: str) -> SplitResult:
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(
            f"bad RabbitMQ URL {mask_secrets(entry)!r} in {mask_secrets(text)!r}: {exc}"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"RabbitMQ URL must be amqp:// or amqps://: {mask_secrets(entry)!r}"
        )
    if not parts.hostname:
        raise ConfigurationError(f"RabbitMQ URL {mask_secrets(entry)!r} names no host")
    del port  # read only to validate it
    return parts


def _short(entry: str, first: SplitResult, text: str) -> SplitResult:
    match = _SHORT.fullmatch(entry)
    port = int(match["port"]) if match and match["port"] else None
    if match is None or (port is not None and not 0 < port < 65536):
        raise ConfigurationError(
            f"bad entry {mask_secrets(entry)!r} in the RabbitMQ URL list "
            f"{mask_secrets(text)!r}: expected amqp://... or amqps://... or host[:port]"
        )
    userinfo = first.netloc.rpartition("@")[0]
    netloc = match["host"] + (f":{port}" if port is not None else "")
    return first._replace(netloc=f"{userinfo}@{netloc}" if userinfo else netloc)


def _shared(parts: SplitResult) -> tuple[str, str, str, str, str]:
    """What every node URL of one cluster must agree on."""
    userinfo = parts.netloc.rpartition("@")[0]
    return parts.scheme, userinfo, parts.path or "/", parts.query, parts.fragment


def _address(parts: SplitResult) -> tuple[str, int]:
    return (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS[parts.scheme]


def node_address(url: str) -> str:
    """``host:port`` of a node URL, for logs (never credentials)."""
    host, port = _address(urlsplit(url))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NodeRing:
    """The order one connection tries the nodes in: it starts at a random node, and each
    connection loss or failed attempt moves it to the next, cycling.

    A random start (rather than always the first node) spreads the connections of many
    replicas over the nodes without any coordination between processes: with the same URL
    list everywhere, a fixed start would put every client and worker on the first node and
    leave the others idle until it fails. Round robin needs state shared across processes;
    random choice gets an even spread in expectation from nothing. With one node the ring
    always answers it.
    """

    __slots__ = ("_failures", "_index", "_nodes")

    def __init__(self, nodes: tuple[str, ...], start: int | None = None) -> None:
        if not nodes:
            raise ValueError("a NodeRing needs at least one node")
        self._nodes = nodes
        # Not cryptographic: it only spreads load.
        self._index = random.randrange(len(nodes)) if start is None else start % len(nodes)
        self._failures = 0

    @property
    def current(self) -> str:
        """The node to connect to now."""
        return self._nodes[self._index]

    @property
    def size(self) -> int:
        """How many nodes there are."""
        return len(self._nodes)

    @property
    def rounds_failed(self) -> int:
        """Full rounds over every node that failed since the last successful connection."""
        return self._failures // len(self._nodes)

    def advance(self, *, failed: bool) -> str:
        """Move to the next node (after a failed attempt, or after losing a connection) and
        return it."""
        if failed:
            self._failures += 1
        self._index = (self._index + 1) % len(self._nodes)
        return self.current

    def connected(self) -> None:
        """The current node accepted a connection: failures count from zero again."""
        self._failures = 0


__all__ = ["NodeRing", "node_address", "split_node_urls"]
