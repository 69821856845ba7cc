"""Reading dead letters: flowmesh's own headers, or RabbitMQ's ``x-death`` for a message the
broker dead-lettered itself (a queue's delivery limit)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flowmesh.transport.dead_letters import _letter


def incoming(headers: dict[str, Any]) -> Any:
    return SimpleNamespace(
        headers=headers, message_id="m-1", body=b"x", correlation_id=None, reply_to=None
    )


def test_a_letter_flowmesh_dead_lettered_keeps_its_reason_and_origin() -> None:
    letter = _letter(
        0,
        incoming(
            {
                "x-flowmesh-reason": b"undecodable message: junk",
                "x-flowmesh-original-queue": b"fm.a.reply",
                "x-flowmesh-delivery-count": 3,
            }
        ),
    )
    assert (letter.reason, letter.original_queue, letter.delivery_count) == (
        "undecodable message: junk",
        "fm.a.reply",
        3,
    )


def test_a_letter_the_broker_dead_lettered_reads_why_and_where_from_x_death() -> None:
    death = {"reason": b"delivery_limit", "queue": b"fm.a.work", "count": 1}
    letter = _letter(0, incoming({"x-death": [death]}))
    assert letter.reason == "dead-lettered by the broker: delivery_limit"
    assert letter.original_queue == "fm.a.work"


def test_a_letter_without_any_reason_says_nothing_rather_than_failing() -> None:
    letter = _letter(0, incoming({"x-death": "garbage"}))
    assert (letter.reason, letter.original_queue) == ("", "")
