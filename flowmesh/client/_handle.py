"""``WorkflowHandle``: control and observe one workflow instance through the broker."""

from __future__ import annotations

import time
import uuid
from typing import Literal, overload

from flowmesh._errors import WorkflowFailedError, WorkflowNotFinishedError, WorkflowNotFoundError
from flowmesh.client._requests import Requests
from flowmesh.model import (
    Control,
    ControlAction,
    Describe,
    HistoryEvent,
    RaiseEvent,
    WorkflowState,
    WorkflowStatus,
    check_value,
)


class PurgeCount(int):
    """How many instances a purge deleted (an ``int``), and ``not_purged``: the children it
    did not delete and why (not finished, or their app did not answer in time; such a
    child's purge stays queued for its app and applies when a replica of it runs)."""

    not_purged: tuple[str, ...]

    def __new__(cls, count: int, not_purged: tuple[str, ...] = ()) -> PurgeCount:
        self = super().__new__(cls, count)
        self.not_purged = not_purged
        return self


class WorkflowHandle:
    """A reference to workflow ``instance_id`` hosted by ``app_id``."""

    def __init__(
        self,
        requests: Requests,
        instance_id: str,
        app_id: str,
        *,
        waiting_reason: str = "",
    ) -> None:
        self._requests = requests
        self.instance_id = instance_id
        self.app_id = app_id
        self.waiting_reason = waiting_reason
        """Set when the start was answered but waits, e.g. for a replica that registers the
        workflow ('' otherwise)."""

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.instance_id!r}, app_id={self.app_id!r})"

    async def describe(self) -> WorkflowState:
        """The instance's current state; raises :class:`WorkflowNotFoundError` if unknown."""
        state = await self._requests.request_state(self.app_id, Describe(self.instance_id))
        if state is None:
            raise WorkflowNotFoundError(f"no workflow {self.instance_id!r} on app {self.app_id!r}")
        return state

    async def wait(self, timeout: float | None = None) -> WorkflowState:
        """Wait until the instance finishes (or stalls) and return its final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"workflow {self.instance_id!r} on app {self.app_id!r} "
                    f"did not finish within {timeout}s"
                )
            # Re-ask periodically: a completion notice lost with a replica is then re-sent.
            window = self._requests.wait_poll_interval
            if remaining is not None:
                window = min(window, remaining)
            state = await self._requests.request_state(
                self.app_id, Describe(self.instance_id, wait=True), timeout=window, missing_ok=True
            )
            if state is None:
                continue
            if state.status.ends_waiting:
                return state

    async def result(self, timeout: float | None = None) -> object:
        """The workflow's output; raises :class:`WorkflowFailedError` if it failed,
        was terminated or stalled, and ``TimeoutError`` after ``timeout`` seconds."""
        state = await self.wait(timeout)
        if state.status is WorkflowStatus.COMPLETED:
            return state.output
        detail = (
            state.failure.message if state.failure else (state.stall_reason or str(state.output))
        )
        raise WorkflowFailedError(
            f"workflow {self.instance_id!r} ended {state.status.value}: {detail}", state.failure
        )

    async def raise_event(self, name: str, data: object = None) -> None:
        """Send external event ``name`` with ``data`` to the instance."""
        check_value(data, f"data of event {name!r}")
        event = RaiseEvent(self.instance_id, name, data, event_id=uuid.uuid4().hex)
        await self._requests.send(self.app_id, event)

    # Control commands wait for the outcome (the host answers after the commit that applied
    # them), so commands issued one after another apply in that order, from any client and
    # whichever replicas take them.

    async def suspend(self, reason: str = "", *, wait: bool = True) -> WorkflowState | None:
        """Pause the instance: results and events are kept but not applied until resumed.

        Returns the state once the suspension is committed (a finished instance stays as it
        is); raises :class:`WorkflowNotFoundError` if there is no such instance. With
        ``wait=False`` it only sends the command and returns None.
        """
        message = Control(self.instance_id, ControlAction.SUSPEND, reason)
        return await self._control(message, wait)

    async def resume(self, reason: str = "", *, wait: bool = True) -> WorkflowState | None:
        """Continue a suspended instance; returns its state as :meth:`suspend` does."""
        message = Control(self.instance_id, ControlAction.RESUME, reason)
        return await self._control(message, wait)

    async def terminate(
        self, reason: str = "", *, recursive: bool = True, wait: bool = True
    ) -> WorkflowState | None:
        """Stop the instance now (and its children on any app when ``recursive``); returns
        its state as :meth:`suspend` does. Children are terminated after this returns."""
        message = Control(self.instance_id, ControlAction.TERMINATE, reason, recursive)
        return await self._control(message, wait)

    @overload
    async def purge(self, *, recursive: bool = ..., wait: Literal[True] = ...) -> PurgeCount: ...
    @overload
    async def purge(self, *, recursive: bool = ..., wait: Literal[False]) -> None: ...
    @overload
    async def purge(self, *, recursive: bool = ..., wait: bool) -> PurgeCount | None: ...
    async def purge(self, *, recursive: bool = True, wait: bool = True) -> PurgeCount | None:
        """Delete a finished instance's history and state, and with ``recursive`` its
        children's on any app; returns how many instances were deleted (0 if there was no
        such instance).

        Raises :class:`WorkflowNotFinishedError` if the instance has not finished (it is
        left as it is). The host purges the instance, then waits for the children's apps to
        confirm theirs, within this client's ``request_timeout``: a child whose app does not
        answer in time (it is down) is not counted and is listed in the result's
        ``not_purged``; its purge stays queued for that app and applies when a replica of it
        runs. With ``wait=False`` it only sends the command and returns None.
        """
        message = Control(self.instance_id, ControlAction.PURGE, "", recursive)
        reply = await self._requests.control(self.app_id, message, wait=wait)
        if reply is None:
            return None
        if reply.state is not None:
            raise WorkflowNotFinishedError(
                f"cannot purge workflow {self.instance_id!r} on app {self.app_id!r}: it has not "
                f"finished (status {reply.state.status.value}); terminate it first"
            )
        return PurgeCount(reply.purged, reply.not_purged)

    async def history(self) -> list[HistoryEvent]:
        """The history events of the instance's current run, oldest first.

        Read from the hosting app's store by any of its replicas, in pages (each answer
        stays far below the broker's message size limit, however long the history), so no
        store access is needed. Raises :class:`WorkflowNotFoundError` if there is no such
        instance. A run started by continue-as-new has a history of its own: this is the
        latest run's.
        """
        events = await self._requests.history(self.app_id, self.instance_id)
        if events is None:
            raise WorkflowNotFoundError(f"no workflow {self.instance_id!r} on app {self.app_id!r}")
        return events

    async def _control(self, message: Control, wait: bool) -> WorkflowState | None:
        reply = await self._requests.control(self.app_id, message, wait=wait)
        if reply is None:
            return None
        if reply.state is None:
            raise WorkflowNotFoundError(f"no workflow {self.instance_id!r} on app {self.app_id!r}")
        return reply.state
