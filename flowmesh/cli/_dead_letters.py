"""``flowmesh dead-letters``: list, show, redrive and drop an app's dead-lettered messages.

Each command reads ``fm.<app>.dead`` (see :mod:`flowmesh.transport.dead_letters`); messages
it does not act on go back to the queue, in place. ``redrive`` and ``drop`` take message IDs
or ``--all`` and, for more than one message on a terminal, ask first (``--yes`` skips that).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from flowmesh.cli._config import DEFAULT_AMQP_URL, build_codec, mask_url
from flowmesh.cli._format import table

if TYPE_CHECKING:  # aio-pika is imported only when a command runs
    from flowmesh.transport.dead_letters import DeadLetter, DeadLetters

_amqp = click.option(
    "--amqp-url",
    envvar="FLOWMESH_AMQP_URL",
    default=DEFAULT_AMQP_URL,
    show_default=mask_url(DEFAULT_AMQP_URL),
    help="RabbitMQ URL (env FLOWMESH_AMQP_URL).",
)
_app = click.option("--app-id", required=True, help="The app whose dead queue to read.")
_limit = click.option(
    "--limit", default=10_000, show_default=True, help="Read at most this many messages."
)


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages an app dead-lettered (fm.<app>.dead): list, show, redrive, drop."""


@dead_letters.command("list")
@_app
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@_limit
@_amqp
def list_(app_id: str, output: str, limit: int, amqp_url: str) -> None:
    """List the dead-lettered messages of an app, oldest first."""

    async def action(dead: DeadLetters) -> None:
        letters = await dead.read()
        if output == "json":
            click.echo(json.dumps([_summary(letter) for letter in letters], indent=2))
            return
        rows = [
            (
                letter.position,
                letter.message_id,
                letter.original_queue or "?",
                len(letter.body),
                letter.delivery_count,
                _cut(letter.reason, 70),
            )
            for letter in letters
        ]
        headers = ("#", "message id", "from queue", "bytes", "deliveries", "reason")
        click.echo(table(headers, rows))

    _with_queue(amqp_url, app_id, limit, action)


@dead_letters.command()
@click.argument("message_id")
@_app
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@_limit
@_amqp
def show(message_id: str, app_id: str, output: str, limit: int, amqp_url: str) -> None:
    """Show one dead-lettered message: its headers and decoded content."""

    async def action(dead: DeadLetters) -> None:
        letter = _one(await dead.read(), message_id)
        summary = {**_summary(letter), "content": _content(letter.body, app_id)}
        if output == "json":
            click.echo(json.dumps(summary, indent=2, default=str))
            return
        for key, value in summary.items():
            click.echo(f"{key + ':':<18} {value}")

    _with_queue(amqp_url, app_id, limit, action)


def _bulk(verb: str, doc: str) -> None:
    @dead_letters.command(verb, help=doc)
    @click.argument("message_ids", nargs=-1)
    @_app
    @click.option("--all", "everything", is_flag=True, help="Every message in the queue.")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @_limit
    @_amqp
    def command(
        message_ids: tuple[str, ...],
        app_id: str,
        everything: bool,
        yes: bool,
        limit: int,
        amqp_url: str,
    ) -> None:
        if everything == bool(message_ids):
            raise click.UsageError("give message IDs or --all (not both)")

        async def action(dead: DeadLetters) -> None:
            letters = await dead.read()
            chosen = letters if everything else [_one(letters, m) for m in message_ids]
            if len(chosen) > 1 and not yes and sys.stdin.isatty():
                click.confirm(f"{verb} {len(chosen)} messages of {app_id}?", abort=True)
            failed = 0
            for done, letter in enumerate(chosen, 1):
                try:
                    await (dead.redrive(letter) if verb == "redrive" else dead.drop(letter))
                except Exception as exc:
                    failed += 1
                    click.echo(f"[{done}/{len(chosen)}] {letter.message_id}: failed: {exc}")
                    continue
                outcome = f"redriven to {letter.original_queue}" if verb == "redrive" else "dropped"
                click.echo(f"[{done}/{len(chosen)}] {letter.message_id}: {outcome}")
            if failed:
                raise click.ClickException(f"{failed} of {len(chosen)} messages failed")

        _with_queue(amqp_url, app_id, limit, action)


_bulk(
    "redrive",
    "Publish dead-lettered messages back to the queue they came from, then delete them.",
)
_bulk("drop", "Delete dead-lettered messages for good.")


def _with_queue(
    amqp_url: str, app_id: str, limit: int, action: Callable[[DeadLetters], Awaitable[None]]
) -> None:
    from flowmesh.cli._run import run as _run
    from flowmesh.transport.dead_letters import DeadLetters

    async def run() -> None:
        async with DeadLetters(amqp_url, app_id, limit=limit) as dead:
            await action(dead)

    _run(run())


def _one(letters: list[DeadLetter], message_id: str) -> DeadLetter:
    for letter in letters:
        if letter.message_id == message_id:
            return letter
    raise click.ClickException(f"no dead-lettered message {message_id!r}")


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "message_id": letter.message_id,
        "original_queue": letter.original_queue,
        "original_user_id": letter.original_user_id,
        "reason": letter.reason,
        "delivery_count": letter.delivery_count,
        "bytes": len(letter.body),
    }


def _content(body: bytes, app_id: str) -> str:
    """The message as flowmesh decodes it, or why it does not decode (a hex preview)."""
    try:
        message = build_codec().decode_message(body, app_id=app_id)
    except Exception as exc:
        return f"undecodable ({type(exc).__name__}: {exc}); first bytes: {body[:32].hex()}"
    return _cut(repr(message), 2000)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
