"""Private, throwaway Redis and RabbitMQ servers for fault tests that stop or kill them.

The shared servers (RabbitMQ on 5672, Redis on 6379) serve every other test, and other people's
runs at the same time, so a test that restarts a server gets one of its own:

* on loopback ports below the kernel's ephemeral range (32768+), so no outgoing connection can
  take the port while the server is down between a kill and its restart. Bands: RabbitMQ AMQP
  11000-19999, its Erlang distribution 20000-21999 (its ``rabbitmqctl`` then listens on
  30000-32009), Redis 22000-29999. (35672-35682 is where ``rabbitmqctl`` calls against the
  shared node listen: a port in that band was taken at random moments.);
* with its data (AOF, mnesia, quorum queue logs) and logs in a tmp dir, so a restart on the same
  dir recovers what was durable;
* started as a subprocess in a session of its own, so closing kills the whole process tree
  (``beam.smp``, ``erl_child_setup``, ``inet_gethost``) and nothing is left behind;
* with every wait bounded.

Use them as context managers (``with PrivateRedis(tmp_path / "redis") as redis: ...``); a test
fixture that wraps one guarantees cleanup even when the test fails.

A private RabbitMQ node runs the installed ``rabbitmq-server`` script directly (on Debian
``/usr/lib/rabbitmq/bin``: the ``/usr/sbin`` wrapper would switch to the ``rabbitmq`` user, who
cannot write our tmp dir). Its ``HOME`` is a private dir holding a fresh Erlang cookie, and
``rabbitmqctl`` is always run with the same environment, so the CLI can reach the node and
cannot reach the shared one by accident. ``RABBITMQ_CONF_ENV_FILE`` points at an empty file so
the system's ``rabbitmq-env.conf`` (which names the shared node) is not read. The node registers
with the machine's ``epmd`` (port 4369), which is only a name service shared by every Erlang
node; if none runs, Erlang starts one as a daemon, which is harmless.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import pytest
import redis

_RABBITMQ_BIN_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/opt/rabbitmq/sbin")


def unavailable(message: str) -> NoReturn:
    """Skip the test on a laptop without the server binaries; fail under ``CI=true``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true fault tests must run, not skip")
    pytest.skip(message)
    raise AssertionError("unreachable")  # pytest.skip raises


def free_port(low: int, high: int, avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A loopback TCP port in ``[low, high)`` that nothing listens on or is bound to now."""
    candidates = [p for p in range(low, high) if p not in avoid]
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def _tail(path: Path, chars: int = 3000) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return path.read_text(errors="replace")[-chars:]


def _kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process's group (it was started with ``start_new_session``).

    Only while the leader is not reaped yet: until then (even as a zombie) it holds its PID,
    so the group ID cannot belong to anyone else.
    """
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the leader exited, without reaping it (see :func:`_kill_group`)."""
    if process.returncode is not None:
        return True
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _reap(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` for the leader to exit, SIGKILL what is left of its group (a
    beam whose wrapper script exited first, ``erl_child_setup``), then reap the leader."""
    if process.returncode is not None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # WNOWAIT: notice the exit without reaping, so the group ID stays ours.
        if _exited(process):
            break
        time.sleep(0.05)
    _kill_group(process)
    process.wait(timeout=10)


class PrivateRedis:
    """A ``redis-server`` on a free loopback port; by default durable (AOF, fsync always).

    :meth:`restart` kills the server and starts it again on the same port and dir, so the AOF
    is replayed; clients keep their URL.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        startup_timeout: float = 30.0,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is needed for a private Redis")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        # Its own band: nothing else here takes a port from it while the server is down.
        self.port = port or free_port(22000, 30000)
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()  # a failed or interrupted start must not leave the server running
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers PING (the AOF is loaded)."""
        if self.process is not None and not _exited(self.process):
            raise RuntimeError("the private Redis is already running")
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self._await_ping()

    def _await_ping(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        try:
            while True:
                if _exited(self.process):
                    _reap(self.process, timeout=1)
                    raise RuntimeError(
                        f"private Redis exited with {self.process.returncode}:\n"
                        + _tail(self.log_path)
                    )
                try:
                    if client.ping():
                        return
                except redis.RedisError:  # refused, or BusyLoadingError while replaying
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"private Redis not answering after {self.startup_timeout}s:\n"
                        + _tail(self.log_path)
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final fsync: what a crash looks like)."""
        if self.process is not None:
            _kill_group(self.process)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM the server and wait for it (a clean shutdown)."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGTERM)
            _reap(self.process, timeout=15)

    def restart(self, *, hard: bool = True, downtime: float = 0.0) -> None:
        """Kill (``hard``) or stop the server, stay down ``downtime`` seconds, start again."""
        if hard:
            self.kill()
        else:
            self.terminate()
        time.sleep(downtime)
        self.start()

    def close(self) -> None:
        """Stop the server for good (idempotent); its files stay in the tmp dir."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGTERM)
            _reap(self.process, timeout=10)

    def log_tail(self) -> str:
        """The end of the server's log, for failure reports."""
        return _tail(self.log_path)


class PrivateRabbitMQ:
    """A second RabbitMQ node (``fmfault-<random>@localhost``) on free loopback ports.

    Durable quorum queues and persistent messages live in ``<directory>/mnesia``; a
    :meth:`hard_restart` SIGKILLs the node and starts it again on the same dir, so what the
    broker confirmed survives. No plugins are enabled (no management port to clash over).
    """

    def __init__(self, directory: Path, *, startup_timeout: float = 120.0) -> None:
        bin_dir = next(
            (d for d in _RABBITMQ_BIN_DIRS if Path(d, "rabbitmq-server").exists()),
            None,
        )
        if bin_dir is None:
            found = shutil.which("rabbitmq-server")
            bin_dir = str(Path(found).parent) if found else None
        if bin_dir is None or not Path(bin_dir, "rabbitmqctl").exists():
            unavailable("rabbitmq-server and rabbitmqctl are needed for a private RabbitMQ node")
        assert bin_dir is not None
        self.server = str(Path(bin_dir, "rabbitmq-server"))
        self.rabbitmqctl = str(Path(bin_dir, "rabbitmqctl"))
        self.directory = directory
        self.startup_timeout = startup_timeout
        self.node = f"fmfault-{uuid.uuid4().hex[:8]}@localhost"
        # The AMQP port stays clear of 35672-35682, the range the shared node's CLI calls use.
        self.port = free_port(11000, 20000)
        # The CLI listens on dist_port + 10000..10010: keep that below the ephemeral range too.
        self.dist_port = free_port(20000, 22000, {self.port})
        self.home = directory / "home"
        self.log_dir = directory / "log"
        self.stdout_path = directory / "rabbitmq-server.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        for path in (self.home, self.log_dir, directory / "mnesia"):
            path.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
        cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = true\n"
            "log.console.level = warning\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/`` (guest may log in from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()  # a failed or interrupted start must not leave the server running
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_"))
        }
        d = self.directory
        return {
            **base,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),  # absent on purpose
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Erlang distribution on loopback only.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <node> <args>`` (bounded) and return its output."""
        try:
            done = subprocess.run(
                [self.rabbitmqctl, "-n", self.node, *args],
                env=self._env(),
                cwd=self.directory,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} timed out after {timeout}s") from exc
        if check and done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout + done.stderr

    def start(self) -> None:
        """Start the node (foreground, in a session of its own) and wait until it booted."""
        if self.process is not None and not _exited(self.process):
            raise RuntimeError("the private RabbitMQ node is already running")
        with self.stdout_path.open("ab") as out:
            self.process = subprocess.Popen(
                [self.server],
                cwd=self.directory,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self._await_startup()

    def _await_startup(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            if _exited(self.process):
                _reap(self.process, timeout=1)
                raise RuntimeError(
                    f"private RabbitMQ exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"private RabbitMQ not up after {self.startup_timeout}s: {last[-1000:]}\n"
                    + self.log_tail()
                )
            # Fails at once while the node is not registered with epmd yet; once it is,
            # waits until the broker has booted.
            try:
                last = self.ctl(
                    "await_startup",
                    "--timeout",
                    str(max(1, int(remaining))),
                    timeout=remaining + 10,
                    check=True,
                )
            except RuntimeError as exc:
                last = str(exc)
                time.sleep(0.5)
                continue
            if self._amqp_port_open():
                return
            time.sleep(0.2)

    def _amqp_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the broker closes every connection; the node stays up."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """``rabbitmqctl start_app``, then wait until the AMQP port accepts connections."""
        self.ctl("start_app")
        deadline = time.monotonic() + self.startup_timeout
        while not self._amqp_port_open():
            if time.monotonic() > deadline:
                raise RuntimeError(f"AMQP port closed after start_app:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the node's whole process tree (no clean shutdown)."""
        if self.process is not None:
            _kill_group(self.process)
            self.process.wait(timeout=10)

    def hard_restart(self, *, downtime: float = 0.0) -> None:
        """SIGKILL the node, stay down ``downtime`` seconds, start it on the same data dir."""
        self.kill()
        time.sleep(downtime)
        self.start()

    def close(self) -> None:
        """Stop the node for good (idempotent): ``rabbitmqctl stop``, then kill leftovers."""
        process = self.process
        if process is None:
            return
        if not _exited(process):
            with contextlib.suppress(RuntimeError):
                self.ctl("stop", timeout=30, check=False)
        _reap(process, timeout=15)

    def log_tail(self) -> str:
        """The end of the node's log and console output, for failure reports."""
        return (
            _tail(self.log_dir / f"{self.node}.log", 3000)
            + "\n--- console ---\n"
            + _tail(self.stdout_path, 1500)
        )
