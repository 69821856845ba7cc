"""``App``: one app ID and the workflows and activities it hosts."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, overload

from flowmesh._errors import RegistrationError
from flowmesh.model import check_app_id, check_name

F = TypeVar("F", bound=Callable[..., Any])

ActivityFunction = Callable[[Any, Any], Any] | Callable[[Any, Any], Awaitable[Any]]
"""``def activity(ctx, input)`` (run in a thread pool) or ``async def activity(ctx, input)``."""


class App:
    """An app ID and the workflows and activities its replicas serve.

    There is no global registry: each ``App`` holds its own names, and a worker serves exactly
    one app. Register with ``@app.workflow`` / ``@app.activity`` (optionally ``name=...``).
    """

    def __init__(self, app_id: str) -> None:
        self.app_id = check_app_id(app_id)
        self._workflows: dict[str, Callable[..., Any]] = {}
        self._activities: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return (
            f"App({self.app_id!r}, workflows={sorted(self._workflows)}, "
            f"activities={sorted(self._activities)})"
        )

    @overload
    def workflow(self, fn: F, /) -> F: ...
    @overload
    def workflow(self, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def workflow(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Register an ``async def workflow(ctx, input)`` under its name (or ``name``)."""

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.iscoroutinefunction(function):
                raise RegistrationError(
                    f"workflow {function.__qualname__} must be an 'async def' function"
                )
            return self._register(self._workflows, "workflow", function, name)

        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: F, /) -> F: ...
    @overload
    def activity(self, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def activity(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Register an activity ``(ctx, input)``: ``def`` runs in a thread pool, ``async def``
        on the event loop."""

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            return self._register(self._activities, "activity", function, name)

        return register(fn) if fn is not None else register

    def _register(
        self,
        table: dict[str, Callable[..., Any]],
        kind: str,
        function: Callable[..., Any],
        name: str | None,
    ) -> Callable[..., Any]:
        registered = check_name(name or function.__name__, kind)
        if registered in table and table[registered] is not function:
            raise RegistrationError(
                f"app {self.app_id!r} already has a {kind} named {registered!r}"
            )
        table[registered] = function
        # Lets ctx.call_activity(fn) resolve the registered name without a registry lookup.
        function.__flowmesh_name__ = registered  # type: ignore[attr-defined]
        return function

    @property
    def workflows(self) -> Mapping[str, Callable[..., Any]]:
        """Registered workflows by name (read-only view)."""
        return MappingProxyType(self._workflows)

    @property
    def activities(self) -> Mapping[str, Callable[..., Any]]:
        """Registered activities by name (read-only view)."""
        return MappingProxyType(self._activities)

    @property
    def hosts_workflows(self) -> bool:
        """True if the app hosts workflows (and therefore needs a store)."""
        return bool(self._workflows)
