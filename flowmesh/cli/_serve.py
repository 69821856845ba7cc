"""Running one worker replica against RabbitMQ (and Redis if the app hosts workflows)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from flowmesh._app import App
from flowmesh._errors import ConfigurationError
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
    codec: Codec | None = None,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and exit.

    ``codec`` defaults to :func:`build_codec`: payload encryption from
    ``FLOWMESH_PAYLOAD_KEYS`` (checked before anything connects).
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
            config = RedisStoreConfig(url=redis_url, app_id=app.app_id, key_prefix=key_prefix)
            store = RedisStore(config, codec)
            await store.connect()
            await _check_redis(store, allow_unsafe_redis, log)
            # Fails now, saying to run `flowmesh security apply`, rather than at the first step.
            await store.ensure_functions()
        worker = Worker(app, transport=transport, store=store, codec=codec, options=options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await worker.start()
        await stop.wait()
        log.info("shutting down: draining in-flight work", timeout=options.drain_timeout)
        await worker.stop()
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
        raise ConfigurationError(
            "Redis may lose workflow histories: "
            + "; ".join(problems)
            + ". Fix the server (appendonly yes, maxmemory-policy noeviction) or pass "
            "--allow-unsafe-redis for development."
        )
