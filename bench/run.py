"""``python -m bench.run``: the flowmesh benchmark next to its floor, in one run.

Prints one JSON line per measurement, then a summary table with the ratios and their targets.
See ``bench/README.md`` for what each workload measures and how the floor is defined.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import redis.asyncio
import structlog

from bench import apps, loops, procs, report, services
from bench.floor import FLOOR_START_PREFETCH, FLOOR_TASK_PREFETCH, MESSAGE_BYTES, FloorDriver
from bench.real import RealDriver, check_outputs
from bench.stats import batch_summary, drift, window
from flowmesh import WorkerOptions, WorkflowStatus

WORKLOADS = ("W1", "W1P", "W2", "W3", "W4", "MEM")
ORDER = ("W2", "W3", "W1", "W1P", "W4", "MEM")
"""Run order: cheap sequential first; the memory check last (it restarts the host worker)."""
METRONOME_STEPS = 20
"""Steps of each short workflow W4 runs beside the long one (see :meth:`Bench.w4`)."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each workload is."""

    w1_workflows: int
    w1p_workflows: int
    w1p_rate: float
    """W1P starts this many workflows per second: well below what either system sustains on
    the 2-core reference machine, so that both run unsaturated."""
    w2_steps: int
    w3_fan_out: int
    w4_steps: int
    mem_workflows: int


FULL = Sizes(2000, 2000, 300.0, 500, 2000, 5000, 10_000)
QUICK = Sizes(200, 200, 200.0, 50, 200, 400, 1000)

Result = dict[str, Any]


class CpuMeter:
    """CPU seconds used by each process of the run (and by RabbitMQ and Redis) per workload."""

    def __init__(self, servers: dict[str, int | None]) -> None:
        # Only servers whose PID is known: other RabbitMQ nodes may run on the machine.
        self.pids = {name: pid for name, pid in servers.items() if pid}

    def snapshot(self) -> dict[str, float]:
        """Cumulative CPU seconds per process; ``bench`` is this process (the client)."""
        own = os.times()
        cpu = {name: procs.cpu_seconds(pid) for name, pid in self.pids.items()}
        cpu["bench"] = own.user + own.system
        return cpu

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds spent between two snapshots, per process."""
        return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}


class Bench:
    """One benchmark run: starts the processes, runs the selected workloads, reports."""

    def __init__(
        self,
        args: argparse.Namespace,
        svc: services.Services,
        log_dir: Path,
        servers: dict[str, int | None],
    ) -> None:
        self.args = args
        self.selected: list[str] = args.only.split(",")
        self.svc = svc
        self.sizes = QUICK if args.quick else FULL
        if args.w1p_rate is not None:
            self.sizes = replace(self.sizes, w1p_rate=args.w1p_rate)
        self.procs = procs.Processes(svc, log_dir)
        self.cpu = CpuMeter(servers)
        self.real = RealDriver(svc.amqp_url, svc.redis_url, svc.key_prefix)
        self.floor = FloorDriver(svc.amqp_url, svc.redis_url, svc.key_prefix)
        self.results: list[Result] = []
        self._stats = redis.asyncio.Redis.from_url(svc.redis_url)
        self._profiled = False
        self.deadline: float = time.monotonic() + float(args.budget)
        self.host: procs.Proc | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Everything configurable that the numbers depend on."""
        defaults = WorkerOptions()
        return {
            "mode": "quick" if self.args.quick else "full",
            "budget_s": self.args.budget,
            "rounds": {
                "W1": self.args.w1_rounds,
                "W1P": self.args.w1_rounds,
                "W2": self.args.rounds,
                "W3": self.args.rounds,
            },
            "sizes": asdict(self.sizes),
            "worker_concurrency": self.args.concurrency,
            "worker_work_prefetch": self.args.concurrency,
            "worker_reply_prefetch": defaults.reply_prefetch,
            "worker_execution_cache_size": defaults.execution_cache_size,
            "worker_log_level": self.args.log_level,
            "activities": "async def (no thread-pool hop)",
            "floor_a_work_prefetch": self.args.floor_start_prefetch,
            "floor_a_reply_prefetch": defaults.reply_prefetch,
            "floor_b_c_prefetch": self.args.floor_task_prefetch,
            "floor_message_bytes": MESSAGE_BYTES,
            "floor_fan_in": "per-instance mailbox: one EVALSHA per batch of replies",
            "client_starts": "all at once (asyncio.gather), memory check: 500 in flight",
            "vhost": self.svc.vhost,
            "redis_prefix": self.svc.key_prefix,
            "profiled": (
                f"{self.args.profile_app} in {self.args.profile_workload}"
                if self.args.profile
                else None
            ),
        }

    def start_processes(self) -> None:
        """bench-app1/2/3 workers and floor A/B/C, each a separate OS process."""
        level = self.args.log_level
        self.host = self.procs.start_worker(
            "bench-app1", concurrency=self.args.concurrency, log_level=level
        )
        self.procs.start_worker("bench-app2", concurrency=self.args.concurrency, log_level=level)
        self.procs.start_worker("bench-app3", concurrency=self.args.concurrency, log_level=level)
        starts, tasks = str(self.args.floor_start_prefetch), str(self.args.floor_task_prefetch)
        self.procs.start_floor("host", "a", "--work-prefetch", starts)
        self.procs.start_floor("responder", "b", "--work-prefetch", tasks)
        self.procs.start_floor("responder", "c", "--work-prefetch", tasks)
        for proc in self.procs.procs:
            proc.wait_ready()
        for proc in self.procs.procs:
            self.cpu.pids[_short(proc.name)] = proc.pid

    async def warm_up(self) -> None:
        """A few of each kind, so queue declarations and script loads are not measured."""
        await self.floor.run("chain3", 50, 0, timeout=60)
        await self.floor.run("seq", 1, 20, timeout=60)
        await self.real.run("chain3", list(range(50)), "warm", timeout=60)
        await self.real.run("sequential", [20], "warm", timeout=60)

    # -- workloads -------------------------------------------------------------------------------

    async def redis_calls(self) -> dict[str, int]:
        """Commands Redis has executed so far, by command (server-wide ``INFO commandstats``)."""
        stats = await self._stats.info("commandstats")
        return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}

    async def pair(
        self,
        workload: str,
        floor: Callable[[], Awaitable[Result]],
        real: Callable[[], Awaitable[Result]],
    ) -> None:
        """Measure the floor and flowmesh ``--rounds`` times, alternating which goes first
        (floor, flowmesh, flowmesh, floor, ...) so that drift in the machine's load hits
        both alike; the summary takes the median of the per-round ratios."""
        rounds = self.args.w1_rounds if workload in ("W1", "W1P") else self.args.rounds
        took = 0.0
        for round_ in range(1, rounds + 1):
            if round_ > 1 and self.left() - took < self.reserve(after=workload):
                print(
                    f"bench: {workload} round {round_} skipped to stay within --budget",
                    file=sys.stderr,
                )
                break
            started = time.monotonic()
            order = [("floor", floor), ("flowmesh", real)]
            for system, body in order if round_ % 2 else order[::-1]:
                await self.measure(workload, system, body, round_)
            took = time.monotonic() - started

    def left(self) -> float:
        """Seconds left of ``--budget``."""
        return self.deadline - time.monotonic()

    def _median(self, workload: str, key: str, default: float) -> float:
        return self._median_of(workload, "flowmesh", key, default)

    def _median_of(self, workload: str, system: str, key: str, default: float) -> float:
        values = [
            float(r[key])
            for r in self.results
            if r["workload"] == workload and r["system"] == system and key in r
        ]
        return float(statistics.median(values)) if values else default

    def step_estimate(self) -> float:
        """Seconds per sequential step, from W2 (a late W4 step may cost 30% more)."""
        return self._median("W2", "step_ms", 5.0) / 1000 * 1.3

    def mem_estimate(self) -> float:
        """Seconds MEM needs: a host restart plus its starts, at twice W1's workflow rate (an
        idle workflow is one step, a W1 workflow three)."""
        rate = self._median("W1", "throughput_per_s", 150.0)
        return 15.0 + self.sizes.mem_workflows / (2 * rate)

    def reserve(self, after: str) -> float:
        """Seconds the selected workloads after ``after`` are expected to need."""
        rest = ORDER[ORDER.index(after) + 1 :]
        needed = 0.0
        if "W1" in rest and "W1" in self.selected:
            needed += 30.0
        if "W1P" in rest and "W1P" in self.selected:
            needed += 2 * (self.w1p_workflows() / self.w1p_rate() + 5)
        if "W4" in rest and "W4" in self.selected:
            needed += 2 * 1000 * self.step_estimate() + 5  # W4 shrinks down to 1,000 steps
        if "MEM" in rest and "MEM" in self.selected:
            needed += self.mem_estimate()
        return needed

    async def measure(
        self,
        workload: str,
        system: str,
        body: Callable[[], Awaitable[Result]],
        round_: int = 1,
    ) -> None:
        """Run one measurement; print and keep its JSON line (an error is a result too)."""
        before = self.cpu.snapshot()
        calls_before = await self.redis_calls()
        started = time.monotonic()
        try:
            result = await body()
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc(file=sys.stderr)
        cpu = CpuMeter.since(before, self.cpu.snapshot())
        total = sum(cpu.values())  # the other system's processes idle meanwhile
        if workload in ("W1", "W1P") and result.get("n"):  # each of n is one workflow
            result["cpu_ms_per_workflow"] = round(total / result["n"] * 1000, 3)
        line = {
            "workload": workload,
            "system": system,
            "round": round_,
            **result,
            "elapsed_s": round(time.monotonic() - started, 2),
            # Other work on the machine skews every number: keep the load next to them.
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "cpu_s": cpu,
            "cpu_total_s": round(total, 2),
            "redis_calls": {
                command: count - calls_before.get(command, 0)
                for command, count in (await self.redis_calls()).items()
                if count != calls_before.get(command, 0) and command != "info"
            },
        }
        self.results.append(line)
        print(json.dumps(line), flush=True)

    async def w1(self) -> None:
        """Chain of 3 (start, activity on app2, activity on app3), many at once."""
        await self._chains("W1", self.sizes.w1_workflows, rate=None)

    async def w1p(self) -> None:
        """W1's chains started at a fixed rate both systems sustain: what each workflow costs
        in CPU (every process, RabbitMQ and Redis included) when neither is saturated."""
        await self._chains("W1P", self.w1p_workflows(), rate=self.w1p_rate())

    def w1p_workflows(self) -> int:
        """W1P's size: fewer workflows at a lowered rate, so a round lasts as long as planned."""
        planned = self.sizes.w1p_workflows
        return min(planned, round(planned * self.w1p_rate() / self.sizes.w1p_rate))

    def w1p_rate(self) -> float:
        """W1P's start rate: ``--w1p-rate`` if given, else the default lowered to 70% of the
        slower system's W1 throughput in this run, so that neither is saturated on a slow
        machine (a saturated system's CPU per workflow is not comparable)."""
        if self.args.w1p_rate is not None:
            return float(self.args.w1p_rate)
        slower = min(
            self._median("W1", "throughput_per_s", math.inf),
            self._median_of("W1", "floor", "throughput_per_s", math.inf),
        )
        return min(self.sizes.w1p_rate, max(50.0, round(0.7 * slower, -1)))

    async def _chains(self, workload: str, n: int, *, rate: float | None) -> None:
        """``n`` W1 chains on both systems, all at once (``rate`` None) or paced."""
        paced = {} if rate is None else {"rate_per_s": rate}

        async def floor() -> Result:
            with self.profiling(workload, floor=True):
                run = await self.floor.run("chain3", n, 0, timeout=180, rate=rate)
            return {
                **batch_summary(run.starts, run.ends),
                **paced,
                "latency_source": "driver publish time -> A's timestamp of the final step",
                "wrong_results": 0,  # FloorDriver checks every instance and raises otherwise
            }

        async def real() -> Result:
            with self.profiling(workload):
                run = await self.real.run(
                    "chain3", list(range(n)), workload.lower(), timeout=180, rate=rate
                )
            return {
                **batch_summary(run.starts, run.ends),
                **paced,
                "latency_source": "time before start_workflow() -> stored state.updated_at",
                "wrong_results": check_outputs(run, apps.chain3_expected),
            }

        await self.pair(workload, floor, real)

    async def w2(self) -> None:
        """One workflow, N sequential activities."""
        steps = self.sizes.w2_steps

        async def floor() -> Result:
            run = await self.floor.run("seq", 1, steps, timeout=120)
            (instance_id,) = run.starts
            times = run.step_times[instance_id]
            return _sequential(steps, run.ends[instance_id] - run.starts[instance_id], times)

        async def real() -> Result:
            with self.profiling("W2"):
                run = await self.real.run("sequential", [steps], "w2", timeout=120)
            (instance_id,) = run.starts
            result = _sequential(
                steps,
                run.ends[instance_id] - run.starts[instance_id],
                await self.real.step_times(instance_id),
            )
            return {**result, "wrong_results": check_outputs(run, lambda _: steps)}

        await self.pair("W2", floor, real)

    async def w3(self) -> None:
        """One workflow fanning out N activities at once and gathering them."""
        count = self.sizes.w3_fan_out

        async def floor() -> Result:
            run = await self.floor.run("fan", 1, count, timeout=120)
            (instance_id,) = run.starts
            times = run.step_times[instance_id]
            return {
                "n": count,
                "wall_s": round(run.ends[instance_id] - run.starts[instance_id], 3),
                "host_steps": len(set(times)),  # entries of one batch share a timestamp
            }

        async def real() -> Result:
            with self.profiling("W3"):
                run = await self.real.run("fan_out", [count], "w3", timeout=120)
            (instance_id,) = run.starts
            return {
                "n": count,
                "wall_s": round(run.ends[instance_id] - run.starts[instance_id], 3),
                "host_steps": len(await self.real.step_times(instance_id)),
                "wrong_results": check_outputs(run, lambda _: apps.fan_out_expected(count)),
            }

        await self.pair("W3", floor, real)

    async def w4(self) -> None:
        """One long workflow: the cost of a step early vs late in its history.

        Short workflows run back to back beside it (the metronome). On a shared machine the
        speed of everything drifts during the run; the metronome's history never grows, so
        its change between the two windows is that drift, and the verdict divides it out.
        The uncorrected ratio is reported too.
        """
        planned = self.sizes.w4_steps
        # Keep the whole run inside --budget: fewer steps if the machine is slow today. The
        # metronome's steps share the host, so a long step takes about twice a W2 step.
        spare = self.left() - self.reserve(after="W4") - 5
        affordable = int(spare / (2 * self.step_estimate())) // 100 * 100
        steps = max(min(planned, 1000), min(planned, affordable))

        async def real() -> Result:
            running = asyncio.Event()
            running.set()
            metronome = asyncio.create_task(
                self.real.metronome(METRONOME_STEPS, "w4m", running), name="w4-metronome"
            )
            try:
                starts = await self.real.start_many("sequential", [steps], "w4")
                (instance_id,) = starts
                state = await self.real.finish(instance_id, timeout=max(60, self.left()))
            finally:
                running.clear()
                metronome_ids = await metronome
            ended = state.updated_at.timestamp() if state.updated_at else math.nan
            times = await self.real.step_times(instance_id)
            if len(times) != steps + 1:
                raise AssertionError(f"expected {steps + 1} steps in history, found {len(times)}")
            early = window(times, 50, 150)
            late = window(times, steps - 100, steps)
            beside = drift(
                [await self.real.step_times(i) for i in metronome_ids],
                (times[50], times[150]),
                (times[steps - 100], times[steps]),
            )
            return {
                "n": steps,
                "n_planned": planned,
                "wall_s": round(ended - starts[instance_id], 3),
                "early_window": [50, 150],
                "late_window": [steps - 100, steps],
                "early_step_ms": early["mean_ms"],
                "late_step_ms": late["mean_ms"],
                "early_step_median_ms": early["median_ms"],
                "late_step_median_ms": late["median_ms"],
                "uncorrected_ratio": round(late["mean_ms"] / early["mean_ms"], 3),
                **beside,
                "late_step_ms_corrected": round(late["mean_ms"] / beside["drift"], 3),
                "metronome_instances": len(metronome_ids),
                # Each metronome instance: its activities plus the step that starts it.
                "steps_with_metronome": steps + 1 + len(metronome_ids) * (METRONOME_STEPS + 1),
                "overall_step_ms": round((times[-1] - times[0]) / steps * 1000, 3),
                "wrong_results": int(
                    state.status is not WorkflowStatus.COMPLETED or state.output != steps
                ),
            }

        await self.measure("W4", "flowmesh", real)

    async def mem(self) -> None:
        """RSS of a fresh host worker holding many idle workflows."""
        count = self.sizes.mem_workflows

        # A fresh host process: earlier workloads' garbage and allocator high-water marks
        # would otherwise be counted as the idle workflows' memory.
        assert self.host is not None
        self.procs.stop(self.host)
        self.host = self.procs.start_worker(
            "bench-app1", concurrency=self.args.concurrency, log_level=self.args.log_level
        )
        self.host.wait_ready()
        self.cpu.pids["app1"] = self.host.pid
        await asyncio.sleep(1.0)

        async def real() -> Result:
            assert self.host is not None
            baseline = procs.memory_kib(self.host.pid)
            running_before = await self.real.count([WorkflowStatus.RUNNING])
            started = time.monotonic()
            await self.real.start_many("idle", [None] * count, "mem", limit=500)
            await self.real.wait_count(
                [WorkflowStatus.RUNNING], running_before + count, self.args.mem_timeout
            )
            start_s = time.monotonic() - started
            await asyncio.sleep(2.0)  # let the last steps' acks and publishes settle
            after = procs.memory_kib(self.host.pid)
            return {
                "n": count,
                "start_s": round(start_s, 2),
                "starts_per_s": round(count / start_s, 1),
                "rss_mib": round(after["VmRSS"] / 1024, 1),
                "hwm_mib": round(after["VmHWM"] / 1024, 1),
                "baseline_rss_mib": round(baseline["VmRSS"] / 1024, 1),
                "kib_per_workflow": round((after["VmRSS"] - baseline["VmRSS"]) / count, 2),
                "pid": self.host.pid,
            }

        await self.measure("MEM", "flowmesh", real)

    # -- profiling -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def profiling(self, workload: str, *, floor: bool = False) -> Iterator[None]:
        """py-spy the chosen process while the block runs, if asked to for ``workload``
        (blocks of the floor only profile ``floor-a``, flowmesh's blocks everything else)."""
        wanted = (
            self.args.profile
            and self.args.profile_workload == workload
            and floor == (self.args.profile_app == "floor-a")
        )
        if self.args.profile_app == "client":
            pid: int | None = os.getpid()  # the benchmark process is the client
        else:
            name = "floor-host-a" if self.args.profile_app == "floor-a" else self.args.profile_app
            target = next((p for p in reversed(self.procs.procs) if p.name == name), None)
            pid = target.pid if target is not None else None
        if not wanted or self._profiled or pid is None:
            yield
            return
        self._profiled = True  # the first round only
        py_spy = Path(sys.executable).with_name("py-spy")
        command = [
            str(py_spy), "record", "--pid", str(pid), "--format", "raw",
            "--output", self.args.profile, "--rate", "1000",
            # --native shows C frames (the GC, syscalls) but has to pause the process.
            "--native" if self.args.profile_native else "--nonblocking",
        ]  # fmt: skip
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy needs a moment to attach
        try:
            yield
        finally:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait(timeout=5)

    # -- the whole run ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, warm up, run the selected workloads in :data:`ORDER`."""
        await self.real.open()
        await self.floor.open()
        try:
            await self.warm_up()
            steps = {
                "W1": self.w1,
                "W1P": self.w1p,
                "W2": self.w2,
                "W3": self.w3,
                "W4": self.w4,
                "MEM": self.mem,
            }
            for name in ORDER:
                if name in self.selected:
                    await steps[name]()
        finally:
            await self.real.close()
            await self.floor.close()
            await self._stats.aclose()


def _sequential(steps: int, wall: float, times: Sequence[float]) -> Result:
    return {
        "n": steps,
        "wall_s": round(wall, 3),
        "step_ms": round(wall / steps * 1000, 3),
        "step_ms_from_history": round((times[-1] - times[0]) / steps * 1000, 3),
    }


def _short(name: str) -> str:
    """Process names in CPU reports: app1..app3, floor-a..floor-c."""
    if name.startswith("bench-app"):
        return "app" + name.removeprefix("bench-app")
    return "floor-" + name.rsplit("-", 1)[1]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma-separated subset of W1,W1P,W2,W3,W4,MEM",
    )
    parser.add_argument("--json-out", default=None, help="also write every JSON line here")
    parser.add_argument("--profile", default=None, help="py-spy a worker (raw stacks to PATH)")
    parser.add_argument(
        "--profile-app",
        default="bench-app1",
        choices=["bench-app1", "bench-app2", "bench-app3", "client", "floor-a"],
        help="which worker to profile (client: the benchmark process, which starts the "
        "workflows; floor-a: the floor's host, W1/W1P only)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="include C frames (GC, syscalls); py-spy then pauses the process per sample",
    )
    parser.add_argument(
        "--profile-workload",
        default="W1",
        choices=["W1", "W1P", "W2", "W3"],
        help="when to profile",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=WorkerOptions().concurrency,
        help="worker --concurrency (default: flowmesh's default, %(default)s)",
    )
    parser.add_argument(
        "--floor-start-prefetch",
        type=int,
        default=FLOOR_START_PREFETCH,
        help="prefetch of floor A's start queue (default %(default)s, see bench/floor.py)",
    )
    parser.add_argument(
        "--floor-task-prefetch",
        type=int,
        default=FLOOR_TASK_PREFETCH,
        help="prefetch of floor B's and C's task queues (default %(default)s)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="floor/flowmesh pairs of W2, W3 (ratio: median)"
    )
    parser.add_argument(
        "--w1-rounds", type=int, default=3, help="floor/flowmesh pairs of W1 (and of W1P)"
    )
    parser.add_argument(
        "--w1p-rate",
        type=float,
        default=None,
        help="workflows started per second in W1P (default 300, 200 with --quick, lowered "
        "to 70%% of the slower system's W1 throughput when that is less)",
    )
    parser.add_argument("--log-level", default="info", help="worker --log-level")
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run workers, floor and client on the default asyncio loop (FLOWMESH_NO_UVLOOP=1)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=270.0,
        help="seconds for the measurements (W1 skips its 2nd round, W4 shrinks to fit)",
    )
    parser.add_argument(
        "--mem-timeout", type=float, default=120.0, help="seconds to start the MEM workflows"
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def _quiet_logs() -> None:
    """Stdout carries only JSON lines and the table: the client's logs go to stderr, warnings up."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("aio_pika").setLevel(logging.ERROR)  # consumer cancelled at inbox close
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a workload failed (not for a missed target)."""
    args = _parse(argv)
    _quiet_logs()
    if args.no_uvloop:
        os.environ["FLOWMESH_NO_UVLOOP"] = "1"  # inherited by every subprocess
    started = time.monotonic()
    # SIGTERM (e.g. from make being stopped) unwinds like Ctrl-C, so clean-up still runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    meta: Result = {
        "workload": "meta",
        "versions": services.versions(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    svc = services.create()
    log_dir = Path(tempfile.mkdtemp(prefix="flowmesh-bench-"))
    found = meta["versions"]
    servers = {"rabbitmq": found["rabbitmq_pid"], "redis": found["redis_pid"]}
    bench = Bench(args, svc, log_dir, servers)
    meta["settings"] = bench.settings()
    meta["worker_logs"] = str(log_dir)
    print(json.dumps(meta), flush=True)
    try:
        bench.start_processes()
        loops.run(bench.run())
    except BaseException:
        for proc in bench.procs.procs:
            print(f"--- {proc.name} (pid {proc.pid}) ---\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        bench.procs.stop_all()
        cleanup = services.destroy(svc)
        print(json.dumps({"workload": "cleanup", **cleanup}), flush=True)
    total = round(time.monotonic() - started, 1)
    summary = {"workload": "summary", "total_s": total, "targets": report.verdicts(bench.results)}
    print(json.dumps(summary), flush=True)
    lines = [meta, *bench.results, summary]
    table = report.render(bench.results, total)
    print(table)
    if args.json_out:
        with Path(args.json_out).open("w") as out:
            for line in lines:
                out.write(json.dumps(line) + "\n")
    if args.profile:
        with contextlib.suppress(OSError):
            from bench.profile import summarize

            print(summarize(Path(args.profile)))
    return 1 if any("error" in r for r in bench.results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
