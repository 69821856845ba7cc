"""Subprocesses of a run (flowmesh workers, floor processes) and what they cost (CPU, RSS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.services import Services

REPO = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Proc:
    """One subprocess with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_marker: str

    @property
    def pid(self) -> int:
        """The OS process ID."""
        return self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the process logged its ready marker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_marker in self.log_path.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of the process's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class Processes:
    """Starts subprocesses against a run's services; :meth:`stop_all` ends them, bounded."""

    services: Services
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLOWMESH_AMQP_URL": self.services.amqp_url,
            "FLOWMESH_REDIS_URL": self.services.redis_url,
            "FLOWMESH_REDIS_PREFIX": self.services.key_prefix,
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, command: list[str], ready_marker: str) -> Proc:
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=self._env(), stdout=log, stderr=subprocess.STDOUT
            )
        proc = Proc(name, process, log_path, ready_marker)
        self.procs.append(proc)
        return proc

    def start_worker(self, app_id: str, *, concurrency: int, log_level: str) -> Proc:
        """``flowmesh worker --app-id APP --module bench.apps`` as a separate OS process."""
        command = [
            sys.executable, "-m", "flowmesh.cli", "--log-level", log_level,
            "--log-format", "json", "worker", "--app-id", app_id, "--module", "bench.apps",
            "--concurrency", str(concurrency), "--allow-unsafe-redis", "--drain-timeout", "2",
        ]  # fmt: skip
        return self._spawn(app_id, command, "worker started")

    def start_floor(self, role: str, *args: str) -> Proc:
        """A floor process (``python -m bench.floor ROLE ...``)."""
        command = [sys.executable, "-m", "bench.floor", role, *args]
        return self._spawn(f"floor-{role}-{args[0]}", command, "ready")

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait(timeout=5)

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every process at once, then SIGKILL whatever is left after ``timeout``."""
        for proc in self.procs:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait(timeout=5)
