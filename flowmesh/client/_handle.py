"""``WorkflowHandle``: control and observe one workflow instance through the broker."""

from __future__ import annotations

import time
import uuid

from flowmesh._errors import WorkflowFailedError, WorkflowNotFoundError
from flowmesh.client._requests import Requests
from flowmesh.model import (
    Control,
    ControlAction,
    Describe,
    RaiseEvent,
    WorkflowState,
    WorkflowStatus,
    check_value,
)


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

    async def purge(self, *, recursive: bool = True, wait: bool = True) -> WorkflowState | None:
        """Delete a finished instance's history and state (and its children's).

        Returns None once it is gone (or if it never existed), and the instance's state if
        the host refused because it has not finished. Children are purged after this
        returns. With ``wait=False`` it only sends the command and returns None.
        """
        message = Control(self.instance_id, ControlAction.PURGE, "", recursive)
        reply = await self._requests.control(self.app_id, message, wait=wait)
        return reply.state if reply else None

    async def _control(self, message: Control, wait: bool) -> WorkflowState | None:
        reply = await self._requests.control(self.app_id, message, wait=wait)
        if reply is None:
            return None
        if reply.state is None:
            raise WorkflowNotFoundError(f"no workflow {self.instance_id!r} on app {self.app_id!r}")
        return reply.state
