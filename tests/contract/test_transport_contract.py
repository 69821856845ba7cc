"""One behavioural suite run against every Transport: the in-memory and the RabbitMQ one.

Each test gets a :class:`Broker`: a factory of transports ("replicas") connected to the same
broker, and fresh app IDs. The RabbitMQ variant deletes the test's queues afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from uuid import uuid4

import aio_pika
import pytest
from structlog.testing import capture_logs

from flowmesh._errors import TransportError
from flowmesh.transport import Delivery, Outgoing, QueueKind, QueueStats, Transport, queue_name
from flowmesh.transport.memory import MemoryBroker, MemoryTransport
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

WORK = QueueKind.WORK
SIZE_LIMIT = 64 * 1024
WAIT = 5.0
"""Upper bound for anything that should happen promptly (fails fast instead of hanging)."""


@dataclass
class Broker:
    """Opens transports on one broker and hands out fresh app IDs.

    ``open(drain_timeout=...)`` sets how long cancelling lets running handlers finish.
    """

    open: Callable[..., Awaitable[Transport]]
    user: str
    """The broker user every transport opened here publishes as (its ``user_id``)."""
    apps: list[str] = field(default_factory=list)

    def new_app(self) -> str:
        """A fresh app ID, cleaned up after the test."""
        app_id = f"t-{uuid4().hex[:8]}"
        self.apps.append(app_id)
        return app_id


async def delete_queues(url: str, apps: list[str]) -> None:
    """Remove the queues of ``apps`` so tests do not litter the broker."""
    connection = await aio_pika.connect(url, timeout=WAIT)
    async with connection, connection.channel() as channel:
        for app_id in apps:
            for kind in QueueKind:
                await channel.queue_delete(queue_name(app_id, kind))


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.real_services)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A broker of the parametrized kind; every transport opened on it is closed afterwards."""
    opened: list[Transport] = []
    if request.param == "memory":
        memory = MemoryBroker()

        async def open_memory(drain_timeout: float = 0.0) -> Transport:
            transport = MemoryTransport(
                memory,
                max_message_bytes=SIZE_LIMIT,
                drain_timeout=drain_timeout,
                user_id="fm-contract",
            )
            opened.append(transport)
            return transport

        yield Broker(open_memory, "fm-contract")
        for transport in opened:
            await transport.close()
        return

    url: str = request.getfixturevalue("amqp_url")

    async def open_rabbitmq(drain_timeout: float = 0.0) -> Transport:
        config = RabbitMQConfig(
            url=url,
            connection_name=f"flowmesh-contract-{uuid4().hex[:6]}",
            publish_timeout=WAIT,
            operation_timeout=WAIT,
            max_message_bytes=SIZE_LIMIT,
            drain_timeout=drain_timeout,
        )
        transport = RabbitMQTransport(config)
        await transport.connect()
        opened.append(transport)
        return transport

    rabbit = Broker(open_rabbitmq, urlsplit(url).username or "guest")
    try:
        yield rabbit
    finally:
        for transport in opened:
            await transport.close()
        await delete_queues(url, rabbit.apps)


@pytest.fixture
async def transport(broker: Broker) -> Transport:
    """A transport connected to the test's broker."""
    return await broker.open()


@pytest.fixture
def app_id(broker: Broker) -> str:
    """A fresh app ID."""
    return broker.new_app()


class Recorder:
    """A handler that records deliveries; acks them unless told to hold them."""

    def __init__(self, *, hold: bool = False) -> None:
        self.received: asyncio.Queue[Delivery] = asyncio.Queue()
        self._hold = hold

    async def __call__(self, delivery: Delivery) -> None:
        await self.received.put(delivery)
        if self._hold:
            await asyncio.Event().wait()  # until the subscription cancels this handler
        await delivery.ack()

    async def next(self) -> Delivery:
        """The next delivery, failing the test if none comes promptly."""
        return await asyncio.wait_for(self.received.get(), WAIT)

    async def nothing_more(self) -> None:
        """Assert that no further delivery arrives for a short while."""
        await asyncio.sleep(0.2)
        assert self.received.empty()


def work(
    app_id: str, body: bytes, message_id: str = "", reply_to: str = "", correlation_id: str = ""
) -> Outgoing:
    """A message to ``app_id``'s work queue."""
    return Outgoing(app_id, WORK, body, message_id, reply_to, correlation_id)


async def stats_become(transport: Transport, expected: QueueStats) -> None:
    """Wait until ``queue_stats`` reports ``expected`` (broker counters can lag a little)."""
    deadline = time.monotonic() + WAIT
    while (actual := await transport.queue_stats(expected.app_id)) != expected:
        if time.monotonic() > deadline:
            assert actual == expected
        await asyncio.sleep(0.05)


async def test_published_message_arrives_with_body_and_properties(
    transport: Transport, app_id: str
) -> None:
    recorder = Recorder()
    await transport.consume(app_id, WORK, recorder, prefetch=1)
    await transport.publish(
        [
            work(
                app_id,
                b"\x00\xffbody",
                message_id="m-1",
                reply_to="fm.inbox.x",
                correlation_id="c-1",
            )
        ]
    )

    delivery = await recorder.next()

    assert delivery.body == b"\x00\xffbody"
    assert (delivery.message_id, delivery.reply_to, delivery.correlation_id) == (
        "m-1",
        "fm.inbox.x",
        "c-1",
    )
    assert delivery.delivery_count == 1


async def test_a_request_carries_when_its_sender_stops_waiting(
    transport: Transport, app_id: str
) -> None:
    recorder = Recorder()
    await transport.consume(app_id, WORK, recorder, prefetch=2)
    before = time.time()
    await transport.publish([Outgoing(app_id, WORK, b"ask", answer_within=3.0)])
    await transport.publish([work(app_id, b"tell")])

    asked, told = await recorder.next(), await recorder.next()

    assert before + 3.0 - 0.01 <= asked.answer_by <= time.time() + 3.0 + 0.01
    assert told.answer_by == 0.0


async def test_an_answer_its_sender_stopped_waiting_for_is_not_sent(
    transport: Transport,
) -> None:
    inbox = await transport.open_inbox()
    with inbox.expecting("late"), inbox.expecting("in-time"), inbox.expecting("no-deadline"):
        # Past the deadline and the grace for clock differences between machines.
        await transport.send_reply(inbox.address, "late", b"x", answer_by=time.time() - 5)
        await transport.send_reply(inbox.address, "in-time", b"y", answer_by=time.time() + 5)
        await transport.send_reply(inbox.address, "no-deadline", b"z", answer_by=0.0)

        assert await inbox.receive("in-time", WAIT) == b"y"
        assert await inbox.receive("no-deadline", WAIT) == b"z"
        assert await inbox.receive("late", 0.3) is None


async def test_one_consumer_receives_messages_in_publish_order(
    transport: Transport, app_id: str
) -> None:
    for number in range(10):
        await transport.publish([work(app_id, b"%d" % number)])
    recorder = Recorder()
    await transport.consume(app_id, WORK, recorder, prefetch=3)

    received = [(await recorder.next()).body for _ in range(10)]

    assert received == [b"%d" % number for number in range(10)]


async def test_many_messages_published_at_once_all_arrive(
    transport: Transport, app_id: str
) -> None:
    recorder = Recorder()
    await transport.consume(app_id, WORK, recorder, prefetch=50)

    await transport.publish([work(app_id, b"x", message_id=f"m-{n}") for n in range(200)])

    received = {(await recorder.next()).message_id for _ in range(200)}
    assert received == {f"m-{n}" for n in range(200)}


async def test_prefetch_bounds_the_deliveries_in_flight(transport: Transport, app_id: str) -> None:
    release, two_in_flight, all_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    in_flight, peak, done = 0, 0, 0

    async def slow(delivery: Delivery) -> None:
        nonlocal in_flight, peak, done
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 2:
            two_in_flight.set()
        await release.wait()
        in_flight -= 1
        await delivery.ack()
        done += 1
        if done == 5:
            all_done.set()

    await transport.consume(app_id, WORK, slow, prefetch=2)
    await transport.publish([work(app_id, b"%d" % n) for n in range(5)])
    await asyncio.wait_for(two_in_flight.wait(), WAIT)
    await asyncio.sleep(0.3)  # room for a third delivery, which must not come

    assert (in_flight, peak) == (2, 2)
    release.set()
    await asyncio.wait_for(all_done.wait(), WAIT)
    assert peak == 2


async def test_unsettled_delivery_goes_to_another_consumer_after_cancel(
    transport: Transport, app_id: str
) -> None:
    holder = Recorder(hold=True)
    subscription = await transport.consume(app_id, WORK, holder, prefetch=1)
    await transport.publish([work(app_id, b"job", message_id="m-1")])
    assert (await holder.next()).delivery_count == 1
    other = Recorder()
    await transport.consume(app_id, WORK, other, prefetch=1)

    await subscription.cancel()

    redelivered = await other.next()
    assert (redelivered.body, redelivered.message_id) == (b"job", "m-1")
    assert redelivered.delivery_count == 2


async def test_requeue_redelivers_with_incremented_delivery_count(
    transport: Transport, app_id: str
) -> None:
    counts: asyncio.Queue[int] = asyncio.Queue()

    async def retry_twice(delivery: Delivery) -> None:
        await counts.put(delivery.delivery_count)
        if delivery.delivery_count < 3:
            await delivery.requeue()
        else:
            await delivery.ack()

    await transport.consume(app_id, WORK, retry_twice, prefetch=1)
    await transport.publish([work(app_id, b"flaky")])

    assert [await asyncio.wait_for(counts.get(), WAIT) for _ in range(3)] == [1, 2, 3]
    await stats_become(transport, QueueStats(app_id, 0, 1, 0, 0, 0))


async def test_a_republished_message_carries_its_attempt_and_a_requeue_does_not_count(
    transport: Transport, app_id: str
) -> None:
    """The attempt is the publisher's (header), independent of the broker's delivery count:
    what lets a retry delay grow across republishing, which resets the delivery count."""
    seen: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def republish_then_requeue(delivery: Delivery) -> None:
        await seen.put((delivery.attempt, delivery.delivery_count))
        if delivery.attempt < 3:
            again = Outgoing(app_id, WORK, delivery.body, attempt=delivery.attempt + 1)
            await transport.publish([again])
            await delivery.ack()
        elif delivery.delivery_count == 1:
            await delivery.requeue()
        else:
            await delivery.ack()

    await transport.consume(app_id, WORK, republish_then_requeue, prefetch=1)
    await transport.publish([work(app_id, b"later")])

    got = [await asyncio.wait_for(seen.get(), WAIT) for _ in range(4)]
    assert got == [(1, 1), (2, 1), (3, 1), (3, 2)]


async def test_consumers_of_one_queue_share_its_messages(broker: Broker, app_id: str) -> None:
    replica_a, replica_b = await broker.open(), await broker.open()
    first, second = Recorder(hold=True), Recorder(hold=True)
    await replica_a.consume(app_id, WORK, first, prefetch=1)
    await replica_b.consume(app_id, WORK, second, prefetch=1)

    await replica_a.publish([work(app_id, b"1"), work(app_id, b"2")])

    bodies = {(await first.next()).body, (await second.next()).body}
    assert bodies == {b"1", b"2"}


async def test_messages_wait_for_an_app_that_is_not_deployed_yet(
    broker: Broker, app_id: str
) -> None:
    client = await broker.open()
    await client.publish([work(app_id, b"early", message_id="m-1")])
    await stats_become(client, QueueStats(app_id, 1, 0, 0, 0, 0))

    worker = await broker.open()
    recorder = Recorder()
    await worker.consume(app_id, WORK, recorder, prefetch=1)

    assert (await recorder.next()).body == b"early"


async def test_dead_letter_moves_the_message_to_the_dead_queue(
    transport: Transport, app_id: str
) -> None:
    async def reject(delivery: Delivery) -> None:
        await transport.dead_letter(delivery, app_id, "cannot decode")

    subscription = await transport.consume(app_id, WORK, reject, prefetch=1)
    await transport.publish([work(app_id, b"garbage", message_id="m-1")])

    await stats_become(transport, QueueStats(app_id, 0, 1, 0, 0, 1))
    await subscription.cancel()
    dead = Recorder()
    await transport.consume(app_id, QueueKind.DEAD, dead, prefetch=1)
    delivery = await dead.next()
    assert (delivery.body, delivery.message_id) == (b"garbage", "m-1")


async def test_queue_stats_count_ready_messages_and_consumers(
    transport: Transport, app_id: str
) -> None:
    await transport.publish([Outgoing(app_id, QueueKind.REPLY, b"r")] * 3)
    for _ in range(2):
        await transport.consume(app_id, WORK, Recorder(), prefetch=1)

    await stats_become(transport, QueueStats(app_id, 0, 2, 3, 0, 0))


async def test_queue_stats_of_an_undeclared_app_are_zero(transport: Transport, app_id: str) -> None:
    assert await transport.queue_stats(app_id) == QueueStats(app_id, 0, 0, 0, 0, 0)


async def test_declare_app_is_idempotent(broker: Broker, app_id: str) -> None:
    first, second = await broker.open(), await broker.open()
    await first.declare_app(app_id)
    await first.declare_app(app_id)
    await second.declare_app(app_id)

    assert await first.queue_stats(app_id) == QueueStats(app_id, 0, 0, 0, 0, 0)


async def test_inbox_receives_answers_by_correlation_id(transport: Transport, app_id: str) -> None:
    async def answer(delivery: Delivery) -> None:
        await transport.send_reply(
            delivery.reply_to, delivery.correlation_id, b"re: " + delivery.body
        )
        await delivery.ack()

    await transport.consume(app_id, WORK, answer, prefetch=2)
    inbox = await transport.open_inbox()
    await transport.publish(
        [
            work(app_id, b"one", reply_to=inbox.address, correlation_id="c-1"),
            work(app_id, b"two", reply_to=inbox.address, correlation_id="c-2"),
        ]
    )

    assert await inbox.receive("c-2", WAIT) == b"re: two"
    assert await inbox.receive("c-1", WAIT) == b"re: one"
    await inbox.close()


async def test_answers_sent_together_to_one_inbox_each_reach_their_receiver(
    transport: Transport,
) -> None:
    # A host admitting many starts of one client answers them in the same loop turn; the
    # RabbitMQ transport frames such answers into one message, which must stay invisible.
    inbox = await transport.open_inbox()
    other = await transport.open_inbox()
    answers = [(f"c-{i}", f"answer {i}".encode()) for i in range(300)]
    await asyncio.gather(
        *(transport.send_reply(inbox.address, cid, body) for cid, body in answers),
        transport.send_reply(other.address, "c-0", b"for the other inbox"),
        transport.send_reply(inbox.address, "c-big", b"x" * 60_000),
    )

    for cid, body in reversed(answers):
        assert await inbox.receive(cid, WAIT) == body
    assert await inbox.receive("c-big", WAIT) == b"x" * 60_000
    assert await other.receive("c-0", WAIT) == b"for the other inbox"
    assert await inbox.receive("c-0", 0.2) is None  # each answer arrived once
    await inbox.close()
    await other.close()


async def test_expected_answers_are_all_kept_however_many_arrive_before_receive(
    transport: Transport,
) -> None:
    # A client starting thousands of workflows at once: hosts answer some starts before the
    # broker has confirmed them, so their answers wait in the inbox. None may be dropped.
    inbox = await transport.open_inbox()
    ids = [f"start-{i}" for i in range(1_500)]
    with ExitStack() as expectations:
        for cid in ids:
            expectations.enter_context(inbox.expecting(cid))
        await asyncio.gather(
            *(transport.send_reply(inbox.address, cid, cid.encode()) for cid in ids)
        )
        assert await inbox.receive(ids[-1], WAIT) == ids[-1].encode()  # the rest came first
        for cid in ids[:-1]:
            assert await inbox.receive(cid, 0) == cid.encode()
    await inbox.close()


async def test_answers_to_one_id_are_received_in_arrival_order(transport: Transport) -> None:
    # A completion notice can arrive between two wait() polls, before the next poll expects
    # its ID; the answers to that ID must still come out oldest first.
    inbox = await transport.open_inbox()
    await transport.send_reply(inbox.address, "wait:x", b"before")
    with inbox.expecting("wait:x"):
        await transport.send_reply(inbox.address, "wait:x", b"after")
        assert await inbox.receive("wait:x", WAIT) == b"before"
        assert await inbox.receive("wait:x", WAIT) == b"after"
    await inbox.close()


async def test_unexpected_answers_are_bounded_and_the_oldest_go_first(
    transport: Transport,
) -> None:
    # Answers nobody waits for (the requester gave up) must not grow an inbox for ever.
    inbox = await transport.open_inbox()
    ids = [f"late-{i}" for i in range(1_100)]
    with inbox.expecting("sentinel"), capture_logs() as logs:
        for cid in ids:
            await transport.send_reply(inbox.address, cid, b"late")
        await transport.send_reply(inbox.address, "sentinel", b"last")
        assert await inbox.receive("sentinel", WAIT) == b"last"
    kept = [cid for cid in ids if await inbox.receive(cid, 0) is not None]
    assert kept == ids[100:]  # the bound is 1,000 answers
    # The first drop is logged, not each of the 100: a busy client must not flood its log.
    full = [entry for entry in logs if entry["event"] == "transport.inbox_full"]
    assert [(e["dropped_correlation_id"], e["dropped_total"]) for e in full] == [("late-0", 1)]
    await inbox.close()


async def test_an_inbox_hands_out_answers_only_from_the_expected_sender(
    broker: Broker, transport: Transport
) -> None:
    """Every hosting app may write to every inbox: a receiver naming the sender (the asked
    app's user) gets only that user's answers; the others are dropped, not kept for later."""
    inbox = await transport.open_inbox()
    with inbox.expecting("c-1"), capture_logs() as logs:
        await transport.send_reply(inbox.address, "c-1", b"from someone else")
        assert await inbox.receive("c-1", 0.3, sender="fm-the-asked-app") is None
        assert await inbox.receive("c-1", 0.1) is None  # dropped, not put back
        await transport.send_reply(inbox.address, "c-1", b"from the sender")
        assert await inbox.receive("c-1", WAIT, sender=broker.user) == b"from the sender"
    refused = [entry for entry in logs if entry["event"] == "transport.answer_refused"]
    assert [(e["user_id"], e["expected_user_id"]) for e in refused] == [
        (broker.user, "fm-the-asked-app")
    ]
    await inbox.close()


async def test_inbox_receive_returns_none_after_the_timeout(transport: Transport) -> None:
    inbox = await transport.open_inbox()
    started = time.monotonic()

    assert await inbox.receive("nobody-answers", 0.2) is None
    assert time.monotonic() - started >= 0.2
    await inbox.close()


async def test_reply_to_a_closed_or_unknown_inbox_is_dropped(transport: Transport) -> None:
    inbox = await transport.open_inbox()
    await inbox.close()

    await transport.send_reply(inbox.address, "c-1", b"late answer")
    await transport.send_reply(f"fm.inbox.{uuid4().hex}", "c-1", b"never had an inbox")
    await transport.send_reply("not-an-inbox", "c-1", b"refused")


async def test_handler_exception_does_not_stop_the_consumer(
    transport: Transport, app_id: str
) -> None:
    seen: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()

    async def fragile(delivery: Delivery) -> None:
        await seen.put((delivery.body, delivery.delivery_count))
        if delivery.body == b"boom" and delivery.delivery_count == 1:
            raise RuntimeError("handler bug")
        await delivery.ack()

    await transport.consume(app_id, WORK, fragile, prefetch=1)
    await transport.publish([work(app_id, b"boom")])
    await transport.publish([work(app_id, b"fine")])

    got = {await asyncio.wait_for(seen.get(), WAIT) for _ in range(3)}
    assert got == {(b"boom", 1), (b"fine", 1), (b"boom", 2)}
    await stats_become(transport, QueueStats(app_id, 0, 1, 0, 0, 0))


async def test_close_returns_unsettled_deliveries(broker: Broker, app_id: str) -> None:
    crashing = await broker.open()
    await crashing.consume(app_id, WORK, Recorder(hold=True), prefetch=1)
    await crashing.publish([work(app_id, b"job")])
    await stats_become(crashing, QueueStats(app_id, 0, 1, 0, 0, 0))

    await crashing.close()

    survivor = await broker.open()
    recorder = Recorder()
    await survivor.consume(app_id, WORK, recorder, prefetch=1)
    delivery = await recorder.next()
    assert (delivery.body, delivery.delivery_count) == (b"job", 2)


async def test_cancel_with_drain_timeout_lets_running_handlers_settle(
    broker: Broker, app_id: str
) -> None:
    transport = await broker.open(drain_timeout=WAIT)
    started, release = asyncio.Event(), asyncio.Event()
    settled: list[str] = []

    async def slow(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        await delivery.ack()
        settled.append(delivery.message_id)

    subscription = await transport.consume(app_id, WORK, slow, prefetch=2)
    await transport.publish([work(app_id, b"job", message_id="m-1")])
    await asyncio.wait_for(started.wait(), WAIT)

    cancelling = asyncio.create_task(subscription.cancel())
    await asyncio.sleep(0.1)
    assert not cancelling.done()  # waiting for the running handler
    await transport.publish([work(app_id, b"later", message_id="m-2")])
    release.set()
    await asyncio.wait_for(cancelling, WAIT)

    assert settled == ["m-1"]  # acked normally; the later message was not taken
    await stats_become(transport, QueueStats(app_id, 1, 0, 0, 0, 0))


async def test_settling_a_delivery_twice_raises(transport: Transport, app_id: str) -> None:
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def double_ack(delivery: Delivery) -> None:
        await delivery.ack()
        try:
            await delivery.requeue()
        except TransportError as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    await transport.consume(app_id, WORK, double_ack, prefetch=1)
    await transport.publish([work(app_id, b"x")])

    assert isinstance(await asyncio.wait_for(outcome, WAIT), TransportError)


async def test_oversized_message_is_refused_before_anything_is_published(
    transport: Transport, app_id: str
) -> None:
    with pytest.raises(TransportError, match="exceeds"):
        await transport.publish([work(app_id, b"small"), work(app_id, b"x" * (SIZE_LIMIT + 1))])

    await transport.publish([work(app_id, b"marker")])
    recorder = Recorder()
    await transport.consume(app_id, WORK, recorder, prefetch=1)
    assert (await recorder.next()).body == b"marker"
    await recorder.nothing_more()


async def test_publish_each_reports_a_failed_message_alone_and_delivers_its_siblings(
    transport: Transport, broker: Broker
) -> None:
    """Invariant 11: an oversized message in the middle of a batch gets its own error; the
    messages before and after it are confirmed (None) and delivered, in order."""
    app_id, other = broker.new_app(), broker.new_app()
    outcomes = await transport.publish_each(
        [
            work(app_id, b"first"),
            work(app_id, b"x" * (SIZE_LIMIT + 1)),
            work(other, b"to another app"),
            work(app_id, b"last"),
        ]
    )

    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "TransportError",
        "NoneType",
        "NoneType",
    ]
    assert "exceeds" in str(outcomes[1])
    recorder, other_recorder = Recorder(), Recorder()
    await transport.consume(app_id, WORK, recorder, prefetch=10)
    await transport.consume(other, WORK, other_recorder, prefetch=10)
    assert [(await recorder.next()).body for _ in range(2)] == [b"first", b"last"]
    assert (await other_recorder.next()).body == b"to another app"
    await recorder.nothing_more()


async def test_publish_each_of_an_empty_batch_is_empty(transport: Transport) -> None:
    assert await transport.publish_each([]) == []


async def test_memory_broker_refusing_an_app_fails_only_its_messages() -> None:
    """The memory broker's stand-in for a target outside a user's permissions."""
    broker = MemoryBroker()
    broker.refuse("billing")
    async with contextlib.AsyncExitStack() as stack:
        transport = MemoryTransport(broker, user_id="fm-orders")
        stack.push_async_callback(transport.close)
        outcomes = await transport.publish_each(
            [work("payments", b"1"), work("billing", b"2"), work("payments", b"3")]
        )
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], TransportError)
        refused = "user 'fm-orders' may not publish to app 'billing': access refused"
        assert str(outcomes[1]) == refused
        with pytest.raises(TransportError, match="billing"):
            await transport.publish([work("billing", b"4")])
        broker.refuse("billing", None)
        assert await transport.publish_each([work("billing", b"5")]) == [None]
        assert (await transport.queue_stats("billing")).work_messages == 1
        assert (await transport.queue_stats("payments")).work_messages == 2


async def test_closed_transport_refuses_work(transport: Transport, app_id: str) -> None:
    await transport.close()

    with pytest.raises(TransportError):
        await transport.publish([work(app_id, b"x")])
    await transport.close()  # closing twice is fine


# -- memory-only inspection helpers (not part of the Transport protocol) ----------------------


async def test_memory_dead_letters_keep_the_reason() -> None:
    transport = MemoryTransport()
    done = asyncio.Event()

    async def reject(delivery: Delivery) -> None:
        await transport.dead_letter(delivery, "orders", "bad input: " + delivery.body.decode())
        done.set()

    await transport.consume("orders", WORK, reject, prefetch=1)
    await transport.publish([work("orders", b"42")])
    await asyncio.wait_for(done.wait(), WAIT)

    assert transport.dead_letters("orders") == [(b"42", "bad input: 42")]
    await transport.close()


async def test_memory_transport_reports_idle_once_handlers_finish() -> None:
    transport = MemoryTransport()
    release = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        await release.wait()
        await delivery.ack()

    await transport.publish([work("orders", b"1")])
    assert transport.is_idle()  # nobody consumes: waiting messages are not work in progress
    await transport.consume("orders", WORK, slow, prefetch=1)
    await asyncio.sleep(0)
    assert not transport.is_idle()

    release.set()
    await asyncio.wait_for(transport.wait_idle(), WAIT)
    assert transport.is_idle()
    await transport.close()
