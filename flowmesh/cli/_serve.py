"""Running one worker replica against RabbitMQ (and Redis if the app hosts workflows)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from flowmesh._app import App
from flowmesh._errors import ConfigurationError, StoreError
from flowmesh.cli._config import build_codec
from flowmesh.codec import Codec
from flowmesh.runtime import Worker, WorkerOptions
from flowmesh.security import EncryptionCodec


async def serve(
    app: App,
    *,
    amqp_url: str,
    redis_url: str,
    key_prefix: str = "fm",
    options: WorkerOptions,
    allow_unsafe_redis: bool,
    allow_redis_everysec: bool = False,
    redis_check_interval: float = 60.0,
    redis_shards: int | None = None,
    redis_replica_acks: tuple[int | None, float] = (None, 1.0),
    codec: Codec | None = None,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and exit.

    ``codec`` defaults to :func:`build_codec`: payload encryption from
    ``FLOWMESH_PAYLOAD_KEYS`` (checked before anything connects). A hosting app's Redis is
    checked at start and every ``redis_check_interval`` seconds (0: only at start); if it
    becomes unsafe the replica drains and exits with the reason, as it would refuse to start.
    ``redis_shards`` (None: what the store records) must match the store's key layout.
    ``redis_replica_acks``: ``(replicas, timeout)`` a commit waits for (None: the default,
    1 on a cluster, 0 on a standalone Redis).
    """
    from flowmesh.store.redis import RedisStore, RedisStoreConfig
    from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

    log = structlog.get_logger("flowmesh").bind(app_id=app.app_id)
    if codec is None:
        codec = build_codec()
    _log_payload_protection(codec, log)
    transport = RabbitMQTransport(
        RabbitMQConfig(
            url=amqp_url,
            connection_name=f"flowmesh-{app.app_id}",
            # On SIGTERM, consumers let in-flight handlers finish before cancelling them.
            drain_timeout=options.drain_timeout,
        )
    )
    store: Any = None
    await transport.connect()
    try:
        if app.hosts_workflows:
            config = RedisStoreConfig(
                url=redis_url,
                app_id=app.app_id,
                key_prefix=key_prefix,
                allow_fsync_everysec=allow_redis_everysec,
                shards=redis_shards,
                replica_acks=redis_replica_acks[0],
                replica_ack_timeout=redis_replica_acks[1],
            )
            store = RedisStore(config, codec)
            await store.connect()  # refuses a store of another key layout
            await store.record_layout()
            await _check_redis(store, allow_unsafe_redis, log)
            # Fails now, saying to run `flowmesh security apply`, rather than at the first step.
            await store.ensure_functions()
        worker = Worker(app, transport=transport, store=store, codec=codec, options=options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await worker.start()
        unsafe: list[str] = []
        watch = None
        if store is not None and redis_check_interval > 0 and not allow_unsafe_redis:
            watch = asyncio.create_task(
                _watch_redis(store, redis_check_interval, unsafe, stop, log),
                name="flowmesh-redis-safety",
            )
        await stop.wait()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        log.info("shutting down: draining in-flight work", timeout=options.drain_timeout)
        await worker.stop()
        if unsafe:
            raise ConfigurationError(_refusal(unsafe, started=True))
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()
        await transport.close()


def _log_payload_protection(codec: Codec, log: Any) -> None:
    """Say whether user values are encrypted (key ids only, never keys)."""
    payload = codec.payload_codec
    if isinstance(payload, EncryptionCodec):
        log.info(
            "payload encryption enabled",
            active_key=payload.active_key_id,
            key_ids=list(payload.key_ids),
            allow_unbound=payload.allow_unbound,  # fmenc1 still read: a migration window
        )
    elif payload is not None:
        log.info("payload codec enabled", payload_codec=type(payload).__name__)
    else:
        log.info("payload encryption disabled: user values are stored and sent in plaintext")


async def _check_redis(store: Any, allow_unsafe: bool, log: Any) -> None:
    problems: list[str] = await store.check_safety()
    if not problems:
        return
    for problem in problems:
        log.warning("unsafe redis configuration", problem=problem)
    if not allow_unsafe:
        raise ConfigurationError(_refusal(problems, started=False))


def _refusal(problems: list[str], *, started: bool) -> str:
    when = "Redis became unsafe while this replica ran: it" if started else "Redis"
    return (
        f"{when} may lose workflow histories: "
        + "; ".join(problems)
        + ". Fix the server (appendonly yes, appendfsync always, maxmemory-policy noeviction) "
        "or pass --allow-unsafe-redis for development."
    )


async def _watch_redis(
    store: Any, interval: float, unsafe: list[str], stop: asyncio.Event, log: Any
) -> None:
    """Re-check the Redis configuration every ``interval`` seconds: someone may turn AOF or
    fsync down (``CONFIG SET``) or fail over to a differently configured server. On a problem,
    fill ``unsafe`` and set ``stop``: the replica drains and exits rather than acknowledge
    deliveries whose commits may not survive. A check that fails (Redis unreachable) is only
    logged: the steps themselves fail and are redelivered meanwhile.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            problems: list[str] = await store.check_safety()
        except StoreError as exc:
            log.warning("redis safety check failed", error=str(exc))
            continue
        if problems:
            for problem in problems:
                log.error("redis configuration became unsafe", problem=problem)
            unsafe.extend(problems)
            stop.set()
            return
