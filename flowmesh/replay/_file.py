"""History files: one workflow instance's history as human-diffable JSON lines.

A file is a header line followed by one line per history event::

    {"format": "flowmesh-history", "version": 1, "app_id": "app1", "workflow": "pipeline",
     "instance_id": "pipeline-1", "status": "COMPLETED", "events": 9}
    [1, "StepStarted", {"timestamp": 1767225600000000}]
    [1, "WorkflowStarted", {"name": "pipeline", "instance_id": "pipeline-1", ...}]

Each event line is the codec's own wire form (the ``[FORMAT_VERSION, kind, fields]`` envelope
of docs/protocol-codec.md: datetimes as microseconds since the epoch, enums by value) written
as JSON instead of msgpack, so reading a file goes through the same codec checks as reading
a history from Redis. The few msgpack values JSON cannot carry are escaped as one-key objects:
``{"$bin": "<base64>"}`` for bytes, ``{"$float": "nan" | "inf" | "-inf"}`` and
``{"$map": [[key, value], ...]}`` for a map with a non-string key (or one that would read as
an escape).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack

from flowmesh._errors import DecodeError
from flowmesh.codec import Codec
from flowmesh.model import HistoryEvent, StepStarted, WorkflowStarted, WorkflowStatus

HISTORY_FILE_FORMAT: Final = "flowmesh-history"
"""The ``format`` named in a history file's header line."""

HISTORY_FILE_VERSION: Final = 1
"""Version of the history file layout this module writes and the only one it reads."""

_ESCAPES: Final = frozenset({"$bin", "$float", "$map"})


@dataclass(frozen=True, slots=True)
class HistoryFile:
    """One instance's recorded history with the header that names it.

    ``status`` is the instance's status when it was recorded (RUNNING for a history stopped
    mid-way, e.g. waiting on a timer or an event).
    """

    app_id: str
    workflow: str
    instance_id: str
    status: WorkflowStatus
    events: tuple[HistoryEvent, ...]

    @classmethod
    def of(cls, events: Iterable[HistoryEvent], status: WorkflowStatus) -> HistoryFile:
        """A history file for ``events``, named after their ``WorkflowStarted`` event."""
        history = tuple(events)
        start = next((e for e in history if isinstance(e, WorkflowStarted)), None)
        if start is None:
            raise ValueError("a history without a WorkflowStarted event names no workflow")
        return cls(start.app_id, start.name, start.instance_id, status, history)

    @property
    def steps(self) -> int:
        """How many steps the history records (each starts with ``StepStarted``)."""
        return sum(isinstance(event, StepStarted) for event in self.events)

    def prefix(self, steps: int) -> HistoryFile:
        """The first ``steps`` steps: what the store held while the instance was running.

        Every commit ends at a step boundary, so each prefix is a history a running instance
        really had (e.g. waiting on a timer that has since fired). Its status is RUNNING
        unless the prefix is the whole history.
        """
        if steps < 1:
            raise ValueError("a prefix keeps at least one step")
        starts = [i for i, event in enumerate(self.events) if isinstance(event, StepStarted)]
        if steps >= len(starts):
            return self
        return HistoryFile(
            self.app_id,
            self.workflow,
            self.instance_id,
            WorkflowStatus.RUNNING,
            self.events[: starts[steps]],
        )


def dumps_history(history: HistoryFile, codec: Codec | None = None) -> str:
    """Render ``history`` as the text of a history file (ends with a newline).

    Without ``codec`` a plain :class:`~flowmesh.codec.Codec` writes the values as they are
    (a file is meant to be read and diffed, so it carries no encrypted payloads).
    """
    codec = codec or Codec()
    header = {
        "format": HISTORY_FILE_FORMAT,
        "version": HISTORY_FILE_VERSION,
        "app_id": history.app_id,
        "workflow": history.workflow,
        "instance_id": history.instance_id,
        "status": history.status.value,
        "events": len(history.events),
    }
    lines = [json.dumps(header)]
    for event in history.events:
        data = codec.encode_event(event, app_id=history.app_id, instance_id=history.instance_id)
        wire = msgpack.unpackb(data, raw=False, strict_map_key=False)
        lines.append(json.dumps(_to_json(wire), ensure_ascii=False, allow_nan=False))
    return "\n".join(lines) + "\n"


def loads_history(text: str, codec: Codec | None = None, *, source: str = "") -> HistoryFile:
    """Parse the text of a history file; ``DecodeError`` (naming ``source`` and the line)
    for anything that is not one."""
    codec = codec or Codec()
    where = source or "history file"
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DecodeError(f"{where}: empty, expected a flowmesh history file")
    header = _header(lines[0], where)
    app_id, instance_id = header.app_id, header.instance_id
    events: list[HistoryEvent] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            wire = _from_json(json.loads(line))
            data = msgpack.packb(wire, use_bin_type=True)
            events.append(codec.decode_event(data, app_id=app_id, instance_id=instance_id))
        except (ValueError, TypeError, DecodeError) as exc:
            raise DecodeError(f"{where}, line {number}: {exc}") from None
    if header.events != len(events):
        raise DecodeError(
            f"{where}: the header announces {header.events} events but the file has "
            f"{len(events)} (truncated?)"
        )
    return HistoryFile(app_id, header.workflow, instance_id, header.status, tuple(events))


def write_history(path: str | Path, history: HistoryFile, codec: Codec | None = None) -> Path:
    """Write ``history`` to ``path`` (creating its directory); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dumps_history(history, codec), encoding="utf-8")
    return target


def read_history(path: str | Path, codec: Codec | None = None) -> HistoryFile:
    """Read a history file written by :func:`write_history`."""
    return loads_history(Path(path).read_text(encoding="utf-8"), codec, source=str(path))


@dataclass(frozen=True, slots=True)
class _Header:
    app_id: str
    workflow: str
    instance_id: str
    status: WorkflowStatus
    events: int


def _header(line: str, where: str) -> _Header:
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise DecodeError(f"{where}, line 1: not a JSON header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != HISTORY_FILE_FORMAT:
        raise DecodeError(f"{where}: not a flowmesh history file (no {HISTORY_FILE_FORMAT} header)")
    if header.get("version") != HISTORY_FILE_VERSION:
        raise DecodeError(
            f"{where}: history file version {header.get('version')!r} is not supported "
            f"(this flowmesh reads version {HISTORY_FILE_VERSION})"
        )
    expected = {"app_id": str, "workflow": str, "instance_id": str, "status": str, "events": int}
    for key, kind in expected.items():
        if type(header.get(key)) is not kind:
            raise DecodeError(f"{where}: header field {key!r} must be a {kind.__name__}")
    try:
        status = WorkflowStatus(header["status"])
    except ValueError:
        raise DecodeError(f"{where}: unknown status {header['status']!r} in the header") from None
    return _Header(
        header["app_id"], header["workflow"], header["instance_id"], status, header["events"]
    )


def _to_json(value: object) -> object:
    """msgpack-native value -> JSON-native value (escaping what JSON cannot carry)."""
    if isinstance(value, bytes):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        plain = all(isinstance(key, str) for key in value) and not (
            len(value) == 1 and next(iter(value)) in _ESCAPES
        )
        if plain:
            return {key: _to_json(item) for key, item in value.items()}
        return {"$map": [[_to_json(key), _to_json(item)] for key, item in value.items()]}
    return value


def _from_json(value: object) -> object:
    """Inverse of :func:`_to_json`."""
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, item),) = value.items()
        if key == "$bin" and isinstance(item, str):
            return base64.b64decode(item, validate=True)
        if key == "$float" and item in ("nan", "inf", "-inf"):
            return float(item)
        if key == "$map" and isinstance(item, list):
            return {_from_json(pair[0]): _from_json(pair[1]) for pair in item}
    return {key: _from_json(item) for key, item in value.items()}
