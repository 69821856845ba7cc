"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest


class ListLogger:
    """A logger that records ``(level, message)`` pairs instead of printing them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _log(self, level: str, msg: str, *args: Any) -> None:
        self.lines.append((level, msg % args if args else msg))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log("debug", msg, *args)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log("info", msg, *args)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log("warning", msg, *args)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log("error", msg, *args)

    @property
    def messages(self) -> list[str]:
        """The logged messages, formatted, in order."""
        return [message for _, message in self.lines]


@pytest.fixture
def list_logger() -> ListLogger:
    """A fresh list-collecting logger for ``WorkflowExecution(..., logger=...)``."""
    return ListLogger()
