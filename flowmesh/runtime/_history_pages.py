"""Answers to ``HistoryRequest``: an instance's history from the store, one page at a time.

Any replica answers, from the store, without taking the instance's mailbox. A page holds the
events from the requested index on, as many as fit in the asked byte budget (and always at
least one, so a client always progresses), each encoded as the store's codec encodes history
events, so a payload codec's sealing applies as it does in the store. A history of any length
thus crosses the broker in messages below its size limit; the client asks again from where the
last page ended, and starts over if the run changed meanwhile (continue-as-new, restart).
"""

from __future__ import annotations

from flowmesh.codec import Codec
from flowmesh.model import HistoryPage, HistoryRequest
from flowmesh.store import WorkflowStore
from flowmesh.transport import Delivery, Transport

PAGE_EVENTS = 2000
"""Most events read from the store for one page."""

PAGE_ROOM = 4096
"""Bytes of a message kept for the page's envelope and other fields."""

_BIN_HEADER = 5
"""Bytes msgpack adds to each event blob (a bin 32 header at most)."""


class HistoryPages:
    """Answers the history requests of one app's instances (see the module docstring)."""

    def __init__(
        self, app_id: str, *, store: WorkflowStore, transport: Transport, codec: Codec
    ) -> None:
        self._app_id = app_id
        self._store = store
        self._transport = transport
        self._codec = codec

    async def answer(self, delivery: Delivery, message: HistoryRequest) -> None:
        """Send the page ``message`` asks for to its reply-to address, then ack it."""
        try:
            if delivery.reply_to:
                page = await self.page(message)
                await self._transport.send_reply(
                    delivery.reply_to,
                    delivery.correlation_id,
                    self._codec.encode_message(page),
                    answer_by=delivery.answer_by,
                )
        finally:
            await delivery.ack()

    async def page(self, message: HistoryRequest) -> HistoryPage:
        """The page of history ``message`` asks for."""
        instance_id = message.instance_id
        found = await self._store.load_history(instance_id, message.start, PAGE_EVENTS)
        if found is None:
            return HistoryPage(instance_id)
        budget = min(message.max_bytes, self._codec.limits.max_message_bytes - PAGE_ROOM)
        blobs: list[bytes] = []
        size = 0
        for event in found.events:
            blob = self._codec.encode_event(event, app_id=self._app_id, instance_id=instance_id)
            size += len(blob) + _BIN_HEADER
            if blobs and size > budget:
                break
            blobs.append(blob)
        more = found.more or len(blobs) < len(found.events)
        return HistoryPage(instance_id, True, found.run_id, message.start, tuple(blobs), more)
