"""The benchmark (``make bench``) imports against the current code.

CI does not run the benchmark (it takes minutes and its figures need a quiet machine), so a
refactoring that moves something it imports would otherwise go unnoticed until someone runs
``make bench``: this test imports every module of ``bench/``.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench


@pytest.mark.parametrize("name", sorted(m.name for m in pkgutil.iter_modules(bench.__path__)))
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
