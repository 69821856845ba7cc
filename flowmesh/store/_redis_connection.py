"""How a Redis store connects: its configuration (URL, TLS, timeouts, retries), the redis-py
client built from it, calls of flowmesh's function library (loaded on first use where the user
may), the one boundary that turns redis-py errors into :class:`~flowmesh.StoreError`, and the
check of the server's persistence settings.

What is stored, and under which keys, is :class:`~flowmesh.store.redis.RedisStore`'s part.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

import redis.asyncio
import structlog
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from flowmesh._errors import ConfigurationError, StoreError
from flowmesh._masking import mask_secrets
from flowmesh._tls import TLSConfig, strip_tls_query
from flowmesh.model import check_app_id
from flowmesh.store._redis_batch import Call
from flowmesh.store._redis_cluster import (
    FlowmeshCluster,
    cluster_client,
    cluster_retry,
    is_cluster_url,
)
from flowmesh.store._redis_errors import raised_in_client_io
from flowmesh.store._redis_functions import is_missing_function, library
from flowmesh.store._redis_packing import use_linear_packing
from flowmesh.store._redis_replicas import (
    DEFAULT_TIMEOUT,
    ReplicaAcks,
    Wait,
    add_waits,
    check_replica_acks,
)
from flowmesh.store._redis_safety import (
    INFO_SECTIONS,
    info_safety_warnings,
    node_info_of,
    node_settings_of,
    safety_warnings,
    setting_text,
    settings_of,
)
from flowmesh.store._redis_shards import (
    CLUSTER_SHARDS,
    STANDALONE_SHARDS,
    ShardedKeys,
    check_layout,
    check_shards,
    layout_value,
    parse_layout,
)

log = structlog.get_logger("flowmesh.store")

_URL_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
_TLS_SCHEMES = ("rediss", "rediss+cluster")

Client = redis.asyncio.Redis | FlowmeshCluster
"""A standalone (or proxied) Redis, or a Redis Cluster."""
AnyPipeline = Pipeline | ClusterPipeline
"""A pipeline of either client (commands of any slots, without a transaction)."""


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    """Where and how one app keeps its workflows in Redis.

    ``url`` is a redis-py URL (``redis://``, ``rediss://`` or ``unix://``) or a Redis Cluster's
    (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://``); it is left out of
    the repr because it may carry a password. Keys live under ``<key_prefix>:{<app_id>}:``, or
    ``<key_prefix>:{<app_id>#<shard>}:`` with ``shards`` > 1 (see ``_redis_shards.py``).
    Timeouts are in seconds; a command failing on a connection error or timeout is retried
    ``retries`` times with jittered exponential backoff (0.1 s doubling, at most 2 s).
    """

    url: str = field(repr=False)
    app_id: str
    key_prefix: str = "fm"
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0
    retries: int = 3
    tls: TLSConfig | None = None
    """TLS settings for a ``rediss://`` URL. None: the URL's query parameters
    (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs=none``) if any, else
    verify against the system's CAs."""
    allow_fsync_everysec: bool = False
    """Whether :meth:`RedisStore.check_safety` accepts ``appendfsync everysec`` (a machine
    crash may then lose the last second of acknowledged commits); by default only ``always``."""
    replica_acks: int | None = None
    """Replicas that must have a commit batch before it is reported done (``WAIT``, see
    ``_redis_replicas.py``); None: 1 on a cluster, 0 (no wait) on a standalone Redis."""
    replica_ack_timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for them; then the commit stands and a warning is logged."""
    shards: int | None = None
    """How many shards the app's keys are spread over (1-1024). None: what the store's layout
    key records, else 1 on a standalone Redis and 16 on a cluster. A store written with
    another count is refused at :meth:`RedisConnection.connect`."""

    def __post_init__(self) -> None:
        try:
            check_app_id(self.app_id)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if self._scheme not in _URL_SCHEMES:
            raise ConfigurationError(
                f"Redis URL {mask_secrets(self.url)!r} must start with redis://, rediss://, "
                "unix://, redis+cluster:// or rediss+cluster://"
            )
        if self.tls is not None and self._scheme not in _TLS_SCHEMES:
            raise ConfigurationError(
                f"TLS settings need a rediss:// or rediss+cluster:// URL, not "
                f"{mask_secrets(self.url)!r}"
            )
        if self.shards is not None:
            check_shards(self.shards)
        if not self.key_prefix or any(c in self.key_prefix for c in "{} \t\r\n"):
            raise ConfigurationError(
                f"key_prefix {self.key_prefix!r} must be non-empty, without braces or spaces "
                "(braces would change the Redis Cluster hash tag)"
            )
        if self.socket_timeout <= 0 or self.connect_timeout <= 0:
            raise ConfigurationError("socket_timeout and connect_timeout must be positive")
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        check_replica_acks(self.replica_acks, self.replica_ack_timeout, self.socket_timeout)

    @property
    def _scheme(self) -> str:
        return self.url.partition("://")[0].lower()

    @property
    def is_cluster(self) -> bool:
        """Whether ``url`` names a Redis Cluster."""
        return is_cluster_url(self.url)

    @property
    def default_shards(self) -> int:
        """Shards of a new store when ``shards`` is None: 16 on a cluster, else 1."""
        return CLUSTER_SHARDS if self.is_cluster else STANDALONE_SHARDS

    @property
    def effective_replica_acks(self) -> int:
        """``replica_acks``, or its default: 1 on a cluster, 0 on a standalone Redis."""
        if self.replica_acks is not None:
            return self.replica_acks
        return 1 if self.is_cluster else 0

    @property
    def masked_url(self) -> str:
        """``url`` with its password replaced by ``***``."""
        return mask_secrets(self.url)

    @property
    def effective_tls(self) -> TLSConfig | None:
        """The TLS settings in force: ``tls``, else the URL's, else defaults for rediss://."""
        if self._scheme not in _TLS_SCHEMES:
            return None
        return self.tls or TLSConfig.from_redis_query(self.url) or TLSConfig()


def redis_client(config: RedisStoreConfig) -> Client:
    """A redis-py client for ``config`` (timeouts, retries, TLS): ``RedisCluster`` for a
    cluster URL; it connects lazily.

    Raises :class:`ConfigurationError` for unreadable TLS files.
    """
    url = config.url
    tls_options: dict[str, Any] = {}
    tls = config.effective_tls
    if tls is not None:
        tls.ssl_context()  # fails early, as a ConfigurationError, on unreadable files
        if not tls.verify:
            log.warning(
                "store.tls_verification_disabled",
                url=config.masked_url,
                detail="the Redis server's certificate is not checked: anyone on the path "
                "can impersonate it (development only)",
            )
        # The URL's own TLS parameters would override these keyword arguments.
        url = strip_tls_query(url, redis=True)
        tls_options = {
            "ssl_ca_certs": tls.ca_file,
            "ssl_certfile": tls.cert_file,
            "ssl_keyfile": tls.key_file,
            "ssl_cert_reqs": "required" if tls.verify else "none",
            "ssl_check_hostname": tls.verify,
        }
    if config.is_cluster:
        return cluster_client(
            url,
            socket_timeout=config.socket_timeout,
            connect_timeout=config.connect_timeout,
            retry=cluster_retry(config.retries),
            tls_options=tls_options,
        )
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        # redis-py's default backoff waits up to 14 s over three retries; a worker would
        # rather fail the step quickly and let the message be redelivered.
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.1), config.retries),
        **tls_options,
    )
    use_linear_packing(client)
    return client


class RedisConnection:
    """One app's connection to Redis: the client, its function calls and error boundary.

    The base of :class:`~flowmesh.store.redis.RedisStore`. The constructor does no I/O; call
    :meth:`connect` (or use ``async with``) first. Redis errors surface as
    :class:`~flowmesh.StoreError` with the password masked.
    """

    def __init__(self, config: RedisStoreConfig) -> None:
        self.config = config
        self._layout = ShardedKeys(
            config.key_prefix, config.app_id, config.shards or config.default_shards
        )
        self._client: Client | None = None
        self._functions = library()
        self._replica_acks = ReplicaAcks(
            config.effective_replica_acks, config.replica_ack_timeout, config.app_id
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.masked_url!r}, app_id={self.config.app_id!r})"

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Create the client, check that the server answers and that the store's key layout
        is this store's (idempotent).

        Raises :class:`~flowmesh.ConfigurationError` when the store was written with another
        shard count than ``config.shards`` (or, with ``shards`` None, in a layout this
        version does not know).
        """
        if self._client is not None:
            return
        client = redis_client(self.config)
        try:
            with self._translating("connect"):
                await client.ping()
                await self._adopt_layout(client)
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    @property
    def shards(self) -> int:
        """How many shards this store's keys are spread over (known after :meth:`connect`)."""
        return self._layout.count

    async def _adopt_layout(self, client: Client) -> None:
        """Read the layout key: take its shard count when none is configured, else check it."""
        config = self.config
        raw = await cast("Awaitable[bytes | None]", client.get(self._layout.layout))
        found = None if raw is None else raw.decode(errors="replace")
        if found is None:
            # No layout key: empty, or written before layouts were recorded (one shard).
            unsharded = bool(await client.exists(self._layout.unsharded_index))
            if unsharded:
                found = layout_value(1)
        where = f"the Redis store of app {config.app_id!r} at {config.masked_url}"
        if config.shards is None and found is not None:
            _, stored = parse_layout(found)
            check_layout(found, stored or 0, where)
            if stored != self._layout.count:
                self._layout = ShardedKeys(config.key_prefix, config.app_id, stored or 1)
        check_layout(found, self._layout.count, where)

    async def record_layout(self) -> None:
        """Write the layout key if absent (``SET NX``), refusing a store another worker
        recorded with another layout meanwhile. A worker calls this at start."""
        expected = layout_value(self._layout.count)
        with self._translating("record the key layout"):
            raw = await cast(
                "Awaitable[bytes | None]",
                self._redis.set(self._layout.layout, expected, nx=True, get=True),
            )
        if raw is not None:
            where = f"the Redis store of app {self.config.app_id!r} at {self.config.masked_url}"
            check_layout(raw.decode(errors="replace"), self._layout.count, where)

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        client, self._client = self._client, None
        self._replica_acks.report()
        if client is not None:
            with self._translating("close"):
                await client.aclose()

    @property
    def _redis(self) -> Client:
        if self._client is None:
            raise StoreError(f"{self!r} is not connected; call connect() first")
        return self._client

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``FCALL`` flowmesh's function ``name``; if this version's library is not loaded
        (a new deploy, a Redis without persistence that restarted), load it and retry once.
        """
        client, function = self._redis, self._functions.function(name)
        try:
            return await cast("Awaitable[Any]", client.fcall(function, len(keys), *keys, *args))
        except ResponseError as exc:
            if not is_missing_function(exc):
                raise
        await self._load_functions()
        return await cast("Awaitable[Any]", client.fcall(function, len(keys), *keys, *args))

    async def _run_pipelined(
        self, name: str, calls: Sequence[Call], *, replicated: bool = False
    ) -> list[Any]:
        """:meth:`_run` for several calls in one pipeline (no transaction: one round trip).

        Returns one result per call; a call that failed on its own (a function's
        ``error_reply``) gets its exception object instead. If the library was missing, it
        is loaded and only the calls that failed for that are sent again: they did not run.
        ``replicated``: the pipeline ends with ``WAIT`` for ``replica_acks`` replicas.
        """
        client, function = self._redis, self._functions.function(name)
        acks = self._replica_acks if replicated and self._replica_acks.enabled else None
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (1, 2):
            pipe: AnyPipeline
            waits: list[Wait] = []
            async with client.pipeline(transaction=False) as pipe:
                for index in todo:
                    keys, args = calls[index]
                    pipe.fcall(function, len(keys), *keys, *args)
                if acks is not None:
                    keys_of = [calls[i][0] for i in todo]
                    waits = add_waits(pipe, client, acks, keys_of, self.config.masked_url)
                replies = await pipe.execute(raise_on_error=False)
            if acks is not None:
                done = replies[: len(todo)]
                acks.settle(waits, replies[len(todo) :], [isinstance(r, Exception) for r in done])
            for index, reply in zip(todo, replies, strict=False):
                results[index] = reply
            todo = [
                i
                for i in todo
                if isinstance(results[i], ResponseError) and is_missing_function(results[i])
            ]
            if not todo or attempt == 2:
                break
            await self._load_functions()
        return results

    async def _load_functions(self) -> None:
        """``FUNCTION LOAD`` this version's library (development: a user that may).

        An app's least-privilege user may not: then the administrator has not run ``flowmesh
        security apply`` with this flowmesh version, which is what the error says.
        """
        library, client = self._functions, self._redis
        try:
            if isinstance(client, RedisCluster):
                # Every master; replicas get it by replication, so a promoted one has it.
                await client.execute_command(
                    "FUNCTION LOAD", "REPLACE", library.code, target_nodes=RedisCluster.PRIMARIES
                )
            else:
                await cast("Awaitable[Any]", client.function_load(library.code, replace=True))
        except ResponseError as exc:
            if "noperm" not in str(exc).lower() and "no permissions" not in str(exc).lower():
                raise
            raise StoreError(
                f"Redis at {self.config.masked_url} has no function library {library.name!r} "
                "(this flowmesh version's server-side code) and this Redis user may not load "
                "it: run `flowmesh security apply` with this flowmesh version (it runs FUNCTION "
                f"LOAD as an administrator): {exc}"
            ) from exc
        log.info("store.functions_loaded", app_id=self.config.app_id, library=library.name)

    async def ensure_functions(self) -> None:
        """Check (once, at start) that this version's library is callable, loading it where
        this user may; raise :class:`~flowmesh.StoreError` saying what to run otherwise.

        Calls ``claim_timers`` with a limit of 0 (reads nothing, writes nothing) rather than
        ``FUNCTION LIST``, which an app's user may not run; on every shard, so on a cluster
        every master holding one of the app's shards is checked.
        """
        calls: list[Call] = [([keys.timers], [0, 0, 0]) for keys in self._layout.shards]
        with self._translating("check the function library"):
            if len(calls) == 1:
                await self._run("claim_timers", *calls[0])
                return
            for result in await self._run_pipelined("claim_timers", calls):
                if isinstance(result, Exception):
                    raise result

    @contextmanager
    def _translating(self, action: str) -> Iterator[None]:
        """Turn redis-py errors into StoreError, never leaking the URL's password."""
        try:
            yield
        except (RedisError, RedisClusterException, AttributeError, RuntimeError) as exc:
            if isinstance(exc, AttributeError | RuntimeError) and not raised_in_client_io(exc):
                raise  # flowmesh's own bug, not a connection closed under a command
            detail = str(exc)
            password = urlsplit(self.config.url).password
            if password:
                detail = detail.replace(password, "***")
            raise StoreError(
                f"Redis store at {self.config.masked_url} (app {self.config.app_id!r}): "
                f"{action} failed: {type(exc).__name__}: {detail}"
            ) from exc

    async def check_safety(self) -> list[str]:
        """Reasons the Redis server may lose data: eviction, no or weak persistence
        (``appendfsync`` other than ``always``, unless ``allow_fsync_everysec``).

        If the server refuses ``CONFIG`` (an ACL user of ``flowmesh security plan``, a managed
        Redis), reads what ``INFO persistence`` and ``INFO memory`` show instead (AOF on or off,
        the eviction policy); if those are refused too, says so instead of failing. On a
        cluster, checks every master and names the one each warning is about.
        """
        client = self._redis
        with self._translating("check safety"):
            if not isinstance(client, RedisCluster):
                return await self._check_server(settings_of(client), client.info)
            warnings: list[str] = []
            for node in sorted(client.get_primaries(), key=lambda n: n.name):
                problems = await self._check_server(
                    node_settings_of(client, node), node_info_of(client, node)
                )
                warnings += (f"Redis Cluster master {node.name}: {p}" for p in problems)
            return warnings

    async def _check_server(
        self,
        read_settings: Callable[[], Awaitable[list[dict[Any, Any]]]],
        info: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> list[str]:
        try:
            replies = await read_settings()
        except ResponseError as config_refused:  # NOPERM, or CONFIG renamed away
            try:
                sections = {name: await info(name) for name in INFO_SECTIONS}
            except ResponseError as exc:
                return [
                    f"could not check the Redis server's persistence and eviction settings "
                    f"(CONFIG GET refused: {config_refused}; INFO refused: {exc}); make "
                    "sure maxmemory-policy is noeviction and AOF persistence (appendonly "
                    "yes) is on"
                ]
            log.info(
                "store.safety_checked_with_info",
                app_id=self.config.app_id,
                detail="CONFIG GET refused; appendfsync and save could not be checked",
            )
            return info_safety_warnings(sections)
        settings = {
            setting_text(name): setting_text(value)
            for reply in replies
            for name, value in reply.items()
        }
        return safety_warnings(settings, allow_everysec=self.config.allow_fsync_everysec)
