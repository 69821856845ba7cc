"""``Client``: start and control workflows from any service, with only the broker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from flowmesh._errors import (
    ConfigurationError,
    DecodeError,
    UnknownNameError,
    WorkflowAlreadyExistsError,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
)
from flowmesh.client._handle import WorkflowHandle
from flowmesh.client._requests import Requests
from flowmesh.codec import Codec
from flowmesh.engine import task_name
from flowmesh.model import (
    Control,
    ControlAction,
    StartAck,
    StartWorkflow,
    check_app_id,
    check_instance_id,
    check_name,
    check_value,
)
from flowmesh.security import AppUsers
from flowmesh.transport import QueueKind, Transport

APP_USER_PATTERN_ENV = "FLOWMESH_APP_USER_PATTERN"
"""Where :class:`ClientOptions` takes the per-app user pattern from by default (the variable
the security plan sets for workers)."""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timeouts of client requests, and whom the client accepts answers from."""

    request_timeout: float = 10.0
    """How long describe() and the control commands wait for a replica of the app to answer."""
    start_ack_timeout: float = 5.0
    """How long start_workflow() waits for the app to confirm (the start is durable anyway)."""
    wait_poll_interval: float = 5.0
    """How often result() re-asks, in case a completion notice was lost."""
    history_page_bytes: int = 1024 * 1024
    """How many bytes of events history() asks for per answer (the host sends at most what
    fits in one message, and at least one event)."""
    app_user_pattern: str | None = None
    """Per-app broker user names, e.g. ``fm-{app}``: accept answers about app X's workflows
    only from X's user (every hosting app may write to every inbox). None (the default) takes
    the pattern from ``FLOWMESH_APP_USER_PATTERN`` if set; ``""`` turns the check off. Set it
    wherever workers run with ``--app-user-pattern``."""


class Client:
    """Starts and controls workflows of any app; needs only the broker.

    ``Client("amqp://...")`` talks to RabbitMQ; ``Client(transport=...)`` uses any transport
    (the test environment passes its in-memory one). Use as an async context manager.
    """

    def __init__(
        self,
        amqp_url: str | None = None,
        *,
        transport: Transport | None = None,
        codec: Codec | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        if (amqp_url is None) == (transport is None):
            raise ConfigurationError("pass exactly one of amqp_url or transport to Client")
        self._amqp_url = amqp_url
        self._transport = transport
        self._owns_transport = transport is None
        self._codec = codec or Codec()
        self.options = options or ClientOptions()
        pattern = self.options.app_user_pattern
        if pattern is None:
            pattern = os.environ.get(APP_USER_PATTERN_ENV, "")
        users = AppUsers(pattern) if pattern else None
        self._requests = Requests(
            self._codec,
            users,
            request_timeout=self.options.request_timeout,
            wait_poll_interval=self.options.wait_poll_interval,
            history_page_bytes=self.options.history_page_bytes,
        )

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the broker connection and the private inbox for answers."""
        if self._transport is None:
            # Imported here so `import flowmesh` never imports aio-pika.
            from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

            assert self._amqp_url is not None
            rabbit = RabbitMQTransport(
                RabbitMQConfig(url=self._amqp_url, connection_name="flowmesh-client")
            )
            await rabbit.connect()
            self._transport = rabbit
        self._requests.inbox = await self._transport.open_inbox()
        self._requests.transport = self._transport

    async def close(self) -> None:
        """Close the inbox and, if the client opened it, the broker connection."""
        self._requests.transport = None
        if self._requests.inbox is not None:
            await self._requests.inbox.close()
            self._requests.inbox = None
        if self._owns_transport and self._transport is not None:
            await self._transport.close()
            self._transport = None

    # -- public API ------------------------------------------------------------------------------

    async def start_workflow(
        self,
        workflow: str | Callable[..., Any],
        input: object = None,
        *,
        app_id: str,
        instance_id: str | None = None,
    ) -> WorkflowHandle:
        """Start ``workflow`` on ``app_id`` and return its handle.

        The start is durable once this returns. If a replica answers within
        ``options.start_ack_timeout``, a duplicate running ID raises
        :class:`WorkflowAlreadyExistsError`; if none is running yet, the start waits in the
        app's queue. A start of a workflow the answering replica does not register is not an
        error either: it waits for a replica that has it (a rolling deploy), and the handle's
        ``waiting_reason`` (and ``describe()``) say so.
        """
        name = check_name(task_name(workflow), "workflow")
        check_app_id(app_id)
        instance_id = check_instance_id(uuid.uuid4().hex if instance_id is None else instance_id)
        check_value(input, f"input of workflow {name!r}")
        request_id = self._requests.new_request_id()
        message = StartWorkflow(instance_id, name, app_id, input, request_id=request_id)
        body = self._codec.encode_message(message, where=f"input of workflow {name!r}")
        reply = await self._requests.request(
            app_id,
            QueueKind.WORK,
            body,
            self.options.start_ack_timeout,
            required=False,
            correlation_id=request_id,  # one ID per start request
        )
        return self._started(reply, instance_id, app_id)

    async def restart_workflow(
        self, instance_id: str, *, app_id: str, new_instance_id: bool | str = False
    ) -> WorkflowHandle:
        """Start ``instance_id``'s workflow again with the same input; returns the new handle.

        ``new_instance_id=False`` restarts it under the same ID, which needs the instance to
        have finished (else :class:`WorkflowNotFinishedError`): a new run (new ``run_id``)
        replaces its history in one atomic step. ``True`` restarts it under a new random ID,
        a string under that ID (whatever the source's status; a taken ID raises
        :class:`WorkflowAlreadyExistsError`). The host reads the name and input from the
        instance's stored history, so the input never travels through the client. Raises
        :class:`WorkflowNotFoundError` for an unknown instance, and
        :class:`AppUnavailableError` if no replica answers within ``request_timeout``.
        """
        source = check_instance_id(instance_id)
        check_app_id(app_id)
        if isinstance(new_instance_id, bool):
            target = uuid.uuid4().hex if new_instance_id else ""
        else:
            target = check_instance_id(new_instance_id)
        target = "" if target == source else target
        request_id = self._requests.new_request_id()
        message = Control(source, ControlAction.RESTART, new_instance_id=target)
        reply = await self._requests.request(
            app_id,
            QueueKind.REPLY,
            self._codec.encode_message(message),
            self.options.request_timeout,
            required=True,
            correlation_id=request_id,
        )
        if not isinstance(reply, StartAck):
            raise DecodeError(f"app {app_id!r} answered a restart with {type(reply).__name__}")
        if reply.code == "not_found":
            raise WorkflowNotFoundError(reply.error)
        if reply.code == "not_finished":
            raise WorkflowNotFinishedError(reply.error)
        return self._started(reply, target or source, app_id)

    def _started(self, reply: object, instance_id: str, app_id: str) -> WorkflowHandle:
        """The handle of a start (or restart) given the host's answer (None: none came)."""
        if isinstance(reply, StartAck) and not reply.created:
            if reply.code == "waiting_for_deployment":
                # Durable and kept for a replica that registers the workflow (a rolling
                # deploy): not an error, but the handle says why nothing runs yet.
                return WorkflowHandle(
                    self._requests, instance_id, app_id, waiting_reason=reply.error
                )
            if reply.code == "unknown_workflow":
                raise UnknownNameError(reply.error)
            raise WorkflowAlreadyExistsError(reply.error)
        return WorkflowHandle(self._requests, instance_id, app_id)

    def get_workflow(self, instance_id: str, *, app_id: str) -> WorkflowHandle:
        """A handle to an existing instance hosted by ``app_id``."""
        return WorkflowHandle(self._requests, check_instance_id(instance_id), check_app_id(app_id))
