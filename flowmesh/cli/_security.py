"""``flowmesh security plan|apply`` and the TLS options of ``flowmesh worker``.

``plan`` prints the least-privilege users, permissions and declarations for a set of apps
(:class:`flowmesh.security.SecurityPlan`); ``apply`` carries them out with administrator
credentials: exchanges, queues and bindings over AMQP, users and permissions with
``rabbitmqctl``, Redis ACL users over a Redis admin connection. Passwords come from
``FLOWMESH_PASSWORD_<USER>`` environment variables and never appear in a plan.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import structlog

from flowmesh._errors import ConfigurationError
from flowmesh._tls import TLSConfig, with_tls_query
from flowmesh.ops import (
    SecurityPlan,
    declare_topology,
    password_variable,
    render_plan,
    topology_from_sources,
)
from flowmesh.security import DEFAULT_APP_USER_PATTERN
from flowmesh.store import redis_function_library
from flowmesh.transport import split_node_urls

F = TypeVar("F", bound=Callable[..., Any])

log = structlog.get_logger("flowmesh.security")


# -- TLS options (worker, security apply) ------------------------------------------------------


def tls_options(command: F) -> F:
    """Add ``--tls-ca/--tls-cert/--tls-key/--tls-insecure`` (env ``FLOWMESH_TLS_*``)."""
    decorators = [
        click.option(
            "--tls-ca",
            envvar="FLOWMESH_TLS_CA",
            default=None,
            help="CA bundle (PEM) that signed the servers' certificates; default: system CAs "
            "(env FLOWMESH_TLS_CA). Applies to amqps:// and rediss:// URLs.",
        ),
        click.option(
            "--tls-cert",
            envvar="FLOWMESH_TLS_CERT",
            default=None,
            help="Client certificate (PEM) for mutual TLS (env FLOWMESH_TLS_CERT).",
        ),
        click.option(
            "--tls-key",
            envvar="FLOWMESH_TLS_KEY",
            default=None,
            help="Private key of --tls-cert (env FLOWMESH_TLS_KEY).",
        ),
        click.option(
            "--tls-insecure",
            is_flag=True,
            envvar="FLOWMESH_TLS_INSECURE",
            help="Do not verify the servers' certificates (development only; logged as a warning).",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def tls_urls(
    amqp_url: str,
    redis_url: str | None,
    *,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
) -> tuple[str, str | None]:
    """The URLs with the TLS options folded into their query (where only a URL travels).

    Options apply to the ``amqps://``, ``rediss://`` and ``rediss+cluster://`` URLs; given
    with none of them, they are an
    error rather than silently ignored.
    """
    if not (tls_ca or tls_cert or tls_key or tls_insecure):
        return amqp_url, redis_url
    urls = [amqp_url] + ([redis_url] if redis_url else [])
    if not any(url.startswith(("amqps://", "rediss://", "rediss+cluster://")) for url in urls):
        raise click.UsageError(
            "--tls-* options need an amqps:// RabbitMQ URL or a rediss:// (or "
            "rediss+cluster://) Redis URL"
        )
    try:
        tls = TLSConfig(
            ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, verify=not tls_insecure
        )
        tls.ssl_context()  # unreadable files fail here, before anything connects
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None
    if tls_insecure:
        log.warning(
            "tls.verification_disabled",
            detail="--tls-insecure: server certificates are not verified (development only)",
        )
    try:
        # Every node of a RabbitMQ URL list gets the options (short entries become full URLs).
        nodes = split_node_urls(amqp_url)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None
    return (
        ",".join(with_tls_query(node, tls) for node in nodes),
        with_tls_query(redis_url, tls) if redis_url else None,
    )


# -- security plan / apply ---------------------------------------------------------------------


def _pairs(values: tuple[str, ...], option: str) -> dict[str, list[str]]:
    """``("a=b,c", "a=d")`` -> ``{"a": ["b", "c", "d"]}``."""
    result: dict[str, list[str]] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        targets = [t.strip() for t in rest.split(",") if t.strip()]
        if not sep or not key.strip() or not targets:
            raise click.BadParameter(
                f"expected NAME=APP[,APP...], got {value!r}", param_hint=option
            )
        result.setdefault(key.strip(), []).extend(targets)
    return result


def _plan_options(command: F) -> F:
    decorators = [
        click.option(
            "--workers",
            "workers_dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Read apps and who calls whom from the app modules in this directory "
            "(default: ./workers when no --app-id/--calls/--children is given).",
        ),
        click.option("--app-id", "app_ids", multiple=True, help="An app of the plan (repeat)."),
        click.option(
            "--hosts", multiple=True, help="An app that hosts workflows (needs Redis) (repeat)."
        ),
        click.option(
            "--calls",
            multiple=True,
            metavar="HOST=APP[,APP]",
            help="HOST's workflows run activities on these apps (repeat).",
        ),
        click.option(
            "--children",
            multiple=True,
            metavar="PARENT=APP[,APP]",
            help="PARENT's workflows start child workflows hosted by these apps (repeat).",
        ),
        click.option(
            "--events",
            multiple=True,
            metavar="HOST=APP[,APP]",
            help="HOST's workflows send events (send_event) to workflows of these apps (repeat).",
        ),
        click.option(
            "--client",
            "clients",
            multiple=True,
            metavar="USER=APP[,APP]",
            help="A client user that starts and controls workflows of these apps (repeat).",
        ),
        click.option("--vhost", default="/", show_default=True, help="RabbitMQ virtual host."),
        click.option(
            "--key-prefix",
            envvar="FLOWMESH_REDIS_PREFIX",
            default="fm",
            show_default=True,
            help="Redis key prefix (env FLOWMESH_REDIS_PREFIX).",
        ),
        click.option(
            "--user-pattern",
            envvar="FLOWMESH_APP_USER_PATTERN",
            default=DEFAULT_APP_USER_PATTERN,
            show_default=True,
            help="User name of each app; {app} is replaced by the app ID.",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _build_plan(
    workers_dir: Path | None,
    app_ids: tuple[str, ...],
    hosts: tuple[str, ...],
    calls: tuple[str, ...],
    children: tuple[str, ...],
    events: tuple[str, ...],
    clients: tuple[str, ...],
    vhost: str,
    key_prefix: str,
    user_pattern: str,
) -> SecurityPlan:
    calls_map = _pairs(calls, "--calls")
    children_map = _pairs(children, "--children")
    events_map = _pairs(events, "--events")
    unresolved: tuple[str, ...] = ()
    apps = list(app_ids)
    hosting = list(hosts)
    if workers_dir is None and not (app_ids or calls or children or events):
        workers_dir = Path("workers")
    if workers_dir is not None:
        sources = [
            p
            for p in sorted(workers_dir.glob("*.py"))
            if not p.name.startswith("_") and p.stem != "demo"
        ]
        if not sources:
            raise click.ClickException(f"no app modules in {workers_dir}")
        topology = topology_from_sources(sources)
        apps += topology.apps
        hosting += topology.hosts
        for host, targets in topology.calls.items():
            calls_map.setdefault(host, []).extend(targets)
        for parent, child_apps in topology.children.items():
            children_map.setdefault(parent, []).extend(child_apps)
        for sender, receivers in topology.events.items():
            events_map.setdefault(sender, []).extend(receivers)
        unresolved = topology.unresolved
    try:
        return SecurityPlan.build(
            apps=apps,
            hosts=hosting,
            calls=calls_map,
            children=children_map,
            events=events_map,
            clients=_pairs(clients, "--client"),
            vhost=vhost,
            key_prefix=key_prefix,
            user_pattern=user_pattern,
            unresolved=unresolved,
        )
    except (ConfigurationError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def security() -> None:
    """Least-privilege users, permissions and declarations per app ID."""


@security.command()
@_plan_options
def plan(**options: Any) -> None:
    """Print the RabbitMQ and Redis users, permissions and declarations for the apps.

    Example: flowmesh security plan --calls app1=app2,app3 --children app1=gpu-trainer
    --client fmc-ops=app1
    """
    click.echo(render_plan(_build_plan(**options)), nl=False)


@security.command()
@_plan_options
@click.option(
    "--amqp-url",
    envvar="FLOWMESH_ADMIN_AMQP_URL",
    required=True,
    help="An administrator's RabbitMQ URL, with the plan's vhost (env FLOWMESH_ADMIN_AMQP_URL).",
)
@click.option(
    "--redis-url",
    envvar="FLOWMESH_ADMIN_REDIS_URL",
    default=None,
    help="An administrator's Redis URL (env FLOWMESH_ADMIN_REDIS_URL); without it the Redis "
    "users are not created.",
)
@click.option(
    "--rabbitmqctl",
    default="rabbitmqctl",
    show_default=True,
    help="How to run rabbitmqctl (e.g. 'rabbitmqctl -n rabbit@host'); '' skips creating "
    "RabbitMQ users and permissions.",
)
@click.option(
    "--generate-passwords",
    is_flag=True,
    help="Generate passwords missing from FLOWMESH_PASSWORD_<USER> and print them as export "
    "lines (store them in your secret manager).",
)
@tls_options
def apply(
    amqp_url: str,
    redis_url: str | None,
    rabbitmqctl: str,
    generate_passwords: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
    **options: Any,
) -> None:
    """Apply the plan: declarations, RabbitMQ users and permissions, Redis function library
    and ACL users."""
    from flowmesh.cli._run import run as _run

    security_plan = _build_plan(**options)
    amqp_url, redis_url = tls_urls(
        amqp_url,
        redis_url,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_insecure=tls_insecure,
    )
    passwords = _passwords(security_plan, generate=generate_passwords)

    for line in _run(declare_topology(security_plan, amqp_url)):
        click.echo(f"declared {line}")
    if rabbitmqctl:
        run_rabbitmqctl(security_plan, passwords, shlex.split(rabbitmqctl))
        click.echo(f"RabbitMQ users and permissions set in vhost {security_plan.vhost!r}")
    if redis_url:
        _run(apply_redis_acls(security_plan, passwords, redis_url))
        click.echo(f"Redis function library {redis_function_library().name} loaded")
        click.echo("Redis ACL users set: " + ", ".join(u.name for u in security_plan.redis_users()))
        # The apps' users may not read appendfsync (CONFIG GET): check it here, as admin.
        for warning in _run(redis_warnings(redis_url)):
            click.echo(f"WARNING: Redis may lose workflow histories: {warning}")


async def redis_warnings(redis_url: str) -> list[str]:
    """:meth:`RedisStore.check_safety` with the administrator's connection."""
    from flowmesh.codec import Codec
    from flowmesh.store.redis import RedisStore, RedisStoreConfig

    async with RedisStore(RedisStoreConfig(url=redis_url, app_id="admin"), Codec()) as store:
        return await store.check_safety()


@security.command()
def functions() -> None:
    """Print flowmesh's Redis function library (what `apply` loads), for loading by hand:

    flowmesh security functions | redis-cli -x FUNCTION LOAD REPLACE
    """
    click.echo(redis_function_library().code, nl=False)


def _passwords(security_plan: SecurityPlan, *, generate: bool) -> dict[str, str]:
    users = [u.name for u in security_plan.rabbit_users()]
    passwords: dict[str, str] = {}
    missing = []
    for user in users:
        value = os.environ.get(password_variable(user))
        if value:
            passwords[user] = value
        elif generate:
            passwords[user] = secrets.token_urlsafe(24)
            click.echo(f"export {password_variable(user)}={shlex.quote(passwords[user])}")
        else:
            missing.append(password_variable(user))
    if missing:
        raise click.ClickException(f"set {', '.join(missing)} (or pass --generate-passwords)")
    return passwords


def run_rabbitmqctl(
    security_plan: SecurityPlan, passwords: dict[str, str], rabbitmqctl: list[str]
) -> None:
    """Create or update the plan's RabbitMQ users and set their permissions and policies.

    Each ``rabbitmqctl`` call starts an Erlang VM (one to three seconds), and a plan has a
    few per app; the commands about one user (or one policy) run in order, those of
    different subjects side by side, which makes ``apply`` several times faster.
    """
    chains: dict[str, list[list[str]]] = {}
    for command in security_plan.rabbitmqctl_commands(passwords):
        chains.setdefault(_subject(command), []).append(command)
    with ThreadPoolExecutor(max_workers=_RABBITMQCTL_PARALLEL) as pool:
        failures = [
            failure
            for failure in pool.map(lambda chain: _run_chain(rabbitmqctl, chain), chains.values())
            if failure
        ]
    if failures:
        raise click.ClickException(failures[0])


_RABBITMQCTL_PARALLEL = 8
"""``rabbitmqctl`` processes at once: the broker answers them in parallel easily."""


def _subject(command: list[str]) -> str:
    """The user or policy a ``rabbitmqctl`` command is about: its first positional argument
    after the verb (``-p <vhost>`` and ``--apply-to <kind>`` skipped)."""
    rest = command[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-p", "--apply-to", "--priority") else rest[1:]
    return rest[0] if rest else ""


def _run_chain(rabbitmqctl: list[str], chain: list[list[str]]) -> str:
    """Run one subject's commands in order; the first failure's message, or ''."""
    for command in chain:
        if command[0] == "add_user":
            # "--": a password starting with "-" is not an option (1 in 32 generated ones).
            done = _ctl(rabbitmqctl, ["add_user", "--", *command[1:]])
        else:
            done = _ctl(rabbitmqctl, command)
        if (
            done.returncode != 0
            and command[0] == "add_user"
            and "already" in done.stdout + done.stderr
        ):
            done = _ctl(rabbitmqctl, ["change_password", "--", command[1], command[2]])
        if done.returncode != 0:
            shown = command[:2] if command[0] == "add_user" else command  # no password
            return f"rabbitmqctl {' '.join(shown)} failed: {(done.stderr or done.stdout).strip()}"
    return ""


def _ctl(rabbitmqctl: list[str], arguments: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [*rabbitmqctl, *arguments], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise click.ClickException(f"cannot run {rabbitmqctl[0]}: {exc}") from None


async def apply_redis_acls(
    security_plan: SecurityPlan, passwords: dict[str, str], redis_url: str
) -> None:
    """Load flowmesh's Redis function library, then ``ACL SETUSER`` every hosting app's user.

    The library first: the users may only ``FCALL`` it (they cannot load it themselves).
    """
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import RedisError

    from flowmesh.store.redis import RedisStoreConfig, redis_client

    client = redis_client(RedisStoreConfig(url=redis_url, app_id="admin"))
    # On a Redis Cluster the library goes to every master (replicas get it by replication, so
    # a promoted one has it) and the users to every node: ACLs are not replicated.
    cluster = isinstance(client, RedisCluster)
    try:
        try:
            if cluster:
                await client.execute_command(
                    "FUNCTION LOAD",
                    "REPLACE",
                    redis_function_library().code,
                    target_nodes=RedisCluster.PRIMARIES,
                )
            else:
                await cast(
                    "Awaitable[Any]",
                    client.function_load(redis_function_library().code, replace=True),
                )
        except RedisError as exc:
            raise click.ClickException(
                f"Redis refused to load flowmesh's function library: {exc}"
            ) from None
        for command in security_plan.redis_acl_commands(passwords):
            if cluster:
                await client.execute_command(*command, target_nodes=RedisCluster.ALL_NODES)
            else:
                await client.execute_command(*command)
    except RedisError as exc:
        raise click.ClickException(f"Redis refused the ACL users: {exc}") from None
    finally:
        await client.aclose()
