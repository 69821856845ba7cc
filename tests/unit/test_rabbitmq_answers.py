"""Answers to one inbox in one loop turn are framed into one message; bad frames are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgpack  # type: ignore[import-untyped,unused-ignore]
import pytest
import structlog.testing

from flowmesh._errors import TransportError
from flowmesh.transport._rabbitmq_answers import (
    MAX_ANSWERS_PER_MESSAGE,
    Answer,
    AnswerBatcher,
    chunks,
    pack_answers,
    unpack_answers,
)


class Sink:
    """Records what the batcher publishes, per call."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Answer]]] = []
        self.fail: Exception | None = None

    async def publish(self, address: str, answers: Sequence[Answer]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((address, list(answers)))


def test_a_frame_round_trips() -> None:
    answers = [("c-1", b"one"), ("c-2", b""), ("c-3", bytes(range(256)))]
    assert unpack_answers(pack_answers(answers), max_bytes=10_000) == answers


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb({"c": b"x"}), "not valid msgpack"),  # maps are refused outright
        (msgpack.packb("c-1"), "not an array"),
        (msgpack.packb([["c-1"]]), "not \\[correlation_id, body\\]"),
        (msgpack.packb([[1, b"x"]]), "not \\[correlation_id, body\\]"),
        (msgpack.packb([["c-1", "text, not bytes"]]), "not \\[correlation_id, body\\]"),
        (msgpack.packb([["c", b"x"]] * (MAX_ANSWERS_PER_MESSAGE + 1)), "not valid msgpack"),
        (pack_answers([("c", b"x")]) + b"\x00", "not valid msgpack"),
    ],
)
def test_a_malformed_frame_is_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        unpack_answers(body, max_bytes=len(body))


def test_chunks_respect_the_byte_and_count_limits() -> None:
    many = [(f"c-{i}", b"x" * 10) for i in range(600)]
    groups = chunks(many, max_bytes=1_000_000)
    assert [len(g) for g in groups] == [256, 256, 88]
    assert [a for g in groups for a in g] == many

    sized = chunks([("a", b"x" * 400), ("b", b"x" * 400), ("c", b"x" * 400)], max_bytes=900)
    assert [[cid for cid, _ in g] for g in sized] == [["a", "b"], ["c"]]
    # An answer too large for any frame goes alone (the size check refuses it later).
    alone = chunks([("a", b"x"), ("big", b"x" * 5000), ("b", b"x")], max_bytes=900)
    assert [[cid for cid, _ in g] for g in alone] == [["a"], ["big"], ["b"]]


async def test_answers_of_one_turn_to_one_address_go_together() -> None:
    sink = Sink()
    batcher = AnswerBatcher(sink.publish)

    batcher.send("inbox-a", "c-1", b"one")
    batcher.send("inbox-b", "c-2", b"two")
    batcher.send("inbox-a", "c-3", b"three")
    assert sink.sent == []  # nothing leaves before the end of the turn
    await asyncio.sleep(0)
    batcher.send("inbox-a", "c-4", b"later")
    await batcher.drain(1.0)

    assert sink.sent == [
        ("inbox-a", [("c-1", b"one"), ("c-3", b"three")]),
        ("inbox-b", [("c-2", b"two")]),
        ("inbox-a", [("c-4", b"later")]),
    ]


async def test_a_failed_send_is_logged_and_the_batcher_keeps_working() -> None:
    sink = Sink()
    sink.fail = TransportError("broker gone")
    batcher = AnswerBatcher(sink.publish)

    with structlog.testing.capture_logs() as logs:
        batcher.send("inbox-a", "c-1", b"one")
        batcher.send("inbox-a", "c-2", b"two")
        await batcher.drain(1.0)
    assert [(e["event"], e["inbox"], e["answers"], e["error"]) for e in logs] == [
        ("transport.answers_not_sent", "inbox-a", 2, "broker gone")
    ]

    sink.fail = None
    batcher.send("inbox-a", "c-3", b"three")
    await batcher.drain(1.0)
    assert sink.sent == [("inbox-a", [("c-3", b"three")])]


async def test_drain_gives_up_on_a_send_that_hangs() -> None:
    hung = asyncio.Event()

    async def hang(address: str, answers: Sequence[Answer]) -> None:
        hung.set()
        await asyncio.Event().wait()

    batcher = AnswerBatcher(hang)
    batcher.send("inbox-a", "c-1", b"one")
    await hung.wait()
    await asyncio.wait_for(batcher.drain(0.05), 1.0)  # returns, the send is cancelled
    batcher.send("inbox-a", "c-2", b"two")  # a later answer starts a batch of its own
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.drain(0.05), 1.0)
