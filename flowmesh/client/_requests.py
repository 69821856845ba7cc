"""``Requests``: how a client and its workflow handles talk to apps over the transport.

The plumbing shared by :class:`~flowmesh.client.Client` (which owns the connection) and
:class:`~flowmesh.client.WorkflowHandle` (which only sends): a handle holds this object, not the
client, so neither module imports the other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flowmesh._errors import AppUnavailableError, ConfigurationError, DecodeError
from flowmesh.codec import Codec
from flowmesh.model import (
    Control,
    Describe,
    HistoryEvent,
    HistoryPage,
    HistoryRequest,
    Message,
    StateReply,
    WorkflowState,
)
from flowmesh.security import AppUsers
from flowmesh.transport import Inbox, Outgoing, QueueKind, Transport


class Requests:
    """Sends messages and requests to apps and waits for their answers in the client's inbox.

    The client sets :attr:`transport` and :attr:`inbox` when it connects and clears them when
    it closes; every method raises :class:`ConfigurationError` while they are unset.
    """

    __slots__ = (
        "_codec",
        "_users",
        "_wait_key",
        "history_page_bytes",
        "inbox",
        "request_timeout",
        "transport",
        "wait_poll_interval",
    )

    def __init__(
        self,
        codec: Codec,
        users: AppUsers | None,
        *,
        request_timeout: float,
        wait_poll_interval: float,
        history_page_bytes: int = 1024 * 1024,
    ) -> None:
        self._codec = codec
        self._users = users
        self.request_timeout = request_timeout
        """How long describe() and the control commands wait for an answer."""
        self.wait_poll_interval = wait_poll_interval
        """How often a handle's wait() re-asks, in case a completion notice was lost."""
        self.history_page_bytes = history_page_bytes
        """Bytes of history events asked for per answer."""
        self.transport: Transport | None = None
        self.inbox: Inbox | None = None
        # Completion notices of wait() carry an ID derived from this key, see wait_id.
        self._wait_key = secrets.token_bytes(32)

    @staticmethod
    def new_request_id() -> str:
        """A fresh correlation ID for one request."""
        # Unguessable, not just unique: an answer is accepted for the request whose ID it
        # carries, and every hosting app may write to this client's inbox. (A counter would
        # let an app that saw one request predict the next, sent to another app.)
        return secrets.token_hex(16)

    def wait_id(self, app_id: str, instance_id: str) -> str:
        """The correlation ID of every wait() request for this instance from this client.

        The host stores it with the inbox address and answers with it when the instance
        finishes, possibly long after the request. One ID per instance (not per request)
        keeps re-asking from adding waiters; a keyed hash keeps it unguessable to anyone
        but the app hosting the instance, which sees it anyway.
        """
        data = f"{app_id}\0{instance_id}".encode()
        return hmac.new(self._wait_key, data, hashlib.sha256).hexdigest()[:32]

    def answerer(self, app_id: str) -> str:
        """The broker user that must send answers about ``app_id``'s workflows ('' if any)."""
        return self._users.user(app_id) if self._users else ""

    def _require(self) -> tuple[Transport, Inbox]:
        if self.transport is None or self.inbox is None:
            raise ConfigurationError("Client is not connected: use 'async with Client(...)'")
        return self.transport, self.inbox

    async def send(self, app_id: str, message: Message) -> None:
        """Publish ``message`` to ``app_id``'s reply queue, expecting no answer."""
        transport, _ = self._require()
        await transport.publish(
            [Outgoing(app_id, QueueKind.REPLY, self._codec.encode_message(message, app_id=app_id))]
        )

    async def request(
        self,
        app_id: str,
        kind: QueueKind,
        body: bytes,
        timeout: float,
        *,
        required: bool,
        correlation_id: str = "",
    ) -> Message | None:
        """Publish ``body`` to ``app_id`` and return the decoded answer (None if none came
        within ``timeout`` and it is not ``required``: then :class:`AppUnavailableError`)."""
        transport, inbox = self._require()
        correlation_id = correlation_id or self.new_request_id()
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
            answer = await inbox.receive(correlation_id, timeout, sender=self.answerer(app_id))
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

    async def request_state(
        self,
        app_id: str,
        message: Describe,
        *,
        timeout: float | None = None,
        missing_ok: bool = False,
    ) -> WorkflowState | None:
        """Ask ``app_id`` for an instance's state (None if it has none, or, with
        ``missing_ok``, if no replica answered)."""
        body = self._codec.encode_message(message)
        wait = timeout if timeout is not None else self.request_timeout
        # Completion notices for waiters are sent later, with the ID of the request that
        # registered the waiter.
        correlation_id = self.wait_id(app_id, message.instance_id) if message.wait else ""
        reply = await self.request(
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

    async def control(self, app_id: str, message: Control, *, wait: bool) -> StateReply | None:
        """Send ``message``; with ``wait``, return the host's answer, sent once the control
        was committed (applied, or found to change nothing)."""
        if not wait:
            await self.send(app_id, message)
            return None
        body = self._codec.encode_message(message)
        reply = await self.request(
            app_id, QueueKind.REPLY, body, self.request_timeout, required=True
        )
        if not isinstance(reply, StateReply):
            raise DecodeError(f"app {app_id!r} answered a control with {type(reply).__name__}")
        return reply

    async def history(self, app_id: str, instance_id: str) -> list[HistoryEvent] | None:
        """The history of ``instance_id``'s current run, page by page (None if there is no
        such instance). If the run changes between two pages (continue-as-new, a restart),
        it starts over, at most :data:`_HISTORY_RESTARTS` times."""
        events: list[HistoryEvent] = []
        run_id: str | None = None
        restarts = 0
        while True:
            request = HistoryRequest(instance_id, len(events), self.history_page_bytes)
            body = self._codec.encode_message(request)
            page = await self.request(
                app_id, QueueKind.REPLY, body, self.request_timeout, required=True
            )
            if not isinstance(page, HistoryPage) or page.instance_id != instance_id:
                raise DecodeError(f"app {app_id!r} answered a history request with {page!r:.200}")
            if not page.found:
                return None
            if run_id is not None and page.run_id != run_id:
                restarts += 1
                if restarts > _HISTORY_RESTARTS:
                    raise DecodeError(
                        f"the history of {instance_id!r} on app {app_id!r} changed run "
                        f"{restarts} times while it was read; try again"
                    )
                events, run_id = [], None
                continue
            if page.start != len(events) or (page.more and not page.events):
                raise DecodeError(
                    f"app {app_id!r} answered for events from {page.start} with "
                    f"{len(page.events)} events, asked from {len(events)}"
                )
            run_id = page.run_id
            events.extend(
                self._codec.decode_event(blob, app_id=app_id, instance_id=instance_id)
                for blob in page.events
            )
            if not page.more:
                return events


_HISTORY_RESTARTS = 5
"""How often :meth:`Requests.history` starts over because the run changed meanwhile."""
