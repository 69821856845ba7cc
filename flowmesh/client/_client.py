"""``Client``: start and control workflows from any service, with only the broker."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from flowmesh._errors import (
    AppUnavailableError,
    ConfigurationError,
    DecodeError,
    UnknownNameError,
    WorkflowAlreadyExistsError,
)
from flowmesh.client._handle import WorkflowHandle
from flowmesh.codec import Codec
from flowmesh.engine import task_name
from flowmesh.model import (
    Control,
    Describe,
    Message,
    StartAck,
    StartWorkflow,
    StateReply,
    WorkflowState,
    check_app_id,
    check_instance_id,
    check_name,
    check_value,
)
from flowmesh.security._senders import AppUsers
from flowmesh.transport import Inbox, Outgoing, QueueKind, Transport

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
        self._inbox: Inbox | None = None
        pattern = self.options.app_user_pattern
        if pattern is None:
            pattern = os.environ.get(APP_USER_PATTERN_ENV, "")
        self._users = AppUsers(pattern) if pattern else None
        # Completion notices of wait() carry an ID derived from this key, see _wait_id.
        self._wait_key = secrets.token_bytes(32)

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
        self._inbox = await self._transport.open_inbox()

    async def close(self) -> None:
        """Close the inbox and, if the client opened it, the broker connection."""
        if self._inbox is not None:
            await self._inbox.close()
            self._inbox = None
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
        request_id = self._new_request_id()
        message = StartWorkflow(instance_id, name, app_id, input, request_id=request_id)
        body = self._codec.encode_message(message, where=f"input of workflow {name!r}")
        reply = await self._request(
            app_id,
            QueueKind.WORK,
            body,
            self.options.start_ack_timeout,
            required=False,
            correlation_id=request_id,  # one ID per start request
        )
        if isinstance(reply, StartAck) and not reply.created:
            if reply.code == "waiting_for_deployment":
                # Durable and kept for a replica that registers the workflow (a rolling
                # deploy): not an error, but the handle says why nothing runs yet.
                return WorkflowHandle(self, instance_id, app_id, waiting_reason=reply.error)
            if reply.code == "unknown_workflow":
                raise UnknownNameError(reply.error)
            raise WorkflowAlreadyExistsError(reply.error)
        return WorkflowHandle(self, instance_id, app_id)

    def get_workflow(self, instance_id: str, *, app_id: str) -> WorkflowHandle:
        """A handle to an existing instance hosted by ``app_id``."""
        return WorkflowHandle(self, check_instance_id(instance_id), check_app_id(app_id))

    # -- plumbing used by WorkflowHandle ---------------------------------------------------------

    @staticmethod
    def _new_request_id() -> str:
        # Unguessable, not just unique: an answer is accepted for the request whose ID it
        # carries, and every hosting app may write to this client's inbox. (A counter would
        # let an app that saw one request predict the next, sent to another app.)
        return secrets.token_hex(16)

    def _wait_id(self, app_id: str, instance_id: str) -> str:
        """The correlation ID of every wait() request for this instance from this client.

        The host stores it with the inbox address and answers with it when the instance
        finishes, possibly long after the request. One ID per instance (not per request)
        keeps re-asking from adding waiters; a keyed hash keeps it unguessable to anyone
        but the app hosting the instance, which sees it anyway.
        """
        data = f"{app_id}\0{instance_id}".encode()
        return hmac.new(self._wait_key, data, hashlib.sha256).hexdigest()[:32]

    def _answerer(self, app_id: str) -> str:
        """The broker user that must send answers about ``app_id``'s workflows ('' if any)."""
        return self._users.user(app_id) if self._users else ""

    def _require(self) -> tuple[Transport, Inbox]:
        if self._transport is None or self._inbox is None:
            raise ConfigurationError("Client is not connected: use 'async with Client(...)'")
        return self._transport, self._inbox

    async def _send(self, app_id: str, message: Message) -> None:
        transport, _ = self._require()
        await transport.publish(
            [Outgoing(app_id, QueueKind.REPLY, self._codec.encode_message(message, app_id=app_id))]
        )

    async def _request(
        self,
        app_id: str,
        kind: QueueKind,
        body: bytes,
        timeout: float,
        *,
        required: bool,
        correlation_id: str = "",
    ) -> Message | None:
        transport, inbox = self._require()
        correlation_id = correlation_id or self._new_request_id()
        # Expect the answer before publishing: it can arrive before the broker's confirm.
        with inbox.expecting(correlation_id):
            await transport.publish(
                [
                    Outgoing(
                        app_id,
                        kind,
                        body,
                        correlation_id,
                        reply_to=inbox.address,
                        correlation_id=correlation_id,
                        answer_within=timeout,
                    )
                ]
            )
            answer = await inbox.receive(correlation_id, timeout, sender=self._answerer(app_id))
        if answer is None:
            if required:
                raise AppUnavailableError(
                    f"no replica of app {app_id!r} answered within {timeout}s; is one running?"
                )
            return None
        try:
            return self._codec.decode_message(answer, app_id=app_id)
        except DecodeError as exc:
            raise DecodeError(f"bad answer from app {app_id!r}: {exc}") from exc

    async def _request_state(
        self,
        app_id: str,
        message: Describe,
        *,
        timeout: float | None = None,
        missing_ok: bool = False,
    ) -> WorkflowState | None:
        body = self._codec.encode_message(message)
        wait = timeout if timeout is not None else self.options.request_timeout
        # Completion notices for waiters are sent later, with the ID of the request that
        # registered the waiter.
        correlation_id = self._wait_id(app_id, message.instance_id) if message.wait else ""
        reply = await self._request(
            app_id,
            QueueKind.REPLY,
            body,
            wait,
            required=not missing_ok,
            correlation_id=correlation_id,
        )
        if isinstance(reply, StateReply):
            return reply.state
        return None

    async def _control(self, app_id: str, message: Control, *, wait: bool) -> StateReply | None:
        """Send ``message``; with ``wait``, return the host's answer, sent once the control
        was committed (applied, or found to change nothing)."""
        if not wait:
            await self._send(app_id, message)
            return None
        body = self._codec.encode_message(message)
        reply = await self._request(
            app_id, QueueKind.REPLY, body, self.options.request_timeout, required=True
        )
        if not isinstance(reply, StateReply):
            raise DecodeError(f"app {app_id!r} answered a control with {type(reply).__name__}")
        return reply
