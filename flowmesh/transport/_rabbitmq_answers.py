"""Answers to one inbox in one loop turn leave as one AMQP message.

A host that admits many starts of one client at once (a service starting a batch of
workflows) sends that client one ``StartAck`` per start. Sent one by one, each answer costs
the host a publish, the broker a routing and a delivery, and the client a delivery (in the
benchmark's W1, 2,051 answers went out as 716 messages once batched). The answers a host
produces in one loop turn for
one inbox (group commits resume many steps in the same turn) are framed into one message
instead, of type :data:`ANSWERS_TYPE`: a msgpack array of ``[correlation_id, body]`` pairs.
A lone answer is sent as before (its body, ``correlation_id`` in the properties), so nothing
changes for a client that starts one workflow at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgpack  # type: ignore[import-untyped,unused-ignore]
import structlog

log = structlog.get_logger("flowmesh.transport")

ANSWERS_TYPE = "fm.answers"
"""AMQP ``type`` property of a message carrying several answers."""

MAX_ANSWERS_PER_MESSAGE = 256
"""At most this many answers in one message (a bound for the reader, too)."""

Answer = tuple[str, bytes]
"""``(correlation_id, body)`` of one answer."""

PublishAnswers = Callable[[str, Sequence[Answer]], Awaitable[None]]
"""Sends answers to one inbox address: one plain message for one answer, framed for more."""


def pack_answers(answers: Sequence[Answer]) -> bytes:
    """The body of an :data:`ANSWERS_TYPE` message."""
    packed: bytes = msgpack.packb([[cid, body] for cid, body in answers], use_bin_type=True)
    return packed


def unpack_answers(body: bytes, *, max_bytes: int) -> list[Answer]:
    """The answers framed in ``body``; ValueError if it is not a well-formed frame."""
    try:
        items = msgpack.unpackb(
            body,
            raw=False,
            max_array_len=MAX_ANSWERS_PER_MESSAGE,
            max_map_len=0,
            max_str_len=1024,
            max_bin_len=max_bytes,
            max_ext_len=0,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"answers frame is not valid msgpack: {exc}") from exc
    if not isinstance(items, list):
        raise ValueError("answers frame is not an array")
    answers: list[Answer] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], bytes)
        ):
            raise ValueError("answers frame holds an item that is not [correlation_id, body]")
        answers.append((item[0], item[1]))
    return answers


def chunks(answers: Sequence[Answer], max_bytes: int) -> list[list[Answer]]:
    """``answers`` split so that no frame exceeds ``max_bytes`` (nor the count limit).

    An answer that alone is too large is left to the publisher's size check to refuse.
    """
    result: list[list[Answer]] = []
    current: list[Answer] = []
    size = 0
    for answer in answers:
        cost = len(answer[0]) + len(answer[1]) + 16  # msgpack headers, generously
        if current and (size + cost > max_bytes or len(current) >= MAX_ANSWERS_PER_MESSAGE):
            result.append(current)
            current, size = [], 0
        current.append(answer)
        size += cost
    if current:
        result.append(current)
    return result


class AnswerBatcher:
    """Collects the answers of one loop turn per inbox address and sends them together.

    The first answer to an address starts a flush task; the task runs after the callbacks
    already due in this turn, so answers of steps that resumed in the same turn join it.
    Callers do not wait: answers are best effort (an inbox may be gone, and a client that
    gets no answer in time goes on without it), so a failed send is logged, not raised into
    the step that produced the answer. The constructor starts nothing.
    """

    def __init__(self, publish: PublishAnswers) -> None:
        self._publish = publish
        self._open: dict[str, list[Answer]] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    def send(self, address: str, correlation_id: str, body: bytes) -> None:
        """Queue one answer for ``address``; it leaves with the others of this loop turn."""
        batch = self._open.get(address)
        if batch is not None:
            batch.append((correlation_id, body))
            return
        self._open[address] = [(correlation_id, body)]
        task = asyncio.create_task(self._flush(address), name="flowmesh-answers")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def drain(self, timeout: float) -> None:
        """Let queued answers leave (for up to ``timeout`` seconds), then drop the rest."""
        if self._flushes:
            _, late = await asyncio.wait(set(self._flushes), timeout=timeout)
            for task in late:
                task.cancel()
        self._open.clear()

    async def _flush(self, address: str) -> None:
        answers = self._open.pop(address, [])
        try:
            await self._publish(address, answers)
        except Exception as exc:  # best effort: the clients time out and go on
            log.warning(
                "transport.answers_not_sent", inbox=address, answers=len(answers), error=str(exc)
            )


__all__ = [
    "ANSWERS_TYPE",
    "MAX_ANSWERS_PER_MESSAGE",
    "Answer",
    "AnswerBatcher",
    "chunks",
    "pack_answers",
    "unpack_answers",
]
