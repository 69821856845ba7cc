"""TLS to RabbitMQ and Redis: verified by default, client certificates, clear failures.

A private RabbitMQ node with a TLS listener and a private TLS-only Redis (both requiring a
client certificate) run for the module; see ``tests/harness/tls.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import structlog

from flowmesh import Client
from flowmesh._errors import ConfigurationError, StoreError, TransportError
from flowmesh._tls import with_tls_query
from flowmesh.codec import Codec
from flowmesh.security import TLSConfig
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from flowmesh.transport import Outgoing, QueueKind
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.harness.processes import Services, WorkerProcesses
from tests.harness.tls import PKI, TLSRabbitMQ, TLSRedis, make_pki

WAIT = 10.0


# -- settings (no servers) ---------------------------------------------------------------------


def test_tls_settings_need_tls_urls_and_verify_by_default() -> None:
    with pytest.raises(ConfigurationError, match="amqps"):
        RabbitMQConfig(url="amqp://guest:guest@127.0.0.1/", tls=TLSConfig())
    with pytest.raises(ConfigurationError, match="rediss"):
        RedisStoreConfig(url="redis://127.0.0.1/0", app_id="a", tls=TLSConfig())
    assert RabbitMQConfig(url="amqps://h/").effective_tls == TLSConfig()
    assert RabbitMQConfig(url="amqp://h/").effective_tls is None
    assert RedisStoreConfig(url="rediss://h/0", app_id="a").effective_tls == TLSConfig()
    with pytest.raises(ConfigurationError, match="key_file"):
        TLSConfig(key_file="k.pem")


def test_tls_settings_travel_in_the_url_query() -> None:
    tls = TLSConfig(ca_file="/c/ca.pem", cert_file="/c/me.pem", key_file="/c/me.key")
    amqp = with_tls_query("amqps://u:p@h:5671/v?heartbeat=30", tls)
    assert RabbitMQConfig(url=amqp).effective_tls == tls
    assert "heartbeat=30" in amqp
    redis_url = with_tls_query("rediss://u:p@h:6380/0", tls)
    assert RedisStoreConfig(url=redis_url, app_id="a").effective_tls == tls
    insecure = TLSConfig(verify=False)
    assert RabbitMQConfig(url=with_tls_query("amqps://h/", insecure)).effective_tls == insecure
    assert (
        RedisStoreConfig(url=with_tls_query("rediss://h/0", insecure), app_id="a").effective_tls
        == insecure
    )
    assert with_tls_query("amqp://h/", tls) == "amqp://h/"  # plain URLs are left alone


def test_missing_certificate_files_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        TLSConfig(ca_file=str(tmp_path / "nope.pem")).ssl_context()


# -- against TLS servers -----------------------------------------------------------------------


@dataclass
class Servers:
    pki: PKI
    rabbit: TLSRabbitMQ
    redis: TLSRedis

    def tls(self, **changes: object) -> TLSConfig:
        settings: dict[str, object] = {
            "ca_file": str(self.pki.ca),
            "cert_file": str(self.pki.client_cert),
            "key_file": str(self.pki.client_key),
            **changes,
        }
        return TLSConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("tls")
    pki = make_pki(base / "pki")
    with TLSRabbitMQ(base / "rabbit", pki) as rabbit, TLSRedis(base / "redis", pki) as redis:
        yield Servers(pki, rabbit, redis)


def rabbit_config(servers: Servers, tls: TLSConfig) -> RabbitMQConfig:
    return RabbitMQConfig(
        url=servers.rabbit.tls_url, tls=tls, operation_timeout=WAIT, publish_timeout=WAIT
    )


def redis_config(servers: Servers, tls: TLSConfig) -> RedisStoreConfig:
    return RedisStoreConfig(
        url=servers.redis.url, app_id="tls-app", tls=tls, retries=0, connect_timeout=WAIT
    )


@pytest.mark.timeout(240)
def test_a_workflow_runs_over_tls_with_client_certificates(
    servers: Servers, tmp_path: Path
) -> None:
    """Workers get the CA and client certificate from --tls-* options (env FLOWMESH_TLS_*);
    the client from the URL's query. The broker lists every connection as TLS."""
    pki = servers.pki
    services = Services(servers.rabbit.tls_url, servers.redis.url, "fmtls", "/")
    workers = WorkerProcesses(services, tmp_path)
    env = {
        "FLOWMESH_TLS_CA": str(pki.ca),
        "FLOWMESH_TLS_CERT": str(pki.client_cert),
        "FLOWMESH_TLS_KEY": str(pki.client_key),
    }
    try:
        for app_id in ("app1", "app2", "app3"):
            workers.wait_ready(workers.start(app_id, env=env), timeout=60)
        query = urlencode(
            {"cafile": pki.ca, "certfile": pki.client_cert, "keyfile": pki.client_key}
        )

        async def run() -> object:
            async with Client(f"{servers.rabbit.tls_url}?{query}") as client:
                handle = await client.start_workflow(
                    "pipeline", {"text": "over tls"}, app_id="app1"
                )
                return await handle.result(timeout=60)

        result = asyncio.run(run())
    except BaseException:
        print(workers.logs())
        raise
    finally:
        workers.stop_all()
    assert isinstance(result, dict)
    assert result["result"]["text"] == "OVER TLS"
    assert result["result"]["sealed_by"].startswith("app3/")
    logs = workers.logs()
    assert "tls_verification_disabled" not in logs


async def test_transport_and_store_connect_with_verification(servers: Servers) -> None:
    async with RabbitMQTransport(rabbit_config(servers, servers.tls())) as transport:
        await transport.publish([Outgoing("tls-app", QueueKind.WORK, b"hello")])
        assert (await transport.queue_stats("tls-app")).work_messages >= 1
        listing = await asyncio.to_thread(
            servers.rabbit.ctl,
            "list_connections",
            "ssl",
            "peer_cert_subject",
            "--formatter",
            "json",
            "--silent",
        )
    connections = json.loads(listing)
    assert len(connections) == 2  # publishing and consuming
    assert all(c["ssl"] for c in connections)
    assert all("flowmesh-test-client" in c["peer_cert_subject"] for c in connections)
    async with RedisStore(redis_config(servers, servers.tls()), Codec()) as store:
        assert await store.load("nothing") is None
        assert await store.check_safety() == []


async def test_a_server_certificate_from_another_ca_fails_clearly_and_promptly(
    servers: Servers,
) -> None:
    wrong = servers.tls(ca_file=str(servers.pki.other_ca))
    async with asyncio.timeout(3 * WAIT):
        with pytest.raises(TransportError, match=r"(?i)certificate verify failed"):
            await RabbitMQTransport(rabbit_config(servers, wrong)).connect()
        with pytest.raises(StoreError, match=r"(?i)certificate verify failed"):
            await RedisStore(redis_config(servers, wrong), Codec()).connect()


async def test_connecting_without_a_client_certificate_is_refused(servers: Servers) -> None:
    anonymous = TLSConfig(ca_file=str(servers.pki.ca))
    async with asyncio.timeout(3 * WAIT):
        with pytest.raises(TransportError, match="cannot connect"):
            await RabbitMQTransport(rabbit_config(servers, anonymous)).connect()
        with pytest.raises(StoreError):
            store = RedisStore(redis_config(servers, anonymous), Codec())
            await store.connect()
            await store.load("x")


async def test_turning_verification_off_is_explicit_and_logged(servers: Servers) -> None:
    insecure = servers.tls(ca_file=None, verify=False)  # the system CAs do not know our CA
    with structlog.testing.capture_logs() as logs:
        async with RabbitMQTransport(rabbit_config(servers, insecure)) as transport:
            await transport.declare_app("tls-app")
        async with RedisStore(redis_config(servers, insecure), Codec()) as store:
            await store.load("x")
    events = {entry["event"]: entry for entry in logs if entry["log_level"] == "warning"}
    assert "transport.tls_verification_disabled" in events
    assert "store.tls_verification_disabled" in events
    # With verification on (the default), the unknown CA is refused.
    with pytest.raises(TransportError, match=r"(?i)certificate verify failed"):
        await RabbitMQTransport(rabbit_config(servers, servers.tls(ca_file=None))).connect()


@pytest.mark.timeout(120)
def test_worker_with_tls_insecure_logs_a_warning(servers: Servers, tmp_path: Path) -> None:
    pki = servers.pki
    services = Services(servers.rabbit.tls_url, servers.redis.url, "fmtls", "/")
    workers = WorkerProcesses(services, tmp_path)
    env = {
        "FLOWMESH_TLS_INSECURE": "1",
        "FLOWMESH_TLS_CERT": str(pki.client_cert),
        "FLOWMESH_TLS_KEY": str(pki.client_key),
    }
    try:
        workers.wait_ready(workers.start("app1", env=env), timeout=60)
    finally:
        workers.stop_all()
    warnings = [
        json.loads(line)
        for line in workers.logs().splitlines()
        if line.startswith("{") and "verification_disabled" in line
    ]
    assert {w["event"] for w in warnings} >= {
        "tls.verification_disabled",
        "transport.tls_verification_disabled",
        "store.tls_verification_disabled",
    }
    assert all(w["level"] == "warning" for w in warnings)
