"""The replay engine is pure: no I/O libraries, no clock, no randomness.

Two checks, because they catch different things:

* a static one parses every ``flowmesh/engine/*.py`` and rejects imports of I/O, clock and
  randomness modules (and of flowmesh's own I/O layers), plus calls such as
  ``datetime.now()`` or ``uuid.uuid4()``;
* a dynamic one imports ``flowmesh.engine`` (without the package ``__init__``, which
  re-exports the asyncio-based client and runtime) in a fresh interpreter and checks which
  modules got loaded. ``time`` cannot be part of that check: the interpreter itself imports it at
  startup (even with ``-I -S``), so it is in ``sys.modules`` before any flowmesh code runs.
  The static check covers ``time`` instead.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_DIR = Path(__file__).resolve().parents[2] / "flowmesh" / "engine"
REPO_ROOT = ENGINE_DIR.parents[1]

FORBIDDEN_IMPORTS = frozenset(
    {
        "asyncio",
        "aio_pika",
        "aiormq",
        "redis",
        "msgpack",
        "time",
        "random",
        "secrets",
        "socket",
        "os",
        "subprocess",
    }
)
"""Top-level modules the engine's own modules must not import."""

FORBIDDEN_LOADED = ("asyncio", "aio_pika", "aiormq", "redis", "msgpack", "random")
"""Modules that must not be loaded at all by ``import flowmesh.engine`` (``time`` excluded)."""

ALLOWED_FLOWMESH = ("flowmesh.engine", "flowmesh.model", "flowmesh._errors", "flowmesh._failures")
"""The only flowmesh packages the engine may depend on."""

NONDETERMINISTIC_CALLS = frozenset({"now", "utcnow", "today", "uuid1", "uuid4", "monotonic"})


def engine_modules() -> list[Path]:
    modules = sorted(ENGINE_DIR.glob("*.py"))
    assert modules, f"no engine modules found in {ENGINE_DIR}"
    return modules


def imported_names(tree: ast.AST) -> list[tuple[str, int]]:
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.module, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # Relative imports stay inside flowmesh; resolve them against the engine package.
            base = "flowmesh" if node.level > 1 else "flowmesh.engine"
            names.append((f"{base}.{node.module}" if node.module else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            names.append(("__import__", node.lineno))
    return names


@pytest.mark.parametrize("path", engine_modules(), ids=lambda p: p.name)
def test_engine_module_imports_no_io_clock_or_randomness(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = []
    for name, line in imported_names(tree):
        top = name.split(".")[0]
        if top in FORBIDDEN_IMPORTS or name in {"__import__", "importlib"}:
            offending.append(f"{path.name}:{line} imports {name}")
        elif top == "flowmesh" and not name.startswith(ALLOWED_FLOWMESH):
            offending.append(f"{path.name}:{line} imports {name} (engine may use only model)")
    assert not offending, offending


@pytest.mark.parametrize("path", engine_modules(), ids=lambda p: p.name)
def test_engine_module_calls_no_clock_or_random_source(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [
        f"{path.name}:{node.lineno} calls .{node.func.attr}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in NONDETERMINISTIC_CALLS
    ]
    assert not offending, offending


def loaded_after(statement: str) -> list[str]:
    """Top-level modules in ``sys.modules`` after running ``statement`` in a fresh python."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    return [str(m) for m in json.loads(completed.stdout.strip().splitlines()[-1])]


# ``import flowmesh.engine`` runs ``flowmesh/__init__.py`` first, which re-exports the client and
# the runtime (asyncio-based, as they should be). To see what the engine itself pulls in, the
# subprocess registers a bare ``flowmesh`` package (same __path__, __init__ not executed).
_ENGINE_ONLY = (
    "import importlib.util, types; "
    "spec = importlib.util.find_spec('flowmesh'); "
    "pkg = types.ModuleType('flowmesh'); "
    "pkg.__path__ = list(spec.submodule_search_locations); "
    "sys.modules['flowmesh'] = pkg; "
    "import flowmesh.engine"
)


def test_importing_the_engine_loads_no_io_or_randomness_modules() -> None:
    loaded = loaded_after(_ENGINE_ONLY)
    assert "flowmesh.engine._executor" in loaded
    offending = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_LOADED)
    assert not offending, offending
    foreign = sorted(
        m for m in loaded if m.startswith("flowmesh.") and not m.startswith(ALLOWED_FLOWMESH)
    )
    assert not foreign, foreign


def test_importing_flowmesh_does_not_load_broker_or_store_clients() -> None:
    loaded = loaded_after("import flowmesh")
    offending = sorted(m for m in loaded if m.split(".")[0] in {"aio_pika", "aiormq", "redis"})
    assert not offending, offending


def test_history_helpers_import_no_io_modules() -> None:
    """``flowmesh.testing.history`` drives the engine without an event loop or any I/O.

    ``history.py`` re-exports from private ``flowmesh.testing`` modules; those are checked too.
    """
    testing_dir = REPO_ROOT / "flowmesh" / "testing"
    todo = ["history"]
    seen: set[str] = set()
    offending: list[str] = []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = testing_dir / f"{module}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in imported_names(tree):
            if name.startswith("flowmesh.testing._"):
                todo.append(name.split(".")[2])
            if name.split(".")[0] in FORBIDDEN_IMPORTS or name.startswith(
                ("flowmesh.runtime", "flowmesh.transport", "flowmesh.store")
            ):
                offending.append(f"{module}.py:{line} imports {name}")
    assert seen > {"history"}, seen  # the re-exports were followed
    assert not offending, offending
