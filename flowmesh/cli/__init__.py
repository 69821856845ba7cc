"""The ``flowmesh`` command line: run workers and operate workflows.

This module is the composition root: it alone configures logging and signal handling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from flowmesh._errors import FlowmeshError
from flowmesh.cli._config import (
    DEFAULT_AMQP_URL,
    DEFAULT_REDIS_URL,
    build_codec,
    configure_logging,
    mask_url,
)
from flowmesh.cli._dead_letters import dead_letters
from flowmesh.cli._format import history_table, state_text, stats_table
from flowmesh.cli._loader import discover_app_ids, load_app
from flowmesh.cli._replay_check import replay_check
from flowmesh.cli._run import run as _run
from flowmesh.cli._security import security, tls_options, tls_urls
from flowmesh.runtime import WorkerOptions

T = TypeVar("T")

amqp_option = click.option(
    "--amqp-url",
    envvar="FLOWMESH_AMQP_URL",
    default=DEFAULT_AMQP_URL,
    show_default=mask_url(DEFAULT_AMQP_URL),
    help="RabbitMQ URL, or a cluster's node URLs separated by commas (later ones may be just "
    "host:port); env FLOWMESH_AMQP_URL. Quorum queues get FLOWMESH_QUORUM_SIZE replicas "
    "(default: min(3, number of nodes) for a list).",
)
redis_option = click.option(
    "--redis-url",
    envvar="FLOWMESH_REDIS_URL",
    default=DEFAULT_REDIS_URL,
    show_default=True,
    help="Redis URL (env FLOWMESH_REDIS_URL); only apps hosting workflows use it.",
)
app_option = click.option("--app-id", required=True, help="App ID hosting the workflow.")
prefix_option = click.option(
    "--key-prefix",
    envvar="FLOWMESH_REDIS_PREFIX",
    default="fm",
    show_default=True,
    help="Prefix of every Redis key (env FLOWMESH_REDIS_PREFIX).",
)


def _json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None


@click.group()
@click.option(
    "--log-level", default=os.environ.get("FLOWMESH_LOG_LEVEL", "info"), show_default=True
)
@click.option(
    "--log-format", type=click.Choice(["console", "json"]), default="console", show_default=True
)
@click.version_option(package_name="flowmesh")
def main(log_level: str, log_format: str) -> None:
    """flowmesh: durable workflows that span many applications."""
    configure_logging(log_level, log_format)


@main.command()
@click.option("--app-id", required=True, help="The app ID this replica serves.")
@click.option(
    "--module",
    default=None,
    help="Module defining the App (default: workers.<app_id with - as _>).",
)
@click.option(
    "--concurrency",
    default=WorkerOptions().concurrency,
    show_default=True,
    help="Activities run at once (also the work-queue prefetch).",
)
@click.option(
    "--allow-unsafe-redis",
    is_flag=True,
    envvar="FLOWMESH_ALLOW_UNSAFE_REDIS",
    help="Start even if Redis has no persistence or may evict keys (development only).",
)
@click.option(
    "--allow-redis-everysec",
    is_flag=True,
    envvar="FLOWMESH_ALLOW_REDIS_EVERYSEC",
    help="Accept appendfsync everysec: a machine crash may lose the last second of "
    "acknowledged steps (default: only appendfsync always).",
)
@click.option(
    "--redis-check-interval",
    default=60.0,
    show_default=True,
    envvar="FLOWMESH_REDIS_CHECK_INTERVAL",
    help="Seconds between re-checks of the Redis configuration (0: only at start); a replica "
    "whose Redis became unsafe drains and exits.",
)
@click.option(
    "--redis-shards",
    type=click.IntRange(1, 1024),
    default=None,
    envvar="FLOWMESH_REDIS_SHARDS",
    help="Shards the app's Redis keys are spread over (default: what the store records, else "
    "1 on a standalone Redis, 16 on a cluster); a store written with another count is refused.",
)
@click.option(
    "--redis-replica-acks",
    type=click.IntRange(0, 16),
    default=None,
    envvar="FLOWMESH_REDIS_REPLICA_ACKS",
    help="Replicas that must have a commit (Redis WAIT) before the consumed messages are "
    "acked (default: 1 on a cluster, 0 on a standalone Redis); short of them after the "
    "timeout, the commit stands and a warning is logged.",
)
@click.option(
    "--redis-replica-ack-timeout",
    type=click.FloatRange(0.001, 60.0),
    default=1.0,
    show_default=True,
    envvar="FLOWMESH_REDIS_REPLICA_ACK_TIMEOUT",
    help="Seconds a commit waits for --redis-replica-acks replicas.",
)
@click.option(
    "--drain-timeout", default=30.0, show_default=True, help="Seconds to finish work on SIGTERM."
)
@click.option(
    "--ack-deadline",
    default=600.0,
    show_default=True,
    envvar="FLOWMESH_ACK_DEADLINE",
    help="Seconds an activity may hold its delivery before switching to a lease "
    "(keep below RabbitMQ's consumer_timeout).",
)
@click.option(
    "--activity-lease",
    default=300.0,
    show_default=True,
    envvar="FLOWMESH_ACTIVITY_LEASE",
    help="Lease of a long activity; the host re-dispatches it if renewals stop.",
)
@click.option(
    "--outbox-sweep-interval",
    default=5.0,
    show_default=True,
    envvar="FLOWMESH_OUTBOX_SWEEP_INTERVAL",
    help="Seconds between looks for committed messages left unpublished (a crash, a broker "
    "refusal); a failed message's retry waits double this, then double again.",
)
@click.option(
    "--hold-unknown-for",
    default=600.0,
    show_default=True,
    envvar="FLOWMESH_HOLD_UNKNOWN_FOR",
    help="Seconds an event or control for an instance that does not exist yet is held "
    "(it may have overtaken the start) before it is dead-lettered.",
)
@click.option(
    "--max-history-events",
    default=WorkerOptions().max_history_events,
    show_default=True,
    envvar="FLOWMESH_MAX_HISTORY_EVENTS",
    help="A run whose history reached this many events fails (use continue_as_new).",
)
@click.option(
    "--app-user-pattern",
    envvar="FLOWMESH_APP_USER_PATTERN",
    default=None,
    help="Broker user name of each app, e.g. 'fm-{app}': turns on sender checks (messages "
    "from a user that may not send them are dead-lettered). See docs/security-model.md.",
)
@tls_options
@amqp_option
@redis_option
@prefix_option
def worker(
    app_id: str,
    module: str | None,
    concurrency: int,
    allow_unsafe_redis: bool,
    allow_redis_everysec: bool,
    redis_check_interval: float,
    redis_shards: int | None,
    redis_replica_acks: int | None,
    redis_replica_ack_timeout: float,
    drain_timeout: float,
    ack_deadline: float,
    activity_lease: float,
    hold_unknown_for: float,
    outbox_sweep_interval: float,
    max_history_events: int,
    app_user_pattern: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
    amqp_url: str,
    redis_url: str,
    key_prefix: str,
) -> None:
    """Run one replica of APP_ID (start more to scale it)."""
    from flowmesh.cli._serve import serve

    try:
        app = load_app(app_id, module)
    except FlowmeshError as exc:
        raise click.ClickException(mask_url(str(exc))) from None
    amqp_url, tls_redis_url = tls_urls(
        amqp_url,
        redis_url if app.hosts_workflows else None,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_insecure=tls_insecure,
    )
    redis_url = tls_redis_url or redis_url
    options = WorkerOptions(
        concurrency=concurrency,
        drain_timeout=drain_timeout,
        ack_deadline=ack_deadline,
        activity_lease=activity_lease,
        hold_unknown_for=hold_unknown_for,
        outbox_sweep_interval=outbox_sweep_interval,
        max_history_events=max_history_events,
        crash_at=os.environ.get("FLOWMESH_CRASH_AT") or None,  # test-only fault injection
        app_user_pattern=app_user_pattern or None,
    )
    _run(
        serve(
            app,
            amqp_url=amqp_url,
            redis_url=redis_url,
            key_prefix=key_prefix,
            options=options,
            allow_unsafe_redis=allow_unsafe_redis,
            allow_redis_everysec=allow_redis_everysec,
            redis_check_interval=redis_check_interval,
            redis_shards=redis_shards,
            redis_replica_acks=(redis_replica_acks, redis_replica_ack_timeout),
        )
    )


async def _with_client(amqp_url: str, action: Callable[[Any], Awaitable[T]]) -> T:
    from flowmesh.client import Client

    # Same payload keys as the workers (FLOWMESH_PAYLOAD_KEYS), or inputs/outputs are refused.
    async with Client(amqp_url, codec=build_codec()) as client:
        return await action(client)


@main.command()
@click.argument("workflow")
@app_option
@click.option("--input", "input_json", default=None, help="Workflow input as JSON.")
@click.option("--instance-id", default=None, help="Instance ID (default: random).")
@click.option("--wait/--no-wait", default=False, help="Wait for the result.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait with --wait.")
@amqp_option
def start(
    workflow: str,
    app_id: str,
    input_json: str | None,
    instance_id: str | None,
    wait: bool,
    timeout: float,
    amqp_url: str,
) -> None:
    """Start WORKFLOW on an app."""
    value = _json(input_json, "--input")

    async def action(client: Any) -> None:
        handle = await client.start_workflow(
            workflow, value, app_id=app_id, instance_id=instance_id
        )
        click.echo(f"started {workflow} as {handle.instance_id} on {app_id}")
        if wait:
            result = await handle.result(timeout=timeout)
            click.echo(json.dumps(result, default=str, indent=2))

    _run(_with_client(amqp_url, action))


@main.command()
@click.argument("instance_id")
@app_option
@amqp_option
def status(instance_id: str, app_id: str, amqp_url: str) -> None:
    """Show an instance's status, output and what it waits for."""

    async def action(client: Any) -> None:
        click.echo(state_text(await client.get_workflow(instance_id, app_id=app_id).describe()))

    _run(_with_client(amqp_url, action))


@main.command()
@click.argument("instance_id")
@app_option
@amqp_option
# Accepted and ignored, so scripts written when history read Redis keep working.
@click.option("--redis-url", "_redis_url", default=None, hidden=True)
@click.option("--key-prefix", "_key_prefix", default=None, hidden=True)
def history(
    instance_id: str, app_id: str, amqp_url: str, _redis_url: str | None, _key_prefix: str | None
) -> None:
    """Print an instance's state and history as a table (asks the hosting app's replicas)."""

    async def action(client: Any) -> None:
        handle = client.get_workflow(instance_id, app_id=app_id)
        state = await handle.describe()
        events = await handle.history()
        click.echo(state_text(state))
        click.echo()
        click.echo(history_table(events))

    _run(_with_client(amqp_url, action))


@main.command()
@click.argument("instance_id")
@app_option
@click.option("--new-instance-id", default=None, help="Restart under this new instance ID.")
@click.option("--new", "new_random", is_flag=True, help="Restart under a new random ID.")
@amqp_option
def restart(
    instance_id: str, app_id: str, new_instance_id: str | None, new_random: bool, amqp_url: str
) -> None:
    """Start an instance's workflow again with the same input.

    Under the same ID (the default) once it has finished, replacing its history; or under
    a new ID.
    """
    if new_instance_id is not None and new_random:
        raise click.UsageError("pass at most one of --new-instance-id and --new")
    target: bool | str = new_instance_id if new_instance_id is not None else new_random

    async def action(client: Any) -> None:
        handle = await client.restart_workflow(instance_id, app_id=app_id, new_instance_id=target)
        click.echo(f"restarted {instance_id} as {handle.instance_id} on {app_id}")

    _run(_with_client(amqp_url, action))


@main.command("raise-event")
@click.argument("instance_id")
@click.argument("name")
@app_option
@click.option("--data", default=None, help="Event data as JSON.")
@amqp_option
def raise_event(instance_id: str, name: str, app_id: str, data: str | None, amqp_url: str) -> None:
    """Send external event NAME to an instance."""
    value = _json(data, "--data")
    _run(
        _with_client(
            amqp_url, lambda c: c.get_workflow(instance_id, app_id=app_id).raise_event(name, value)
        )
    )
    click.echo(f"event {name!r} sent to {instance_id}")


def _control(verb: str, doc: str, *, recursive_flag: bool, reason_flag: bool) -> None:
    @main.command(verb, help=doc)
    @click.argument("instance_id")
    @app_option
    @click.option("--reason", default="", help="Why (recorded in history).", hidden=not reason_flag)
    @click.option(
        "--recursive/--no-recursive",
        default=True,
        hidden=not recursive_flag,
        help="Also act on child workflows on any app.",
    )
    @click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait until the host committed the command (and show the resulting status).",
    )
    @amqp_option
    def command(
        instance_id: str, app_id: str, reason: str, recursive: bool, wait: bool, amqp_url: str
    ) -> None:
        async def action(client: Any) -> Any:
            handle = client.get_workflow(instance_id, app_id=app_id)
            if verb == "terminate":
                return await handle.terminate(reason, recursive=recursive, wait=wait)
            if verb == "purge":
                return await handle.purge(recursive=recursive, wait=wait)
            return await getattr(handle, verb)(reason, wait=wait)

        outcome = _run(_with_client(amqp_url, action))
        if not wait:
            click.echo(f"{verb} sent to {instance_id}")
        elif verb == "purge":
            plural = "" if outcome == 1 else "s"
            click.echo(f"{instance_id} purged: {outcome} instance{plural} deleted")
            for note in outcome.not_purged:
                click.echo(f"  not purged: {note}", err=True)
        else:
            click.echo(f"{verb}: {instance_id} is {outcome.status.value}")


_control(
    "suspend",
    "Pause an instance (results are kept, applied on resume).",
    recursive_flag=False,
    reason_flag=True,
)
_control("resume", "Resume a suspended instance.", recursive_flag=False, reason_flag=True)
_control("terminate", "Stop an instance (and its children).", recursive_flag=True, reason_flag=True)
_control(
    "purge",
    "Delete a finished instance's history (and its children's).",
    recursive_flag=True,
    reason_flag=False,
)


@main.command()
@click.argument("app_ids", nargs=-1)
@amqp_option
def apps(app_ids: tuple[str, ...], amqp_url: str) -> None:
    """List app IDs with queue depth and consumers (replicas).

    Without arguments, lists the apps defined in ./workers.
    """
    ids = list(app_ids) or discover_app_ids(Path.cwd() / "workers")
    if not ids:
        raise click.ClickException("no app IDs given and none found in ./workers")

    async def action() -> None:
        from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

        transport = RabbitMQTransport(RabbitMQConfig(url=amqp_url, connection_name="flowmesh-cli"))
        await transport.connect()
        try:
            stats = [await transport.queue_stats(app_id) for app_id in ids]
        finally:
            await transport.close()
        click.echo(stats_table(stats))

    _run(action())


main.add_command(security)
main.add_command(dead_letters)
main.add_command(replay_check)
