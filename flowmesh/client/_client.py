"""``Client``: start and control workflows from any service, with only the broker."""

from __future__ import annotations

import itertools
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
from flowmesh.transport import Inbox, Outgoing, QueueKind, Transport


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timeouts of client requests."""

    request_timeout: float = 10.0
    """How long describe() waits for a replica of the app to answer."""
    start_ack_timeout: float = 5.0
    """How long start_workflow() waits for the app to confirm (the start is durable anyway)."""
    wait_poll_interval: float = 5.0
    """How often result() re-asks, in case a completion notice was lost."""


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
        # Request IDs: a random per-client prefix and a counter. As unique as a uuid4 each
        # (the prefix is one), at a fraction of the cost when thousands of starts are sent.
        self._id_prefix = f"{uuid.uuid4().hex}-"
        self._id_counter = itertools.count(1)

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
        :class:`WorkflowAlreadyExistsError` and an unknown name :class:`UnknownNameError`;
        if none is running yet, the start waits in the app's queue.
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
            if reply.code == "unknown_workflow":
                raise UnknownNameError(reply.error)
            raise WorkflowAlreadyExistsError(reply.error)
        return WorkflowHandle(self, instance_id, app_id)

    def get_workflow(self, instance_id: str, *, app_id: str) -> WorkflowHandle:
        """A handle to an existing instance hosted by ``app_id``."""
        return WorkflowHandle(self, check_instance_id(instance_id), check_app_id(app_id))

    # -- plumbing used by WorkflowHandle ---------------------------------------------------------

    def _new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):x}"

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
            answer = await inbox.receive(correlation_id, timeout)
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
        # Completion notices for waiters are sent later with this fixed correlation ID.
        correlation_id = (
            f"wait:{message.instance_id}" if isinstance(message, Describe) and message.wait else ""
        )
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
