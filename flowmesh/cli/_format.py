"""Readable renderings of states, histories and queue stats for the terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields, is_dataclass
from datetime import datetime
from typing import Any

from flowmesh.model import HistoryEvent, WorkflowState
from flowmesh.transport import QueueStats


def _short(value: object, width: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def state_text(state: WorkflowState) -> str:
    """Key facts of a workflow state, one per line, plus what it waits for."""
    lines = [
        f"instance:      {state.instance_id}",
        f"app:           {state.app_id}",
        f"workflow:      {state.name}",
        f"status:        {state.status.value}",
        f"created:       {_when(state.created_at)}",
        f"updated:       {_when(state.updated_at)}",
        f"history:       {state.history_length} events (version {state.version})",
    ]
    if state.parent:
        lines.append(f"parent:        {state.parent.instance_id} on {state.parent.app_id}")
    if state.custom_status is not None:
        lines.append(f"custom status: {_short(state.custom_status)}")
    if state.output is not None:
        lines.append(f"output:        {_short(state.output, 200)}")
    if state.failure:
        lines.append(f"failure:       {state.failure.error_type}: {state.failure.message}")
    if state.stall_reason:
        lines.append(f"stalled:       {state.stall_reason}")
    if state.publish_problem:
        lines.append(f"publishing:    {state.publish_problem}")
    if state.waiting_on:
        lines.append("waiting on:")
        lines += [f"  - {task.describe()}" for task in state.waiting_on]
    if state.refusals:
        lines.append("refused:")
        lines += [f"  - {reason}" for reason in state.refusals]
    return "\n".join(lines)


def history_table(events: Sequence[HistoryEvent]) -> str:
    """One row per event: index, kind, seq and the interesting fields."""
    rows = []
    for index, event in enumerate(events):
        values = {f.name: getattr(event, f.name) for f in fields(event)}
        seq = values.pop("seq", "")
        details = ", ".join(
            f"{k}={_short(_plain(v), 40)}" for k, v in values.items() if v not in (None, "", ())
        )
        rows.append((index, type(event).__name__, seq, details))
    return table(["#", "event", "seq", "details"], rows)


def stats_table(stats: Sequence[QueueStats]) -> str:
    """App IDs with queue depths and consumer (replica) counts."""
    return table(
        ["app id", "work msgs", "work consumers", "reply msgs", "reply consumers", "dead"],
        [
            (
                s.app_id,
                s.work_messages,
                s.work_consumers,
                s.reply_messages,
                s.reply_consumers,
                s.dead_messages,
            )
            for s in stats
        ],
    )


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"
