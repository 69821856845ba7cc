"""Small statistics helpers shared by the flowmesh and floor measurements."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def batch_summary(starts: Mapping[str, float], ends: Mapping[str, float]) -> dict[str, float]:
    """Throughput (first start to last completion) and per-instance start-to-end latency."""
    latencies = [ends[key] - starts[key] for key in starts]
    wall = max(ends.values()) - min(starts.values())
    return {
        "n": len(starts),
        "wall_s": round(wall, 3),
        "throughput_per_s": round(len(starts) / wall, 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1),
    }


def window(times: Sequence[float], first: int, last: int) -> dict[str, float]:
    """Mean and median duration of steps ``first``..``last`` given each step's start time.

    Step ``k`` lasts from ``times[k]`` to ``times[k + 1]``; the mean is
    ``(times[last] - times[first]) / (last - first)``.
    """
    durations = [times[k + 1] - times[k] for k in range(first, last)]
    return {
        "mean_ms": round((times[last] - times[first]) / (last - first) * 1000, 3),
        "median_ms": round(statistics.median(durations) * 1000, 3),
    }


def steps_within(runs: Sequence[Sequence[float]], start: float, end: float) -> list[float]:
    """Durations of the steps (of any of ``runs``, each a list of step start times) that
    started at or after ``start`` and before ``end``."""
    return [
        times[k + 1] - times[k]
        for times in runs
        for k in range(len(times) - 1)
        if start <= times[k] < end
    ]


def drift(
    metronome: Sequence[Sequence[float]], early: tuple[float, float], late: tuple[float, float]
) -> dict[str, Any]:
    """How much slower a short-history step was during ``late`` than during ``early``.

    ``metronome`` holds the step start times of short workflows run back to back beside the
    long one. Their history never grows, so a change in their median step time is the
    machine's drift (other load, CPU frequency, the broker's housekeeping), not history.
    """
    before = steps_within(metronome, *early)
    after = steps_within(metronome, *late)
    if not before or not after:
        raise ValueError(
            f"the metronome has {len(before)} steps in the early window and {len(after)} "
            "in the late one; both need some"
        )
    early_ms = statistics.median(before) * 1000
    late_ms = statistics.median(after) * 1000
    return {
        "metronome_early_step_ms": round(early_ms, 3),
        "metronome_late_step_ms": round(late_ms, 3),
        "metronome_steps": [len(before), len(after)],
        "drift": round(late_ms / early_ms, 3),
    }
