"""Recorded histories and replaying them against the code about to be deployed.

A history file (:class:`HistoryFile`, :func:`write_history`, :func:`read_history`) holds one
instance's history as JSON lines in the codec's wire form. :func:`check_history` replays one
against workflow code and returns a :class:`ReplayReport`: OK, or the non-determinism with
both sides. ``flowmesh replay-check`` and the golden histories under ``tests/golden/`` are
built on these.
"""

from flowmesh.replay._check import ReplayReport, ReplayResult, check_histories, check_history
from flowmesh.replay._file import (
    HISTORY_FILE_FORMAT,
    HISTORY_FILE_VERSION,
    HistoryFile,
    dumps_history,
    loads_history,
    read_history,
    write_history,
)

__all__ = [
    "HISTORY_FILE_FORMAT",
    "HISTORY_FILE_VERSION",
    "HistoryFile",
    "ReplayReport",
    "ReplayResult",
    "check_histories",
    "check_history",
    "dumps_history",
    "loads_history",
    "read_history",
    "write_history",
]
