"""structlog access for the runtime. Configuration happens in the CLI only."""

from __future__ import annotations

from typing import Any

import structlog


def get_logger(**initial: Any) -> Any:
    """A structlog logger with ``initial`` bound (``app_id``, ...)."""
    return structlog.get_logger("flowmesh").bind(**initial)
