"""TLS settings shared by the RabbitMQ transport and the Redis store.

::

    tls = TLSConfig(ca_file="ca.pem", cert_file="client.pem", key_file="client.key")
    RabbitMQConfig(url="amqps://fm-app1:...@rabbit:5671/prod", tls=tls)
    RedisStoreConfig(url="rediss://fm-app1:...@redis:6380/0", app_id="app1", tls=tls)

The server's certificate is verified (chain and host name) unless ``verify=False``, which is
explicit and logged as a warning on every connect. Without ``ca_file`` the system's trusted
CAs are used. ``cert_file``/``key_file`` present a client certificate (mutual TLS).

URLs may carry the same settings as query parameters under the client libraries' own names
(``amqps://...?cafile=&certfile=&keyfile=&no_verify_ssl=1`` and
``rediss://...?ssl_ca_certs=&ssl_certfile=&ssl_keyfile=&ssl_cert_reqs=none``); an explicit
``tls=`` wins over them. That is how ``flowmesh worker --tls-ca ...`` hands them on.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flowmesh._errors import ConfigurationError

__all__ = ["TLSConfig", "strip_tls_query", "with_tls_query"]

_AMQP_QUERY = {"ca": "cafile", "cert": "certfile", "key": "keyfile", "insecure": "no_verify_ssl"}
_REDIS_QUERY = {
    "ca": "ssl_ca_certs",
    "cert": "ssl_certfile",
    "key": "ssl_keyfile",
    "insecure": "ssl_cert_reqs",
}
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How to verify the server and which client certificate to present.

    Paths are PEM files. ``key_file`` may be omitted when ``cert_file`` holds the key too.
    """

    ca_file: str | None = None
    """CA bundle that signed the server's certificate; None trusts the system's CAs."""
    cert_file: str | None = None
    """Client certificate (mutual TLS), or None."""
    key_file: str | None = None
    """Private key of ``cert_file``, or None if ``cert_file`` contains it."""
    verify: bool = True
    """Verify the server's certificate and host name. False is for development only."""

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise ConfigurationError("TLS key_file given without cert_file")

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side context; raises :class:`ConfigurationError` for unreadable files."""
        for what, path in (("CA", self.ca_file), ("certificate", self.cert_file)):
            if path and not Path(path).is_file():
                raise ConfigurationError(f"TLS {what} file {path!r} does not exist")
        if self.key_file and not Path(self.key_file).is_file():
            raise ConfigurationError(f"TLS key file {self.key_file!r} does not exist")
        try:
            context = ssl.create_default_context(cafile=self.ca_file or None)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file or None)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigurationError(f"invalid TLS files ({self.describe()}): {exc}") from exc
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def describe(self) -> str:
        """A short summary for logs (paths only; no key material is ever read into it)."""
        parts = [f"ca={self.ca_file or 'system'}"]
        if self.cert_file:
            parts.append(f"cert={self.cert_file}")
        if not self.verify:
            parts.append("verify=off")
        return " ".join(parts)

    @classmethod
    def from_amqp_query(cls, url: str) -> TLSConfig | None:
        """The TLS settings in an ``amqps://`` URL's query (aio-pika's names), or None."""
        return _from_query(url, _AMQP_QUERY, insecure=lambda v: v.lower() in _TRUE)

    @classmethod
    def from_redis_query(cls, url: str) -> TLSConfig | None:
        """The TLS settings in a ``rediss://`` URL's query (redis-py's names), or None."""
        return _from_query(url, _REDIS_QUERY, insecure=lambda v: v.lower() == "none")


def _from_query(
    url: str, names: dict[str, str], *, insecure: Callable[[str], bool]
) -> TLSConfig | None:
    query = dict(parse_qsl(urlsplit(url).query))
    if not any(name in query for name in names.values()):
        return None
    flag = query.get(names["insecure"])
    return TLSConfig(
        ca_file=query.get(names["ca"]) or None,
        cert_file=query.get(names["cert"]) or None,
        key_file=query.get(names["key"]) or None,
        verify=not (flag is not None and insecure(flag)),
    )


def strip_tls_query(url: str, *, redis: bool) -> str:
    """``url`` without the TLS query parameters :func:`with_tls_query` adds."""
    names = set((_REDIS_QUERY if redis else _AMQP_QUERY).values())
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def with_tls_query(url: str, tls: TLSConfig) -> str:
    """``url`` (``amqps://``, ``rediss://`` or ``rediss+cluster://``) with ``tls`` as query
    parameters.

    Lets a TLS setting travel wherever only a URL does (environment variables, the CLI).
    Other schemes are returned unchanged.
    """
    parts = urlsplit(url)
    if parts.scheme == "amqps":
        names, insecure = _AMQP_QUERY, "1"
    elif parts.scheme in ("rediss", "rediss+cluster"):
        names, insecure = _REDIS_QUERY, "none"
    else:
        return url
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names.values()
    ]
    for field, value in (("ca", tls.ca_file), ("cert", tls.cert_file), ("key", tls.key_file)):
        if value:
            query.append((names[field], value))
    if not tls.verify:
        query.append((names["insecure"], insecure))
    return urlunsplit(parts._replace(query=urlencode(query)))
