"""Recording golden histories: dump every instance a :class:`TestEnvironment` ran to files.

Run your workflows in a ``TestEnvironment`` (time skipping makes long timers instant), then
save what the in-memory stores hold, finished runs and runs still waiting alike::

    async with TestEnvironment([orders_app, payments_app]) as env:
        await (await env.client.start_workflow("process_order", order, app_id="orders")).result()
        await record_histories(env, Path("tests/golden/histories"))

The files (see :mod:`flowmesh.replay`) are replayed against later code by
:func:`flowmesh.replay.check_history` and ``flowmesh replay-check --history FILE...``.
"""

from __future__ import annotations

import re
from pathlib import Path

from flowmesh.replay import HistoryFile, write_history
from flowmesh.testing._environment import TestEnvironment

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def history_path(directory: str | Path, app_id: str, instance_id: str) -> Path:
    """Where :func:`record_histories` puts an instance: ``<directory>/<app_id>/<id>.jsonl``
    (characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``)."""
    return Path(directory) / _UNSAFE.sub("_", app_id) / f"{_UNSAFE.sub('_', instance_id)}.jsonl"


async def record_histories(
    env: TestEnvironment, directory: str | Path, *, limit: int = 10_000
) -> list[Path]:
    """Write the history of every instance in ``env``'s stores under ``directory``.

    Reads each store through its public read API only (``list_instances`` and ``load``), so
    the environment may keep running. Returns the files written, sorted.
    """
    written: list[Path] = []
    for app_id, store in sorted(env.stores.items()):
        for state in await store.list_instances(limit=limit):
            record = await store.load(state.instance_id)
            if record is None or not record.history:
                continue  # purged meanwhile
            history = HistoryFile.of(record.history, record.state.status)
            written.append(
                write_history(history_path(directory, app_id, state.instance_id), history)
            )
    return sorted(written)
