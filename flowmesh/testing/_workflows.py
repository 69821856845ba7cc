"""Workflow code in the forms the testing helpers accept, and replaying histories with it."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from flowmesh._errors import NonDeterminismError
from flowmesh.engine import (
    Logger,
    StepOutcome,
    WorkflowFunction,
    WorkflowResolver,
    replay_step,
    task_name,
)
from flowmesh.model import HistoryEvent, WorkflowStatus

Workflows: TypeAlias = (
    WorkflowResolver
    # Any, not WorkflowFunction: mypy infers ``{"a": wf_a, "b": wf_b}`` with differently typed
    # inputs as dict[str, function], which no Callable type accepts.
    | Mapping[str, Any]
    | Sequence[Any]
    | WorkflowFunction
)
"""Workflow code for the helpers here: a resolver (``name -> function | None``), a mapping of
names to functions (e.g. ``app.workflows``), a sequence of functions (registered under their
names) or a single ``async def`` workflow function."""


def _is_workflow_function(candidate: object) -> bool:
    return hasattr(candidate, "__flowmesh_name__") or inspect.iscoroutinefunction(candidate)


def resolver(workflows: Workflows) -> WorkflowResolver:
    """Turn any accepted form of :data:`Workflows` into a resolver for the engine."""
    if isinstance(workflows, Mapping):
        table: Mapping[str, WorkflowFunction] = workflows
        return table.get
    if isinstance(workflows, Sequence):
        by_name: dict[str, WorkflowFunction] = {task_name(fn): fn for fn in workflows}
        return by_name.get
    if _is_workflow_function(workflows):
        function: WorkflowFunction = workflows  # type: ignore[assignment]
        name = task_name(function)
        return lambda wanted: function if wanted == name else None
    resolve: WorkflowResolver = workflows  # type: ignore[assignment]
    return resolve


def replay_history(
    workflows: Workflows,
    history: Iterable[HistoryEvent],
    new_events: Iterable[HistoryEvent] = (),
    *,
    logger: Logger | None = None,
) -> StepOutcome:
    """Replay ``history`` from scratch with ``workflows`` and apply ``new_events``.

    The same as :func:`flowmesh.engine.replay_step`, but accepting any :data:`Workflows` form.
    """
    return replay_step(resolver(workflows), history, new_events, logger=logger)


def verify_replay(
    workflows: Workflows,
    history: Iterable[HistoryEvent],
    *,
    logger: Logger | None = None,
) -> StepOutcome:
    """Check that the current code replays ``history`` (e.g. one exported from production).

    Raises :class:`~flowmesh.NonDeterminismError` when the replay stalls (the message names
    both sides) or when the code would now schedule work that ``history`` does not record at
    that point. Returns the replay's outcome (its status, output and ``waiting_on``).
    """
    outcome = replay_history(workflows, history, (), logger=logger)
    if outcome.status is WorkflowStatus.STALLED:
        raise NonDeterminismError(outcome.stall_reason)
    if outcome.append or outcome.commands:
        raise NonDeterminismError(
            "replaying the complete history produced new work it does not record: "
            f"{list(outcome.append)!r}"
        )
    return outcome
