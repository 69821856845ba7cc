"""The benchmark's verdicts and pacing (bench/ is a tool, but a wrong verdict misleads)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import loops as bench_loops
from bench import report as bench_report
from bench import stats as bench_stats


def _line(workload: str, system: str, round_: int, **values: Any) -> dict[str, Any]:
    return {"workload": workload, "system": system, "round": round_, **values}


def _row(rows: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    return next(r for r in rows if r["workload"] == workload)


def test_a_target_takes_the_median_of_per_round_ratios() -> None:
    results = [
        _line("W1", "floor", 1, throughput_per_s=800.0),
        _line("W1", "flowmesh", 1, throughput_per_s=600.0),
        _line("W1", "floor", 2, throughput_per_s=1000.0),
        _line("W1", "flowmesh", 2, throughput_per_s=500.0),
        _line("W1", "floor", 3, throughput_per_s=700.0),
        _line("W1", "flowmesh", 3, throughput_per_s=560.0),
    ]
    row = _row(bench_report.verdicts(results), "W1")
    assert row["round_ratios"] == [0.75, 0.5, 0.8]
    assert row["ratio"] == 0.75
    assert row["verdict"] == "MET"


def test_the_fixed_rate_figure_is_information_not_a_verdict() -> None:
    results = [
        _line("W1P", "floor", 1, cpu_ms_per_workflow=4.0),
        _line("W1P", "flowmesh", 1, cpu_ms_per_workflow=5.0),
    ]
    rows = bench_report.verdicts(results)
    assert (_row(rows, "W1P")["ratio"], _row(rows, "W1P")["verdict"]) == (1.25, "INFO")
    assert _row(rows, "W1")["verdict"] == "NOT MEASURED"
    assert _row(bench_report.verdicts([]), "W1P")["verdict"] == "NOT MEASURED"


def test_a_saturated_fixed_rate_run_is_flagged() -> None:
    results = [
        _line("W1P", "flowmesh", 1, rate_per_s=300.0, throughput_per_s=250.0),
        _line("W1P", "floor", 1, rate_per_s=300.0, throughput_per_s=299.0),
    ]
    text = bench_report.render(results, 1.0)
    assert "W1P flowmesh (round 1): SATURATED" in text
    assert "W1P floor (round 1): SATURATED" not in text


async def test_pace_spreads_starts_at_the_rate() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen: list[float] = []

    async def start(index: int) -> None:
        await bench_loops.pace(started, index, 200.0)
        seen.append(loop.time() - started)

    await asyncio.gather(*(start(i) for i in range(5)))
    assert sorted(seen) == seen
    assert seen[-1] >= 4 / 200.0
    await bench_loops.pace(loop.time() + 10, 0, None)  # no rate: returns at once


def test_w4_divides_out_the_drift_the_metronome_saw() -> None:
    # Steps at 100 cost 5 ms and at 5,000 cost 8 ms, but short-history steps beside them
    # also went from 4 to 6.4 ms: the machine slowed by 1.6x, history cost nothing.
    metronome = [[0.0, 0.004, 0.008, 0.012], [100.0, 100.0064, 100.0128, 100.0192]]
    seen = bench_stats.drift(metronome, early=(0.0, 1.0), late=(99.0, 101.0))
    assert seen["metronome_steps"] == [3, 3]
    assert seen["drift"] == 1.6
    results = [
        _line("W4", "flowmesh", 1, early_step_ms=5.0, late_step_ms_corrected=8.0 / seen["drift"])
    ]
    row = _row(bench_report.verdicts(results), "W4")
    assert row["ratio"] == 1.0
    assert row["verdict"] == "MET"


def test_w4_drift_needs_metronome_steps_in_both_windows() -> None:
    with pytest.raises(ValueError, match="early window and 0 in the late"):
        bench_stats.drift([[0.0, 0.004, 0.008]], early=(0.0, 1.0), late=(50.0, 60.0))


def test_steps_within_counts_steps_by_their_start_time() -> None:
    runs = [[1.0, 1.5, 3.0], [2.0, 2.25]]
    assert bench_stats.steps_within(runs, 1.0, 2.0) == [0.5, 1.5]
    assert bench_stats.steps_within(runs, 2.0, 3.5) == [0.25]


def test_script_calls_count_flowmesh_fcalls_as_well_as_the_floor_evalshas() -> None:
    """flowmesh commits through FCALL: a report counting only EVALSHA showed it at 0.00."""
    results = [
        _line("W2", "floor", 1, n=100, redis_calls={"evalsha": 100, "get": 7}),
        _line("W2", "flowmesh", 1, n=100, redis_calls={"fcall": 150, "multi": 50}),
    ]
    text = bench_report.render(results, total_s=1.0)
    assert "W2 floor (round 1): 1.00 Redis script calls (EVALSHA/FCALL + MULTI) per step" in text
    assert "W2 flowmesh (round 1): 2.00 Redis script calls (EVALSHA/FCALL + MULTI) per step" in text
