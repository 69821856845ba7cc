"""The summary table: each workload's numbers, its floor, the ratio and the verdict."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    """``ratio <op> bound`` must hold; ``better`` says which way is good, for the table."""

    workload: str
    metric: str
    label: str
    numerator: tuple[str, str]  # (system, key)
    denominator: tuple[str, str] | None  # None: the numerator itself is compared
    compare: Callable[[float, float], bool] | None
    """None: a figure shown for reading the others, with no target (verdict INFO)."""
    bound: float
    symbol: str
    unit: str


TARGETS = (
    Target("W1", "throughput", "workflows/s", ("flowmesh", "throughput_per_s"),
           ("floor", "throughput_per_s"), operator.ge, 0.7, ">=", "x"),
    Target("W1P", "CPU per workflow, fixed rate", "ms CPU", ("flowmesh", "cpu_ms_per_workflow"),
           ("floor", "cpu_ms_per_workflow"), None, 0.0, "", ""),
    Target("W2", "step time", "ms/step", ("flowmesh", "step_ms"),
           ("floor", "step_ms"), operator.le, 1.5, "<=", "x"),
    Target("W3", "fan-out/in wall", "s", ("flowmesh", "wall_s"),
           ("floor", "wall_s"), operator.le, 1.5, "<=", "x"),
    Target("W4", "step@late / step@100, drift-corrected", "ms/step",
           ("flowmesh", "late_step_ms_corrected"), ("flowmesh", "early_step_ms"),
           operator.le, 1.3, "<=", "x"),
    Target("MEM", "host RSS, idle workflows", "MiB", ("flowmesh", "rss_mib"),
           None, operator.lt, 200.0, "<", " MiB"),
)  # fmt: skip


def _values(results: Sequence[Result], workload: str, system: str, key: str) -> dict[int, float]:
    """``{round: value}`` of ``key`` in the measurements of ``workload`` on ``system``."""
    return {
        int(r.get("round", 1)): float(r[key])
        for r in results
        if r["workload"] == workload and r["system"] == system and key in r
    }


def verdicts(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Per target: median values, the median of the per-round ratios and MET / NOT MET (or
    NOT MEASURED). A ratio pairs the two systems' measurements of the same round."""
    rows = []
    for target in TARGETS:
        tops = _values(results, target.workload, *target.numerator)
        bottoms = (
            _values(results, target.workload, *target.denominator)
            if target.denominator
            else dict.fromkeys(tops, 1.0)
        )
        ratios = [tops[r] / bottoms[r] for r in sorted(tops) if bottoms.get(r)]
        ratio = statistics.median(ratios) if ratios else None
        if ratio is None:
            verdict = "NOT MEASURED"
        elif target.compare is None:
            verdict = "INFO"
        else:
            verdict = "MET" if target.compare(ratio, target.bound) else "NOT MET"
        rows.append(
            {
                "workload": target.workload,
                "metric": target.metric,
                "unit": target.label,
                "value": statistics.median(tops.values()) if tops else None,
                "reference": (
                    statistics.median(bottoms.values()) if target.denominator and bottoms else None
                ),
                "reference_is": target.denominator[0] if target.denominator else "",
                "ratio": ratio,
                "round_ratios": [round(r, 3) for r in ratios],
                "target": (
                    f"{target.symbol} {target.bound:g}{target.unit}" if target.compare else "-"
                ),
                "verdict": verdict,
            }
        )
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(results: Sequence[Result], total_s: float) -> str:
    """The table printed at the end of a run."""
    header = ("workload", "metric", "unit", "flowmesh", "reference", "ratio", "target", "verdict")
    rows = [header]
    for row in verdicts(results):
        reference = row["reference"]
        ref_text = "-" if reference is None else f"{_fmt(reference)} ({row['reference_is']})"
        ratio_text = "-" if row["ratio"] is None or row["reference"] is None else _fmt(row["ratio"])
        rows.append(
            (
                row["workload"], row["metric"], row["unit"], _fmt(row["value"]), ref_text,
                ratio_text, row["target"], row["verdict"],
            )
        )  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    extra = [
        f"{row['workload']} ratio per round: {row['round_ratios']}"
        for row in verdicts(results)
        if len(row["round_ratios"]) > 1
    ]
    extra += _details(results)
    return "\n".join(["", f"flowmesh bench summary ({total_s} s total)", *lines, "", *extra])


_PER = {"W1": "workflow", "W1P": "workflow", "W2": "step", "W3": "activity", "W4": "step"}


def _details(results: Sequence[Result]) -> list[str]:
    """Latencies and errors that are not targets but matter when reading the ratios."""
    lines = []
    for result in results:
        name = f"{result['workload']} {result['system']} (round {result.get('round', 1)})"
        if "error" in result:
            lines.append(f"{name}: ERROR {result['error']}")
        elif "latency_p50_ms" in result:
            lines.append(
                f"{name}: p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms "
                f"start-to-result; {result['throughput_per_s']} workflows/s; "
                f"wrong results {result.get('wrong_results', 0)}"
            )
        rate = result.get("rate_per_s")
        if rate and result.get("throughput_per_s", rate) < 0.95 * rate:
            lines.append(
                f"{name}: SATURATED, {result['throughput_per_s']} workflows/s for {rate} started "
                "per second: its CPU per workflow is not comparable (lower --w1p-rate)"
            )
        if "cpu_ms_per_workflow" in result:
            lines.append(
                f"{name}: {result['cpu_ms_per_workflow']} ms CPU per workflow (every process of "
                "the run, RabbitMQ and Redis included)"
            )
        if "drift" in result:
            lines.append(
                f"{name}: {result['early_step_ms']} ms per step at steps "
                f"{result['early_window']}, {result['late_step_ms']} ms at "
                f"{result['late_window']} (uncorrected {result['uncorrected_ratio']}x); "
                f"the metronome's steps {result['metronome_early_step_ms']} -> "
                f"{result['metronome_late_step_ms']} ms (drift {result['drift']}x), "
                f"so {result['late_step_ms_corrected']} ms corrected"
            )
        calls = result.get("redis_calls")
        steps = result.get("steps_with_metronome", result.get("n"))
        if calls and steps and result["workload"] in _PER:
            # flowmesh commits through FCALL (its function library) since the store stopped
            # loading scripts; the floor still uses EVALSHA. Counting only EVALSHA showed
            # flowmesh at 0.00.
            scripts = sum(calls.get(c, 0) for c in ("evalsha", "fcall", "multi"))
            per = _PER[result["workload"]]
            lines.append(
                f"{name}: {scripts / steps:.2f} Redis script calls "
                f"(EVALSHA/FCALL + MULTI) per {per}"
            )
        if result.get("wrong_results"):
            lines.append(f"{name}: {result['wrong_results']} WRONG RESULTS")
    return lines
