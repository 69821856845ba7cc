"""TurnBatcher: calls made in one loop turn are sent together, each gets its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowmesh.store._redis_batch import Call, TurnBatcher


class FakeRedis:
    """Answers each call with its first argument, or the exception object it names."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.fail_round_trip: Exception | None = None

    async def send(self, calls: list[Call]) -> list[Any]:
        self.batches.append([args[0] for _, args in calls])
        await asyncio.sleep(0)  # a round trip
        if self.fail_round_trip is not None:
            raise self.fail_round_trip
        return [args[0] for _, args in calls]


async def test_calls_of_one_turn_go_in_one_batch_in_order() -> None:
    redis = FakeRedis()
    batcher = TurnBatcher(redis.send)
    results = await asyncio.gather(*(batcher.call(["k"], [n]) for n in range(5)))
    assert results == [0, 1, 2, 3, 4]
    assert redis.batches == [[0, 1, 2, 3, 4]]


async def test_calls_of_later_turns_go_in_later_batches() -> None:
    redis = FakeRedis()
    batcher = TurnBatcher(redis.send)
    assert await batcher.call(["k"], ["a"]) == "a"
    assert await batcher.call(["k"], ["b"]) == "b"
    assert redis.batches == [["a"], ["b"]]


async def test_an_error_for_one_call_fails_only_that_call() -> None:
    redis = FakeRedis()
    batcher = TurnBatcher(redis.send)
    boom = ValueError("script error for this call")
    results = await asyncio.gather(
        batcher.call(["k"], [1]), batcher.call(["k"], [boom]), return_exceptions=True
    )
    assert list(results) == [1, boom]


async def test_a_failed_round_trip_fails_every_call_of_the_batch() -> None:
    redis = FakeRedis()
    redis.fail_round_trip = ConnectionError("connection lost")
    batcher = TurnBatcher(redis.send)
    results = await asyncio.gather(
        *(batcher.call(["k"], [n]) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    redis.fail_round_trip = None
    assert await batcher.call(["k"], ["after"]) == "after"  # the batcher keeps serving


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    redis = FakeRedis()
    batcher = TurnBatcher(redis.send)
    first = asyncio.ensure_future(batcher.call(["k"], [1]))
    second = asyncio.ensure_future(batcher.call(["k"], [2]))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == 2
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_calls_made_while_a_batch_is_in_flight_go_together_in_the_next() -> None:
    redis = FakeRedis()
    slow, sending = asyncio.Event(), asyncio.Event()
    send = redis.send

    async def slow_send(calls: list[Call]) -> list[Any]:
        if not redis.batches:
            sending.set()
            await slow.wait()  # the first round trip takes a while
        return await send(calls)

    batcher = TurnBatcher(slow_send)
    first = asyncio.ensure_future(batcher.call(["k"], ["first"]))
    await sending.wait()  # the first batch is on its way
    later = []
    for n in range(3):  # three separate loop turns while the first batch is in flight
        await asyncio.sleep(0)
        later.append(asyncio.ensure_future(batcher.call(["k"], [n])))
    slow.set()
    assert await first == "first"
    assert await asyncio.gather(*later) == [0, 1, 2]
    assert redis.batches == [["first"], [0, 1, 2]]
