"""Small statistics helpers shared by the flowmesh and floor measurements."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence


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
