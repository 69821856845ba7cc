"""Failure details: the serialisable description of an error that crossed a process boundary."""

from __future__ import annotations

import traceback
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailureDetails:
    """What went wrong in an activity, child workflow or workflow, as data.

    ``error_type`` is the qualified class name (``module.Class``) so retry policies can match it
    by name across languages; ``stack_trace`` is the remote stack as text.
    """

    error_type: str
    message: str
    stack_trace: str = ""
    non_retryable: bool = False
    app_id: str = ""

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, app_id: str = "", non_retryable: bool = False
    ) -> FailureDetails:
        """Describe ``exc`` with its qualified type name and formatted traceback."""
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        stack = "".join(traceback.format_exception(exc))
        return cls(
            error_type=name,
            message=str(exc),
            stack_trace=stack,
            non_retryable=non_retryable,
            app_id=app_id,
        )

    def matches(self, type_name: str) -> bool:
        """True when ``type_name`` names this error's type (qualified or bare class name)."""
        return type_name in (self.error_type, self.error_type.rsplit(".", 1)[-1])
