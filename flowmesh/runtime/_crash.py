"""Test-only fault injection: SIGKILL this process at a named point of a step.

Disabled unless ``WorkerOptions.crash_at`` names a point (the CLI reads it from the
``FLOWMESH_CRASH_AT`` environment variable, e.g. ``after_commit`` or ``after_commit:3`` for
the third time the point is reached). When disabled each check is one attribute comparison.
"""

from __future__ import annotations

import os
import signal

CRASH_POINTS = (
    "after_receive",  # a delivery was decoded, nothing done yet
    "after_activity",  # the activity ran; its result is not published
    "before_commit",  # a step is computed; the store is untouched
    "after_commit",  # the step is durable; its outbox is not published
    "after_publish",  # results/outbox published; the delivery is not acked
    "before_outbox_clear",  # outbox published and confirmed; entries not removed
)


class CrashHook:
    """Call with a point name; kills the process when it is the configured point."""

    __slots__ = ("_after", "_point", "_seen")

    def __init__(self, spec: str | None) -> None:
        self._point: str | None = None
        self._after = 1
        self._seen = 0
        if spec:
            point, _, count = spec.partition(":")
            if point not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {point!r}; known: {', '.join(CRASH_POINTS)}")
            self._point = point
            self._after = int(count) if count else 1

    def __call__(self, point: str) -> None:
        if point != self._point:
            return
        self._seen += 1
        if self._seen >= self._after:
            os.kill(os.getpid(), signal.SIGKILL)
