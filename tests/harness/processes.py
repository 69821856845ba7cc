"""Worker subprocesses for integration, end-to-end and fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.effects import EFFECTS_ENV

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Services:
    """Where workers and clients connect (a private vhost and key prefix per session)."""

    amqp_url: str
    redis_url: str
    key_prefix: str
    vhost: str


@dataclass
class WorkerProcesses:
    """Starts and stops ``flowmesh worker`` subprocesses; logs go to files under tmp, and so
    does the side-effect log their activities write (``effects_path``)."""

    services: Services
    log_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def effects_path(self) -> Path:
        """The side-effect log of every worker started here (see ``tests.harness.effects``)."""
        return self.log_dir / "activity-runs.jsonl"

    @property
    def effects_env(self) -> dict[str, str]:
        """The environment that makes a worker's test activities record their runs."""
        return {EFFECTS_ENV: str(self.effects_path)}

    def start(
        self,
        app_id: str,
        *,
        module: str | None = None,
        concurrency: int = 16,
        env: dict[str, str] | None = None,
        services: Services | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one replica of ``app_id`` (``env`` adds variables, e.g. FLOWMESH_CRASH_AT)."""
        target = services or self.services
        log_path = self.log_dir / f"{app_id}-{len(self.processes)}.log"
        command = [
            # Debug: fault tests read "step committed" and "activity completed" lines.
            sys.executable, "-m", "flowmesh.cli", "--log-format", "json", "--log-level", "debug",
            "worker",
            "--app-id", app_id, "--concurrency", str(concurrency), "--allow-unsafe-redis",
            "--drain-timeout", "5",
        ]  # fmt: skip
        if module:
            command += ["--module", module]
        full_env = {
            **os.environ,
            "FLOWMESH_AMQP_URL": target.amqp_url,
            "FLOWMESH_REDIS_URL": target.redis_url,
            "FLOWMESH_REDIS_PREFIX": target.key_prefix,
            **self.effects_env,
            **(env or {}),
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append((app_id, process, log_path))
        return process

    def alive(self, app_id: str) -> list[subprocess.Popen[bytes]]:
        """Running replicas of ``app_id``."""
        return [p for a, p, _ in self.processes if a == app_id and p.poll() is None]

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """Block until the worker logged 'worker started' (its consumers are subscribed)."""
        path = next(path for _, p, path in self.processes if p is process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker started" in path.read_text(errors="replace"):
                return
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.logs()}")

    def stop_all(self) -> None:
        """SIGTERM every worker, then SIGKILL what did not exit in time."""
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a SIGSTOPped worker cannot handle SIGTERM
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def completions(self, app_id: str) -> Counter[str]:
        """Per instance, how many "workflow completed" lines the replicas of ``app_id`` logged:
        a replica logs one after each commit that completed the instance."""
        return completion_counts(path for app, _, path in self.processes if app == app_id)

    def logs(self) -> str:
        """The tail of every worker's log, for failure reports."""
        parts = []
        for app_id, process, path in self.processes:
            text = path.read_text(errors="replace")[-3000:] if path.exists() else ""
            parts.append(f"--- {app_id} (pid {process.pid}, exit {process.poll()}) ---\n{text}")
        return "\n".join(parts)


def completion_counts(log_paths: Iterable[Path]) -> Counter[str]:
    """Per instance, the "workflow completed" lines in these JSON worker logs."""
    counts: Counter[str] = Counter()
    for path in log_paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or '"workflow completed"' not in line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if event.get("event") == "workflow completed":
                counts[str(event.get("instance_id"))] += 1
    return counts
