"""Import boundaries the layer contract (``lint-imports``) cannot express.

* A private module ``flowmesh.<pkg>._x`` is imported only from inside ``<pkg>``: other
  packages use ``<pkg>``'s public face (its ``__init__`` with an exact ``__all__``). The
  top-level private modules (``flowmesh._errors``, ``_failures``, ``_masking``, ``_tls``,
  ``_app``) are the shared bottom of the layers and may be imported from anywhere.
* No module of ``flowmesh`` is part of an import circle, ``TYPE_CHECKING`` imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "flowmesh"


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_no_module_imports_another_packages_private_module() -> None:
    offending = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        own_package = parts[1] if len(parts) > 2 else None
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            names = module.split(".")
            if names[0] != "flowmesh" or len(names) < 3 or names[1] == own_package:
                continue
            if names[2].startswith("_"):
                offending.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line} {module}")
    assert not offending, "import these through the package's public face:\n" + "\n".join(
        sorted(set(offending))
    )


def _circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if position < len(edges[node]):
                work.append((node, position + 1))
                child = edges[node][position]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return circles


def test_no_import_circles_between_flowmesh_modules() -> None:
    graph = grimp.build_graph("flowmesh", include_external_packages=False)
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _circles(graph) == [["p.a", "p.b"]]
