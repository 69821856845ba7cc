"""The side-effect log: one line per time a test activity actually ran, written by the activity.

Broker deliveries, worker logs and store histories say what the system *thinks* happened; this
file says what the activities *did*. Worker subprocesses get its path in ``EFFECTS_ENV``
(``WorkerProcesses`` sets it for every worker it starts); each run of a test activity calls
:func:`record_run` before doing anything else, which appends one JSON line with one
``O_APPEND`` write and no buffering. Appends from concurrent processes do not interleave, and a
line is on disk (in the page cache) as soon as the write returns, so a ``kill -9`` right after
it, or a Redis or RabbitMQ outage, cannot lose it. :func:`read_runs` reads it back for
:mod:`tests.harness.ledger`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flowmesh import ActivityContext

EFFECTS_ENV = "FLOWMESH_TEST_EFFECTS_LOG"
"""Environment variable naming the side-effect log (unset: activities record nothing)."""

TaskKey = tuple[str, str, int, int]
"""``(host app ID, instance ID, seq, attempt)``: one scheduled activity task."""


@dataclass(frozen=True, slots=True)
class ActivityRun:
    """One run of an activity, as the activity itself recorded it."""

    host_app_id: str
    instance_id: str
    seq: int
    attempt: int
    activity: str
    app_id: str
    pid: int
    run_id: str | None = None
    """The workflow run, when the activity context names one (it does not today)."""

    @property
    def task(self) -> TaskKey:
        """The task this run executed."""
        return (self.host_app_id, self.instance_id, self.seq, self.attempt)


def record_run(ctx: ActivityContext) -> None:
    """Append this run to the side-effect log named by ``EFFECTS_ENV`` (if it is set).

    Test activities call this first: a run counts from the moment the activity started its
    work, so a run killed half way is still counted (and its redelivery is a re-execution).
    """
    path = os.environ.get(EFFECTS_ENV)
    if not path:
        return
    line = {
        "host": ctx.host_app_id,
        "instance": ctx.instance_id,
        "seq": ctx.seq,
        "attempt": ctx.attempt,
        "activity": ctx.name,
        "app": ctx.app_id,
        "pid": os.getpid(),
        "run": getattr(ctx, "run_id", None),
    }
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write of < PIPE_BUF bytes: one line, never interleaved
    finally:
        os.close(fd)


def read_runs(path: Path) -> tuple[list[ActivityRun], int]:
    """Every run recorded at ``path`` (none if it does not exist), and how many lines were
    unreadable (a line torn by a kill in the middle of its write; not expected on Linux)."""
    if not path.exists():
        return [], 0
    runs: list[ActivityRun] = []
    torn = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            fields = json.loads(line)
            runs.append(
                ActivityRun(
                    host_app_id=str(fields["host"]),
                    instance_id=str(fields["instance"]),
                    seq=int(fields["seq"]),
                    attempt=int(fields["attempt"]),
                    activity=str(fields["activity"]),
                    app_id=str(fields["app"]),
                    pid=int(fields["pid"]),
                    run_id=None if fields.get("run") is None else str(fields["run"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            torn += 1
    return runs, torn
