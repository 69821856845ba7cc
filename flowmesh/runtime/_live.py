"""The orchestrator's working types: a delivery in an instance's mailbox, a cached
execution, and the internal signals a step raises to be re-run or left to another replica."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from flowmesh.engine import WorkflowExecution
from flowmesh.model import HistoryEvent, Message, WorkflowState
from flowmesh.transport import Delivery


class StaleCache(Exception):  # noqa: N818 - internal signal, never escapes the orchestrator
    """The cached execution may be behind the store: re-run the step from a fresh load."""


class NotHere(Exception):  # noqa: N818 - internal signal, never escapes the orchestrator
    """This replica does not register the instance's workflow: leave its messages to one
    that does (a rolling deploy). STALLED is only for code that has the workflow and
    diverges from its history."""


@dataclass(slots=True)
class Inbound:
    """A delivery waiting in an instance's mailbox; ``done`` is set once it is settled."""

    delivery: Delivery
    message: Message
    done: asyncio.Future[None]


@dataclass(slots=True)
class Live:
    """A cached execution: valid while the store's version equals ``version``."""

    execution: WorkflowExecution
    state: WorkflowState
    history: list[HistoryEvent] = field(default_factory=list)
