"""Reading the topology (which app calls which) from app modules, without importing them."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from flowmesh.ops._plan import Topology

__all__ = ["topology_from_sources"]

_EDGES = {"call_activity": "calls", "call_child_workflow": "children", "send_event": "events"}
"""WorkflowContext methods that reach another app, and the kind of edge each makes."""


def topology_from_sources(paths: Iterable[Path]) -> Topology:
    """Read which apps call which from app modules, without importing them.

    Finds ``App("<id>")`` definitions, functions decorated with ``@<app>.workflow`` and, in
    them, ``call_activity(..., app_id="<literal>")``, ``call_child_workflow(...)`` and
    ``send_event(...)`` calls. A call without ``app_id`` targets the workflow's own app. A
    non-literal ``app_id`` cannot be resolved and is reported in :attr:`Topology.unresolved`.
    """
    apps: set[str] = set()
    hosts: set[str] = set()
    calls: dict[str, set[str]] = {}
    children: dict[str, set[str]] = {}
    events: dict[str, set[str]] = {}
    unresolved: list[str] = []
    for path in sorted(paths):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = _app_names(tree)
        apps |= set(names.values())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            host = _workflow_app(node, names)
            if host is None:
                continue
            hosts.add(host)
            for call in ast.walk(node):
                if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                    continue
                method = call.func.attr
                edges = _EDGES.get(method)
                if edges is None:
                    continue
                target = _literal_app_id(call, host)
                if target is None:
                    unresolved.append(f"{path.name}:{call.lineno} {method} in {node.name}")
                    continue
                {"calls": calls, "children": children, "events": events}[edges].setdefault(
                    host, set()
                ).add(target)
    for edge in (calls, events):
        for host, targets in edge.items():
            targets.discard(host)  # the own app's activities and workflows need nothing extra
    return Topology(
        frozenset(apps | hosts),
        frozenset(hosts),
        {h: frozenset(t) for h, t in calls.items() if t},
        {p: frozenset(c) for p, c in children.items() if c},
        tuple(unresolved),
        {h: frozenset(t) for h, t in events.items() if t},
    )


def _app_names(tree: ast.Module) -> dict[str, str]:
    """Variable name -> app ID for ``name = App("<id>")`` at any level."""
    found = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", getattr(node.value.func, "attr", "")) == "App"
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
            and isinstance(node.value.args[0].value, str)
        ):
            found[node.targets[0].id] = node.value.args[0].value
    return found


def _workflow_app(
    function: ast.FunctionDef | ast.AsyncFunctionDef, names: Mapping[str, str]
) -> str | None:
    """The app ID of ``@<app>.workflow`` / ``@<app>.workflow(...)`` on ``function``, if any."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "workflow"
            and isinstance(target.value, ast.Name)
            and target.value.id in names
        ):
            return names[target.value.id]
    return None


def _literal_app_id(call: ast.Call, own: str) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == "app_id":
            value = keyword.value
            if isinstance(value, ast.Constant) and value.value is None:
                return own
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
            return None
    return own
