"""Secrets stay secret: passwords in URLs never reach a log line, an error or CLI output.

Unit tests of the one masking implementation (``flowmesh.security.mask_secrets``) and of the
logging set-up that applies it to every structlog event and stdlib record; then real worker
processes and CLI commands whose RabbitMQ and Redis URLs carry a distinctive password (a
RabbitMQ user and a Redis ACL user created for the test), with every byte they print scanned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis

from flowmesh.security import MASK, MaskingFormatter, mask_log_event, mask_secrets, mask_value
from flowmesh.store.redis import RedisStore, RedisStoreConfig
from flowmesh.transport.rabbitmq import RabbitMQConfig
from tests.harness.processes import REPO, Services, WorkerProcesses

APPS = "tests.security.apps"

# -- mask_secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://user:pa55@host:5672/vh", "amqp://user:***@host:5672/vh"),
        ("amqps://user:pa55@host/", "amqps://user:***@host/"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://default:pw@h:6380", "rediss://default:***@h:6380"),
        ("AMQP://User:PW@H/", "AMQP://User:***@H/"),
        ("amqp://u:p%40ss%2Fw@h/", "amqp://u:***@h/"),
        ("amqp://u:p@ss:w/rd@h/", "amqp://u:***@h/"),  # raw '@', ':' and '/' in a password
        (
            "cannot connect to 'amqp://u:pw@h/': refused",
            "cannot connect to 'amqp://u:***@h/': refused",
        ),
        (
            "amqp://a:one@h1/ then redis://b:two@h2/0",
            "amqp://a:***@h1/ then redis://b:***@h2/0",
        ),
        ('{"url": "amqp://u:pw@h/", "mail": "x@y"}', '{"url": "amqp://u:***@h/", "mail": "x@y"}'),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://h/0?db=1&password=pw", "redis://h/0?db=1&password=***"),
        # Nothing to mask:
        ("amqp://guest@h/", "amqp://guest@h/"),
        ("amqp://h:5672/vh", "amqp://h:5672/vh"),
        ("https://example.com/a:b@c", "https://example.com/a:b@c"),
        ("user:pw@host without a scheme", "user:pw@host without a scheme"),
        ("", ""),
    ],
)
def test_mask_secrets(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected
    assert mask_secrets(expected) == expected  # idempotent


@pytest.mark.parametrize("password", ["pw", "p@ss", "a:b:c", "x/y@z", "%40%2F", "ünï-çødé", "'q'"])
def test_no_password_survives_masking(password: str) -> None:
    for url in (f"amqp://user:{password}@host:5672/vh", f"redis://:{password}@h:6379/0"):
        for text in (url, f"error at {url}: refused", repr({"url": url}), f"[{url!r}]"):
            masked = mask_secrets(text)
            assert password not in masked.replace("user", "").replace("host", ""), masked
            assert MASK in masked


@pytest.mark.parametrize(
    "text",
    [
        "a." * 50_000 + "://",
        "a://" * 50_000,
        "amqp://u:" * 20_000,
        "amqp://u:" + "x" * 500_000,
        "redis://:p@h " * 20_000,
        "?password=" * 50_000,
    ],
    ids=["scheme-chars", "schemes", "userinfos", "long-password", "many-urls", "queries"],
)
def test_masking_takes_linear_time_on_hostile_text(text: str) -> None:
    """Log values can be large and attacker-influenced: no backtracking blow-up."""
    started = time.perf_counter()
    mask_secrets(text)
    assert time.perf_counter() - started < 1.0


def test_mask_value_masks_strings_in_any_container_and_reprs_holding_secrets() -> None:
    class Config:
        def __repr__(self) -> str:
            return "Config(url='amqp://u:hunter2@h/')"

    value = {
        "a": ["amqp://u:hunter2@h/", ("redis://:hunter2@h/",)],
        "amqp://k:hunter2@h/": {"deep": {"redis://:hunter2@h/"}},
        "n": 5,
        "b": b"amqp://u:bytes-stay@h/",
        "obj": Config(),
        "err": ConnectionError("to amqp://u:hunter2@h/"),
    }
    masked = mask_value(value)
    assert "hunter2" not in repr(masked)
    assert masked["n"] == 5 and masked["b"] == value["b"]  # type: ignore[index]
    assert masked["obj"] == "Config(url='amqp://u:***@h/')"  # type: ignore[index]
    plain = object()
    assert mask_value(plain) is plain  # nothing to hide: kept as is


def test_mask_log_event_masks_every_value_of_an_event() -> None:
    event = {
        "event": "connecting to amqp://u:hunter2@h/",
        "url": "redis://:hunter2@h/0",
        "exception": 'Traceback ...\nConnectionError: "amqp://u:hunter2@h/"',
        "config": {"urls": ["amqp://u:hunter2@h/"]},
        "count": 3,
    }
    masked = mask_log_event(None, "info", dict(event))
    assert "hunter2" not in repr(masked)
    assert masked["count"] == 3 and masked["url"] == "redis://:***@h/0"


def test_masking_formatter_masks_messages_and_tracebacks() -> None:
    formatter = MaskingFormatter("%(message)s")
    try:
        raise ConnectionError("cannot reach amqp://u:hunter2@h/")
    except ConnectionError:
        record = logging.LogRecord(
            "aio_pika", logging.WARNING, __file__, 1, "retry %s", ("redis://:hunter2@h/",),
            sys.exc_info(),
        )  # fmt: skip
    text = formatter.format(record)
    assert "hunter2" not in text and "retry redis://:***@h/" in text and "ConnectionError" in text


CONFIGURE_AND_LOG = textwrap.dedent(
    """
    import logging, structlog, sys
    from flowmesh.cli._config import configure_logging
    configure_logging("debug", sys.argv[1])
    log = structlog.get_logger("flowmesh").bind(url="amqp://u:hunter2@h/")
    log.info("connecting to redis://:hunter2@h/0", nested={"k": ["amqps://a:hunter2@h/"]})
    try:
        raise ConnectionError("refused by amqp://u:hunter2@h/")
    except ConnectionError:
        log.exception("connection failed")
    logging.getLogger("aiormq").warning("reconnecting to %s", "amqp://u:hunter2@h/")
    """
)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_cli_logging_masks_structlog_and_stdlib_output(fmt: str) -> None:
    """configure_logging (in a fresh process: it configures structlog globally)."""
    done = subprocess.run(
        [sys.executable, "-c", CONFIGURE_AND_LOG, fmt],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "hunter2" not in output
    assert output.count(":***@") >= 5, output
    assert "reconnecting to amqp://u:***@h/" in output and "ConnectionError" in output


def test_config_reprs_do_not_show_passwords() -> None:
    amqp = RabbitMQConfig(url="amqp://u:hunter2@h/")
    store_config = RedisStoreConfig(url="redis://:hunter2@h:6379/0", app_id="a")
    for text in (repr(amqp), repr(store_config), repr(RedisStore(store_config, codec=None))):  # type: ignore[arg-type]
        assert "hunter2" not in text
    assert "***" in amqp.masked_url and "***" in store_config.masked_url


def test_cli_help_shows_the_default_url_masked() -> None:
    from click.testing import CliRunner

    from flowmesh.cli import main

    result = CliRunner().invoke(main, ["status", "--help"])
    assert result.exit_code == 0
    assert "guest:guest@" not in result.output and "guest:***@" in result.output


# -- real services ---------------------------------------------------------------------------------


@dataclass
class Secret:
    """A distinctive password, how it appears raw and URL-encoded, and the URLs carrying it."""

    user: str
    password: str
    amqp_url: str
    redis_url: str
    wrong_amqp_url: str
    wrong_redis_url: str

    @property
    def forms(self) -> list[str]:
        """Every way the password could show up in output (raw, encoded, its core)."""
        core = self.password.split("!")[0]
        return [self.password, quote(self.password, safe=""), core]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def _with_userinfo(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def secret_user(services: Services) -> Iterator[Secret]:
    """A RabbitMQ user on the session vhost and a Redis ACL user, both with a distinctive
    password; deleted afterwards."""
    suffix = secrets.token_hex(4)
    user = f"fm-secret-{suffix}"
    password = f"Pw-Zanzibar-{secrets.token_hex(6)}!x"
    _rabbitmqctl("add_user", user, password)
    client = redis.Redis.from_url(services.redis_url)
    try:
        _rabbitmqctl("set_permissions", "-p", services.vhost, user, ".*", ".*", ".*")
        client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
        yield Secret(
            user,
            password,
            _with_userinfo(services.amqp_url, user, password),
            _with_userinfo(services.redis_url, user, password),
            _with_userinfo(services.amqp_url, user, password + "-wrong"),
            _with_userinfo(services.redis_url, user, password + "-wrong"),
        )
    finally:
        _rabbitmqctl("delete_user", user)
        client.execute_command("ACL", "DELUSER", user)
        client.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``flowmesh ARGS``; (exit code, stdout + stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "flowmesh.cli", *args],
        cwd=REPO,
        env={**os.environ, "FLOWMESH_LOG_LEVEL": "debug", **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def assert_no_secret(text: str, secret: Secret, where: str) -> None:
    for form in secret.forms:
        assert form not in text, f"password ({form!r}) in {where}:\n{text[-3000:]}"


def assert_urls_masked(text: str, secret: Secret, where: str) -> None:
    """Every URL that names the test user shows its password as ***."""
    for line in text.splitlines():
        if f"{secret.user}:" in line and "://" in line:
            assert f"{secret.user}:{MASK}@" in line, f"unmasked URL in {where}: {line}"


@pytest.mark.real_services
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_passwords_never_appear_in_worker_logs_or_cli_output(
    workers: WorkerProcesses, services: Services, secret_user: Secret
) -> None:
    """Workers and CLI commands whose RabbitMQ and Redis URLs carry a distinctive password
    run a workflow, show statuses, queues and histories, and fail on a wrong password: the
    password appears nowhere in what they print, and every URL they show reads ``user:***@``."""
    secret = secret_user
    target = Services(secret.amqp_url, secret.redis_url, services.key_prefix, services.vhost)
    debug = {"FLOWMESH_LOG_LEVEL": "debug"}
    host = workers.start("secm-host", module=APPS, services=target, env=debug)
    act = workers.start("secm-act", module=APPS, services=target, env=debug)
    for process in (host, act):
        workers.wait_ready(process)

    outputs: dict[str, tuple[int, str]] = {}
    env_urls = {"FLOWMESH_AMQP_URL": secret.amqp_url, "FLOWMESH_REDIS_URL": secret.redis_url}
    outputs["start"] = run_cli(
        "start", "relay", "--app-id", "secm-host", "--instance-id", "mask-1", "--input",
        '{"v": 1}', "--wait", "--timeout", "30", "--amqp-url", secret.amqp_url,
    )  # fmt: skip
    outputs["status"] = run_cli("status", "mask-1", "--app-id", "secm-host", env=env_urls)
    outputs["apps"] = run_cli("apps", "secm-host", "secm-act", "--amqp-url", secret.amqp_url)
    # history asks the host's replicas through the broker (it used to read Redis).
    outputs["history"] = run_cli(
        "history", "mask-1", "--app-id", "secm-host", "--amqp-url", secret.amqp_url
    )  # fmt: skip
    outputs["raise-event"] = run_cli(
        "raise-event", "mask-1", "late", "--app-id", "secm-host", env=env_urls
    )
    outputs["status-wrong-password"] = run_cli(
        "status", "mask-1", "--app-id", "secm-host", "--amqp-url", secret.wrong_amqp_url
    )
    outputs["apps-wrong-password"] = run_cli(
        "apps", "secm-host", env={"FLOWMESH_AMQP_URL": secret.wrong_amqp_url}
    )
    outputs["history-wrong-password"] = run_cli(
        "history", "mask-1", "--app-id", "secm-host", "--amqp-url", secret.wrong_amqp_url
    )
    outputs["worker-wrong-password"] = run_cli(
        "worker", "--app-id", "secm-host", "--module", APPS, "--allow-unsafe-redis",
        "--amqp-url", secret.wrong_amqp_url, "--redis-url", secret.redis_url,
    )  # fmt: skip
    outputs["worker-wrong-redis-password"] = run_cli(
        "worker", "--app-id", "secm-host", "--module", APPS, "--allow-unsafe-redis",
        env={"FLOWMESH_AMQP_URL": secret.amqp_url, "FLOWMESH_REDIS_URL": secret.wrong_redis_url},
    )  # fmt: skip

    for name in ("start", "status", "apps", "history", "raise-event"):
        code, text = outputs[name]
        assert code == 0, f"{name} failed:\n{text}"
    assert "stamped" in outputs["start"][1] and "COMPLETED" in outputs["status"][1]
    assert "secm-act" in outputs["apps"][1] and "ActivityCompleted" in outputs["history"][1]
    for name in (
        "status-wrong-password",
        "apps-wrong-password",
        "history-wrong-password",
        "worker-wrong-password",
        "worker-wrong-redis-password",
    ):
        code, text = outputs[name]
        assert code != 0, f"{name} should have failed:\n{text}"
        assert f"{secret.user}:{MASK}@" in text, f"{name} does not show the masked URL:\n{text}"

    workers.stop_all()
    logs = {
        f"worker log {path.name}": path.read_text(errors="replace")
        for *_, path in workers.processes
    }
    assert any("transport.connected" in text for text in logs.values())
    for where, text in {**{k: v for k, (_, v) in outputs.items()}, **logs}.items():
        assert_no_secret(text, secret, where)
        assert_urls_masked(text, secret, where)
    masked_lines = sum(text.count(f"{secret.user}:{MASK}@") for text in logs.values())
    assert masked_lines >= 2  # the workers do show where they connect, masked


@pytest.mark.real_services
@pytest.mark.timeout(60)
async def test_in_process_client_errors_mask_the_password(secret_user: Secret) -> None:
    from flowmesh import Client, TransportError

    with pytest.raises(TransportError) as info:
        async with Client(secret_user.wrong_amqp_url):
            await asyncio.sleep(0)
    assert_no_secret(str(info.value), secret_user, "TransportError")
    assert f"{secret_user.user}:{MASK}@" in str(info.value)


def test_module_docs_name_the_one_masking_implementation() -> None:
    source = (REPO / "flowmesh" / "cli" / "_config.py").read_text()
    assert "from flowmesh.security import" in source and "re.compile" not in source
    assert Path(REPO / "docs" / "security-payloads.md").exists()
