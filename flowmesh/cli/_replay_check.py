"""``flowmesh replay-check``: replay recorded or live histories against the code to deploy.

The pre-deploy gate: load the workflow code (``--module``, as ``flowmesh worker`` does), then
replay history files (``--history``) or the histories in an app's Redis store (``--app-id``,
read only, through the store's ``load``/``list_instances``). One line per history: OK, or the
non-determinism with both sides. Exit code 0 only when every history replays cleanly, 1 on any
non-determinism, 2 when something could not be checked (usage, connection, unreadable file,
an app the modules do not define).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from flowmesh._app import App
from flowmesh._errors import FlowmeshError
from flowmesh.cli._config import DEFAULT_REDIS_URL, build_codec, mask_url
from flowmesh.cli._format import table
from flowmesh.cli._loader import module_for
from flowmesh.cli._security import tls_options, tls_urls
from flowmesh.model import WorkflowStatus
from flowmesh.replay import HistoryFile, ReplayReport, ReplayResult, check_histories, read_history

_STATUSES = [status.value for status in WorkflowStatus]
_USAGE = 2


@click.command("replay-check")
@click.option(
    "--module",
    "modules",
    multiple=True,
    help="Module defining the App(s) whose code to check (repeatable; default with "
    "--app-id: workers.<app_id with - as _>).",
)
@click.option(
    "--history",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="History file to replay, or a directory of them (*.jsonl, searched recursively); "
    "more files may follow as arguments: --history a.jsonl b.jsonl.",
)
@click.option("--app-id", default=None, help="Replay the live histories of this app's store.")
@click.option("--instance", "instances", multiple=True, help="Only this instance (repeatable).")
@click.option(
    "--status",
    type=click.Choice(_STATUSES, case_sensitive=False),
    default=None,
    help="Only instances with this status, e.g. RUNNING (default: all).",
)
@click.option(
    "--limit", default=10_000, show_default=True, help="Check at most this many instances."
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.argument("more_files", nargs=-1, type=click.Path(path_type=Path))
@tls_options
@click.option(
    "--redis-url",
    envvar="FLOWMESH_REDIS_URL",
    default=DEFAULT_REDIS_URL,
    show_default=True,
    help="Redis URL of the app's store (env FLOWMESH_REDIS_URL).",
)
@click.option(
    "--key-prefix",
    envvar="FLOWMESH_REDIS_PREFIX",
    default="fm",
    show_default=True,
    help="Prefix of every Redis key (env FLOWMESH_REDIS_PREFIX).",
)
def replay_check(
    modules: tuple[str, ...],
    files: tuple[Path, ...],
    app_id: str | None,
    instances: tuple[str, ...],
    status: str | None,
    limit: int,
    output: str,
    more_files: tuple[Path, ...],
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
    redis_url: str,
    key_prefix: str,
) -> None:
    """Replay histories against the workflow code about to be deployed.

    Exit code 0 when every history replays cleanly, 1 on any non-determinism, 2 when a
    history could not be checked.
    """
    if more_files and not files:
        _fail(f"unexpected argument {str(more_files[0])!r}; history files follow --history")
    files = _expand((*files, *more_files))
    if bool(files) == bool(app_id):
        _fail("give either --history FILE... or --app-id (with --instance or --status)")
    if files and (instances or status):
        _fail("--instance and --status select live histories; they need --app-id, not --history")
    if instances and status:
        _fail("--instance and --status exclude each other")
    if not modules and not app_id:
        _fail("--module is required with --history")
    apps = _load_apps(modules or (module_for(app_id or ""),))
    if files:
        reports = _check_files(files, apps)
    else:
        assert app_id is not None
        _, tls_redis_url = tls_urls(
            "", redis_url, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
            tls_insecure=tls_insecure,
        )  # fmt: skip
        selected = WorkflowStatus(status.upper()) if status else None
        histories = _read_live(
            tls_redis_url or redis_url, key_prefix, app_id, instances, selected, limit
        )
        reports = check_histories(histories, apps)
    _show(reports, output)
    if any(r.result is ReplayResult.ERROR for r in reports):
        sys.exit(_USAGE)
    if any(r.result is ReplayResult.NON_DETERMINISM for r in reports):
        sys.exit(1)


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(_USAGE)


def _expand(paths: Sequence[Path]) -> tuple[Path, ...]:
    """Files as given; a directory stands for the ``*.jsonl`` files under it."""
    expanded: list[Path] = []
    for path in paths:
        expanded.extend(sorted(path.rglob("*.jsonl")) if path.is_dir() else [path])
    return tuple(expanded)


def _load_apps(modules: Sequence[str]) -> list[App]:
    """Every ``App`` defined in ``modules`` (the current directory is importable)."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    apps: list[App] = []
    for name in modules:
        try:
            loaded = importlib.import_module(name)
        except ImportError as exc:
            _fail(f"cannot import {name!r} ({exc}); run from the repo root or fix --module")
        found = [value for value in vars(loaded).values() if isinstance(value, App)]
        if not found:
            _fail(f"module {name!r} defines no App")
        apps.extend(found)
    return apps


def _check_files(files: Sequence[Path], apps: Sequence[App]) -> list[ReplayReport]:
    codec = build_codec()
    readable: list[tuple[str, HistoryFile]] = []
    unreadable: list[ReplayReport] = []
    for path in files:
        try:
            readable.append((str(path), read_history(path, codec)))
        except (OSError, FlowmeshError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            unreadable.append(
                ReplayReport(str(path), "", "", "", 0, ReplayResult.ERROR, None, detail)
            )
    return unreadable + check_histories(readable, apps)


def _read_live(
    redis_url: str,
    key_prefix: str,
    app_id: str,
    instances: Sequence[str],
    status: WorkflowStatus | None,
    limit: int,
) -> list[tuple[str, HistoryFile]]:
    from flowmesh.store.redis import RedisStore, RedisStoreConfig

    async def read() -> list[tuple[str, HistoryFile]]:
        config = RedisStoreConfig(url=redis_url, app_id=app_id, key_prefix=key_prefix)
        store = RedisStore(config, build_codec())
        await store.connect()
        try:
            ids = list(instances) or [
                state.instance_id for state in await store.list_instances(status, limit)
            ]
            histories: list[tuple[str, HistoryFile]] = []
            for instance_id in ids:
                record = await store.load(instance_id)
                if record is None:
                    if instances:
                        _fail(f"no workflow {instance_id!r} on app {app_id!r}")
                    continue  # purged between listing and loading
                history = HistoryFile.of(record.history, record.state.status)
                histories.append((f"{app_id}/{instance_id}", history))
            return histories
        finally:
            await store.close()

    try:
        return asyncio.run(read())
    except (FlowmeshError, OSError) as exc:
        _fail(f"{type(exc).__name__}: {mask_url(str(exc))}")


def _show(reports: Sequence[ReplayReport], output: str) -> None:
    if output == "json":
        click.echo(json.dumps([report.as_dict() for report in reports], indent=2))
        return
    rows = [
        (
            report.result.value.upper(),
            report.source,
            report.workflow or "-",
            report.status.value if report.status else "-",
            report.events,
            report.detail,
        )
        for report in reports
    ]
    headers = ["result", "history", "workflow", "replayed to", "events", "detail"]
    click.echo("\n".join(line.rstrip() for line in table(headers, rows).splitlines()))
    bad = sum(not report.ok for report in reports)
    summary = f"{len(reports) - bad} of {len(reports)} histories replay cleanly"
    click.echo(summary if not bad else f"{summary}; {bad} do not", err=bool(bad))
