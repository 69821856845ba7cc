"""Finding an app's ``App`` object by convention or by module path."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from flowmesh._app import App
from flowmesh._errors import ConfigurationError


def module_for(app_id: str) -> str:
    """Conventional module of an app ID: ``workers.<id with - as _>``."""
    return "workers." + app_id.replace("-", "_")


def load_app(app_id: str, module: str | None) -> App:
    """Import ``module`` (default: the convention) and return the ``App`` for ``app_id``.

    The current directory is put on ``sys.path`` so ``flowmesh worker`` works from a repo root.
    """
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    name = module or module_for(app_id)
    try:
        loaded = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"cannot import {name!r} for app {app_id!r} ({exc}); "
            "run from the repo root or pass --module"
        ) from exc
    apps = [value for value in vars(loaded).values() if isinstance(value, App)]
    for app in apps:
        if app.app_id == app_id:
            return app
    found = ", ".join(sorted(a.app_id for a in apps)) or "none"
    raise ConfigurationError(f"module {name!r} defines no App({app_id!r}) (found: {found})")


def discover_app_ids(directory: Path) -> list[str]:
    """App IDs of the example modules in ``directory`` (for listing queues)."""
    ids: list[str] = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_") or path.stem == "demo":
            continue
        text = path.read_text(encoding="utf-8")
        marker = 'App("'
        start = text.find(marker)
        if start >= 0:
            ids.append(text[start + len(marker) : text.index('"', start + len(marker))])
    return ids
