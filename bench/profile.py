"""Summarise a py-spy ``--format raw`` profile: hottest functions (self and inclusive) and
where the samples fall by package.

``python -m bench.profile PATH [--top N]``. ``python -m bench.run --only W1 --profile PATH``
records one of the host worker (bench-app1) during W1.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_ROOTS = ("<frozen runpy>", "click/", "flowmesh/cli/", "asyncio/runners.py", "sitecustomize.py")
"""Frames every sample shares (process start-up down to the event loop): left out of the
inclusive table."""

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_key(frame: str) -> tuple[str, str]:
    """``(function, short file)`` without the line number."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    file = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return match["function"], file


def _package(file: str) -> str:
    """The top-level package a frame's file belongs to (``flowmesh.engine``, ``aiormq`` ...)."""
    parts = file.removesuffix(".py").split("/")
    if parts[0] == "flowmesh" and len(parts) > 1:
        return "flowmesh." + parts[1]
    if parts[0] == "asyncio" or (len(parts) == 1 and parts[0] in {"selectors", "threading"}):
        return "asyncio/stdlib"
    return parts[0] or "?"


_COMPONENTS = (
    ("redis/", "redis-py (Redis client)"),
    ("aiormq/", "aio-pika/aiormq/pamqp (AMQP client)"),
    ("aio_pika/", "aio-pika/aiormq/pamqp (AMQP client)"),
    ("pamqp/", "aio-pika/aiormq/pamqp (AMQP client)"),
    ("structlog/", "structlog (logging)"),
    ("flowmesh/codec/", "flowmesh.codec (encode/decode)"),
    ("flowmesh/engine/", "flowmesh.engine (replay)"),
    ("flowmesh/store/", "flowmesh.store"),
    ("flowmesh/transport/", "flowmesh.transport"),
    ("flowmesh/runtime/", "flowmesh.runtime"),
)


def _component(frames: list[tuple[str, str]]) -> str:
    """What a sample is spent in: the innermost frame that belongs to a known component
    (so a socket write under redis-py counts as redis-py)."""
    for _, file in reversed(frames):
        for prefix, name in _COMPONENTS:
            if file.startswith(prefix):
                return name
    return "event loop / other"


def load(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Stacks (root first) with their sample counts."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_key(f) for f in stack.split(";") if f.strip()]
        # py-spy puts the thread ("process 1:\"...\"") first; keep only code frames.
        frames = [f for f in frames if f[1]]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def summarize(path: Path, top: int = 25) -> str:
    """A text report of the profile at ``path``."""
    stacks = load(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"profile {path}: no samples"
    own: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    packages: Counter[str] = Counter()
    components: Counter[str] = Counter()
    for frames, count in stacks:
        components[_component(frames)] += count
        own[frames[-1]] += count
        packages[_package(frames[-1][1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def table(title: str, counter: Counter[tuple[str, str]]) -> list[str]:
        lines = [title]
        for (function, file), count in counter.most_common(top):
            lines.append(f"  {100 * count / total:5.1f}%  {function}  ({file})")
        return lines

    for key in [k for k in inclusive if k[1].startswith(_ROOTS)]:
        del inclusive[key]
    mine = Counter({k: v for k, v in inclusive.items() if k[1].startswith("flowmesh/")})
    out = [
        f"profile {path}: {total} samples (busy time only, idle excluded). With uvloop, time in",
        "the C event loop itself (its syscalls and callback dispatch) shows as 'Runner.run'.",
    ]
    out += table("self time (leaf frame):", own)
    out += table("inclusive time (function anywhere on the stack):", inclusive)
    out += table("inclusive time, flowmesh functions only:", mine)
    out.append("by component (innermost known frame: I/O under a client counts as that client):")
    for component, count in components.most_common():
        out.append(f"  {100 * count / total:5.1f}%  {component}")
    out.append("self time by package:")
    for package, count in packages.most_common(15):
        out.append(f"  {100 * count / total:5.1f}%  {package}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.profile PATH``."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summarize(args.path, args.top))


if __name__ == "__main__":
    main()
