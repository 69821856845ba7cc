"""RabbitMQ-only behaviour of the transport: recovery, broker refusals and dead-letter headers.

Behaviour shared with the memory transport is in ``tests/contract/test_transport_contract.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import aio_pika
import pytest
import structlog.testing

from flowmesh._errors import (
    ConfigurationError,
    PublishTimeoutError,
    TransportError,
    UnroutableError,
)
from flowmesh._masking import mask_secrets as _mask_url
from flowmesh.transport import (
    APPS_EXCHANGE,
    DELIVERY_LIMIT,
    INBOX_EXCHANGE,
    LEGACY_QUEUE_ARGUMENTS,
    Delivery,
    Outgoing,
    QueueKind,
    queue_name,
    redelivery_policy,
)
from flowmesh.transport._rabbitmq_answers import ANSWERS_TYPE, unpack_answers
from flowmesh.transport._rabbitmq_writes import TurnBufferedWriter
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

pytestmark = pytest.mark.real_services

WORK = QueueKind.WORK
WAIT = 5.0
RECOVERY = 15.0
"""How long a consumer may take to come back after the broker dropped its connection."""

OpenTransport = Callable[..., Awaitable[RabbitMQTransport]]


@pytest.fixture
def app_id() -> str:
    """A fresh app ID (its queues are deleted by the ``open_transport`` fixture)."""
    return f"it-{uuid4().hex[:8]}"


@pytest.fixture
async def open_transport(amqp_url: str, app_id: str) -> AsyncIterator[OpenTransport]:
    """Opens transports with config overrides; closes them and deletes ``app_id``'s queues."""
    opened: list[RabbitMQTransport] = []

    async def open_(**overrides: object) -> RabbitMQTransport:
        settings: dict[str, object] = {
            "url": amqp_url,
            "connection_name": f"flowmesh-it-{uuid4().hex[:8]}",
            "publish_timeout": WAIT,
            "operation_timeout": WAIT,
            **overrides,
        }
        transport = RabbitMQTransport(RabbitMQConfig(**settings))  # type: ignore[arg-type]
        await transport.connect()
        opened.append(transport)
        return transport

    try:
        yield open_
    finally:
        for transport in opened:
            await transport.close()
        async with await aio_pika.connect(amqp_url, timeout=WAIT) as connection:
            channel = await connection.channel()
            for kind in QueueKind:
                await channel.queue_delete(queue_name(app_id, kind))


async def raw_channel(
    amqp_url: str,
) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
    """A plain aio-pika connection and channel, to act on the broker behind the transport."""
    connection = await aio_pika.connect(amqp_url, timeout=WAIT)
    return connection, await connection.channel()


class CuttableLink:
    """A TCP forwarder to the broker that a test can cut and restore, like a network outage."""

    def __init__(self, amqp_url: str) -> None:
        target = urlsplit(amqp_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 5672)
        self._url = target
        self._server: asyncio.Server | None = None
        self._port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The broker URL, through this link."""
        netloc = self._url.netloc.rpartition("@")[0] + f"@127.0.0.1:{self._port}"
        return urlunsplit(self._url._replace(netloc=netloc))

    async def up(self) -> None:
        """Accept connections (on the same port as before, once there was one)."""
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (skips without it locally, fails under CI=true)."""
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is needed to drop connections from the broker side"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def drop_connection(connection_name: str) -> None:
    """Close the broker side of the connection named ``connection_name``, and only that one.

    ``close_all_connections`` would also cut the connections of other tests on this broker.
    """
    listing = rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
    marker = f'{{"connection_name","{connection_name}"}}'
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
    assert len(pids) == 1, f"expected one connection named {connection_name!r}: {listing}"
    rabbitmqctl("close_connection", pids[0], "test: simulated broker-side connection loss")


async def test_consumer_comes_back_after_the_broker_drops_its_connection(
    open_transport: OpenTransport, app_id: str
) -> None:
    name = f"flowmesh-it-{uuid4().hex[:8]}"
    transport = await open_transport(connection_name=name, reconnect_interval=0.2)
    received: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    dropped = asyncio.Event()
    settle_errors: list[BaseException] = []

    async def handler(delivery: Delivery) -> None:
        await received.put((delivery.body, delivery.delivery_count))
        if delivery.delivery_count == 1 and delivery.body == b"in flight":
            await dropped.wait()  # still working when the connection goes
        try:
            await delivery.ack()
        except BaseException as exc:  # the point: nothing may escape
            settle_errors.append(exc)
            raise

    await transport.consume(app_id, WORK, handler, prefetch=1)
    await transport.publish([Outgoing(app_id, WORK, b"in flight")])
    assert await asyncio.wait_for(received.get(), WAIT) == (b"in flight", 1)

    await asyncio.to_thread(drop_connection, f"{name} consume")
    dropped.set()
    # The unacked delivery comes again on the restored consumer; the ack of the first
    # attempt (on the dead channel) was logged and swallowed.
    assert await asyncio.wait_for(received.get(), RECOVERY) == (b"in flight", 2)
    await transport.publish([Outgoing(app_id, WORK, b"after")])
    assert await asyncio.wait_for(received.get(), RECOVERY) == (b"after", 1)
    assert settle_errors == []


async def test_bursts_pass_aiormqs_frame_queues_in_one_turn_also_after_a_reconnect(
    open_transport: OpenTransport, app_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiormq's frame queue holds 10 frames; past that, each publish used to take a loop
    turn and a socket write of its own."""
    writes: list[int] = []
    flush = TurnBufferedWriter.flush

    def counting_flush(self: TurnBufferedWriter) -> None:
        if self._pending:
            writes.append(len(self._pending))
        flush(self)

    monkeypatch.setattr(TurnBufferedWriter, "flush", counting_flush)
    name = f"flowmesh-it-{uuid4().hex[:8]}"
    transport = await open_transport(connection_name=name, reconnect_interval=0.2)
    await transport.declare_app(app_id)

    async def burst() -> int:
        writes.clear()
        await asyncio.gather(
            *(transport.publish([Outgoing(app_id, WORK, b"x")]) for _ in range(300))
        )
        return len(writes)

    assert await burst() <= 10
    await transport.consume(app_id, WORK, lambda delivery: delivery.ack(), prefetch=50)
    assert _bounded_frame_queues(transport) == []

    await asyncio.to_thread(drop_connection, f"{name} publish")
    await asyncio.to_thread(drop_connection, f"{name} consume")
    deadline = time.monotonic() + RECOVERY
    while True:  # publishes fail until the connection is back
        try:
            await transport.publish([Outgoing(app_id, WORK, b"probe")])
            break
        except TransportError:
            assert time.monotonic() < deadline, "the connection did not come back"
            await asyncio.sleep(0.2)
    assert await burst() <= 10
    assert _bounded_frame_queues(transport) == []


def _bounded_frame_queues(transport: RabbitMQTransport) -> list[str]:
    """aiormq's frame queues of the transport's connections that still have a bound."""
    link = transport._link  # noqa: SLF001 - inspects aiormq's queues behind the transport
    assert link is not None
    bounded = []
    for connection in (link.publish, link.consume):
        amqp = connection.transport.connection  # type: ignore[union-attr]
        if amqp.write_queue.maxsize:
            bounded.append(f"write queue of {connection}")
        bounded += [
            f"frames of channel {number}"
            for number, channel in amqp.channels.items()
            if channel is not None and channel.frames.maxsize
        ]
    return bounded


async def test_publish_during_an_outage_times_out_and_resumes_after_it(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    link = CuttableLink(amqp_url)
    await link.up()
    transport = await open_transport(url=link.url, publish_timeout=1.0, reconnect_interval=0.2)
    await transport.declare_app(app_id)

    await link.cut()
    await asyncio.sleep(0.3)  # the client notices the dropped sockets
    with pytest.raises(PublishTimeoutError):
        await transport.publish([Outgoing(app_id, WORK, b"during")])

    await link.up()
    async with asyncio.timeout(RECOVERY):
        while True:
            try:
                await transport.publish([Outgoing(app_id, WORK, b"after")])
                break
            except PublishTimeoutError:
                pass  # still reconnecting
    assert (await transport.queue_stats(app_id)).work_messages >= 1
    await link.cut()
    await asyncio.wait_for(transport.close(), 2 * WAIT)  # bounded, even while reconnecting


async def test_publish_to_a_deleted_queue_this_user_may_not_declare_is_unroutable(
    open_transport: OpenTransport, restricted_url: _Restricted, app_id: str
) -> None:
    """Where the user may not declare an app's queues (least privilege), a queue deleted
    behind the transport's back stays unroutable: the message fails, not silently lost."""
    admin = await open_transport(url=restricted_url.admin)
    await admin.declare_app(app_id)
    transport = await open_transport(url=restricted_url(configure=f"^(?!fm\\.{app_id}\\.).*"))
    await transport.declare_app(app_id)  # refused: relies on the admin's queues
    connection, channel = await raw_channel(restricted_url.admin)
    async with connection:
        await channel.queue_delete(queue_name(app_id, WORK))

    with pytest.raises(UnroutableError, match=re.escape(queue_name(app_id, WORK))):
        await transport.publish([Outgoing(app_id, WORK, b"lost?", message_id="m-1")])
    # The confirming channel survives a return: other queues still get messages.
    await transport.publish([Outgoing(app_id, QueueKind.REPLY, b"fine")])
    assert (await transport.queue_stats(app_id)).reply_messages == 1


async def test_a_deleted_queue_is_declared_again_and_the_message_delivered(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    """A queue deleted after this transport declared it (an operator, a broker reset) used
    to make every publish to it unroutable until the process restarted: the transport now
    declares the app's queues again and retries the returned message once."""
    transport = await open_transport()
    await transport.declare_app(app_id)
    connection, channel = await raw_channel(amqp_url)
    async with connection:
        await channel.queue_delete(queue_name(app_id, WORK))

    # Same message ID on both: the return must still fail (and retry) the right publish.
    outcomes = await transport.publish_each(
        [
            Outgoing(app_id, WORK, b"returned", message_id="same"),
            Outgoing(app_id, QueueKind.REPLY, b"kept", message_id="same"),
        ]
    )

    assert outcomes == [None, None]
    stats = await transport.queue_stats(app_id)
    assert (stats.work_messages, stats.reply_messages) == (1, 1)


class _Restricted:
    """``url(...)`` of a user with limited rights in a private vhost; ``admin`` may do all."""

    def __init__(self, amqp_url: str) -> None:
        suffix = uuid4().hex[:8]
        self.vhost, self.user, self._password = f"fmit-{suffix}", f"fmit-{suffix}", uuid4().hex
        parts = urlsplit(amqp_url)
        self._host = parts.netloc.rpartition("@")[2]
        self._admin = parts.username or "guest"
        self.admin = urlunsplit((parts.scheme, parts.netloc, "/" + self.vhost, "", ""))

    def __call__(self, *, forbidden_topics: str = "(?!)", configure: str = ".*") -> str:
        """The user may configure queues matching ``configure`` and publish to every topic
        on ``fm.apps`` but those matching ``forbidden_topics``."""
        rabbitmqctl("set_permissions", "-p", self.vhost, self.user, configure, ".*", ".*")
        topics = f"^(?!{forbidden_topics}).*"
        rabbitmqctl("set_topic_permissions", "-p", self.vhost, self.user, "fm.apps", topics, ".*")
        return f"amqp://{self.user}:{self._password}@{self._host}/{self.vhost}"


@pytest.fixture
def restricted_url(amqp_url: str) -> Iterator[_Restricted]:
    """A private vhost with a restricted user (see :class:`_Restricted`)."""
    restricted = _Restricted(amqp_url)
    rabbitmqctl("add_vhost", restricted.vhost)
    # The helper's own credentials, used only to set it up (hence private).
    admin, password = restricted._admin, restricted._password  # noqa: SLF001
    rabbitmqctl("set_permissions", "-p", restricted.vhost, admin, ".*", ".*", ".*")
    rabbitmqctl("add_user", restricted.user, password)
    try:
        yield restricted
    finally:
        rabbitmqctl("delete_user", restricted.user)
        rabbitmqctl("delete_vhost", restricted.vhost)


async def test_a_refused_target_fails_only_its_own_messages_in_a_batch(
    open_transport: OpenTransport, restricted_url: _Restricted
) -> None:
    """ACCESS_REFUSED closes the publishing channel and fails every publish in flight on it.
    publish_each retries those one by one, so of 60 messages around two refused ones only
    the refused ones fail, each with the broker's reason; the refused target then goes
    alone, and the channel keeps working."""
    transport = await open_transport(url=restricted_url(forbidden_topics=r"forbidden\."))
    for app in ("allowed", "forbidden"):
        await transport.declare_app(app)
    batch = [
        Outgoing("forbidden", WORK, b"no"),
        *(Outgoing("allowed", WORK, b"%d" % i) for i in range(30)),
        Outgoing("forbidden", WORK, b"no"),
        *(Outgoing("allowed", QueueKind.REPLY, b"%d" % i) for i in range(30)),
    ]

    outcomes = await transport.publish_each(batch)
    again = await transport.publish_each(batch)

    for results in (outcomes, again):
        failed = [i for i, outcome in enumerate(results) if outcome is not None]
        assert failed == [0, 31], results
        assert "ACCESS_REFUSED" in str(results[0]) and "fm.forbidden.work" in str(results[0])
    stats = await transport.queue_stats("allowed")
    assert stats.work_messages >= 60 and stats.reply_messages >= 60  # at least once
    assert await transport.publish_each([Outgoing("allowed", WORK, b"after")]) == [None]


async def test_publish_without_a_timely_confirm_raises_publish_timeout(
    open_transport: OpenTransport, app_id: str
) -> None:
    # A confirm needs a network round trip, which cannot complete within a microsecond.
    transport = await open_transport(publish_timeout=1e-6)
    await transport.declare_app(app_id)  # bounded by operation_timeout, not publish_timeout

    with pytest.raises(PublishTimeoutError, match="no publisher confirm"):
        await transport.publish([Outgoing(app_id, WORK, b"slow")])


async def test_queue_declared_with_other_arguments_is_a_configuration_error(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    connection, channel = await raw_channel(amqp_url)
    async with connection:
        await channel.declare_queue(queue_name(app_id, WORK), durable=True)  # classic
    transport = await open_transport()

    with pytest.raises(ConfigurationError, match=re.escape(queue_name(app_id, WORK))):
        await transport.declare_app(app_id)
    other = f"it-{uuid4().hex[:8]}"
    try:  # the failed declaration left the transport usable
        await transport.declare_app(other)
    finally:
        connection, channel = await raw_channel(amqp_url)
        async with connection:
            for kind in QueueKind:
                await channel.queue_delete(queue_name(other, kind))


async def requeue_until_gone(
    transport: RabbitMQTransport, app_id: str, body: bytes, *, limit: int
) -> list[int]:
    """Publish ``body`` and requeue every delivery of it; the delivery counts seen once the
    broker stops delivering it (at the queue's delivery limit)."""
    counts: list[int] = []
    reached = asyncio.Event()

    async def requeue(delivery: Delivery) -> None:
        counts.append(delivery.delivery_count)
        if len(counts) >= limit:
            reached.set()
        await delivery.requeue()

    subscription = await transport.consume(app_id, WORK, requeue, prefetch=1)
    await transport.publish([Outgoing(app_id, WORK, body)])
    await asyncio.wait_for(reached.wait(), 3 * WAIT)
    await asyncio.sleep(0.5)  # no delivery past the limit
    await subscription.cancel()
    return counts


async def test_new_queues_dead_letter_a_message_after_the_delivery_limit(
    open_transport: OpenTransport, app_id: str
) -> None:
    """Version-2 queues: after 20 redeliveries the broker moves the message to the app's dead
    queue (RabbitMQ 4 would drop it without the declared target)."""
    transport = await open_transport()

    counts = await requeue_until_gone(transport, app_id, b"doomed", limit=DELIVERY_LIMIT + 1)

    assert counts == list(range(1, DELIVERY_LIMIT + 2))
    deadline = time.monotonic() + WAIT
    while (await transport.queue_stats(app_id)).dead_messages != 1:
        assert time.monotonic() < deadline, "the message did not reach the dead queue"
        await asyncio.sleep(0.05)


async def test_queues_of_an_older_flowmesh_keep_working_and_take_the_policy(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    """An existing deployment: queues declared with the version-1 arguments, a message
    waiting. The new transport uses them as they are (a warning names the policy), and the
    policy gives them the same delivery limit and dead-letter target."""
    connection, channel = await raw_channel(amqp_url)
    async with connection:
        for kind in QueueKind:
            queue = await channel.declare_queue(
                queue_name(app_id, kind), durable=True, arguments=dict(LEGACY_QUEUE_ARGUMENTS)
            )
            await channel.declare_exchange(APPS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            await queue.bind(APPS_EXCHANGE, f"{app_id}.{kind.value}")
        await channel.default_exchange.publish(
            aio_pika.Message(b"waiting", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name(app_id, WORK),
        )
    transport = await open_transport()
    with structlog.testing.capture_logs() as logs:
        await transport.declare_app(app_id)
    warnings = [e for e in logs if e["event"] == "transport.queue_without_delivery_limit"]
    assert {e["queue"] for e in warnings} == {
        queue_name(app_id, kind) for kind in (WORK, QueueKind.REPLY, QueueKind.QUARANTINE)
    }
    assert "set_policy" in warnings[0]["policy"]
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await received.put(delivery.body)
        await delivery.ack()

    subscription = await transport.consume(app_id, WORK, take, prefetch=1)
    await transport.publish([Outgoing(app_id, WORK, b"new")])
    assert [await asyncio.wait_for(received.get(), WAIT) for _ in range(2)] == [b"waiting", b"new"]
    await subscription.cancel()

    policy = redelivery_policy(app_id)
    rabbitmqctl(*policy.rabbitmqctl("/"))
    try:
        counts = await requeue_until_gone(transport, app_id, b"doomed", limit=DELIVERY_LIMIT + 1)
        assert counts == list(range(1, DELIVERY_LIMIT + 2))
        deadline = time.monotonic() + WAIT
        while (await transport.queue_stats(app_id)).dead_messages != 1:
            assert time.monotonic() < deadline, "the policy did not dead-letter the message"
            await asyncio.sleep(0.05)
    finally:
        rabbitmqctl("clear_policy", "-p", "/", policy.name)


async def test_dead_letter_records_the_reason_and_origin_in_headers(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    transport = await open_transport()
    done = asyncio.Event()

    async def reject(delivery: Delivery) -> None:
        await transport.dead_letter(delivery, app_id, "undecodable: " + "x" * 5000)
        done.set()

    await transport.consume(app_id, WORK, reject, prefetch=1)
    await transport.publish([Outgoing(app_id, WORK, b"\xc1", message_id="m-1")])
    await asyncio.wait_for(done.wait(), WAIT)

    connection, channel = await raw_channel(amqp_url)
    async with connection:
        queue = await channel.get_queue(queue_name(app_id, QueueKind.DEAD), ensure=False)
        message = await queue.get(timeout=WAIT, fail=True)
        assert message is not None
        await message.ack()
    headers = message.headers
    reason = headers["x-flowmesh-reason"]
    assert isinstance(reason, str)
    assert reason.startswith("undecodable: xxx") and len(reason) <= 1000
    assert headers["x-flowmesh-original-queue"] == queue_name(app_id, WORK)
    assert headers["x-flowmesh-delivery-count"] == 1
    assert (message.body, message.message_id) == (b"\xc1", "m-1")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_published_messages_are_persistent_msgpack(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    transport = await open_transport()
    await transport.publish([Outgoing(app_id, WORK, b"\x90")])

    connection, channel = await raw_channel(amqp_url)
    async with connection:
        queue = await channel.get_queue(queue_name(app_id, WORK), ensure=False)
        message = await queue.get(timeout=WAIT, fail=True)
        assert message is not None
        await message.ack()
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/x-msgpack"


async def test_answer_by_is_read_only_from_a_positive_integer_header(
    open_transport: OpenTransport, amqp_url: str, app_id: str
) -> None:
    transport = await open_transport()
    received: asyncio.Queue[Delivery] = asyncio.Queue()

    async def keep(delivery: Delivery) -> None:
        await received.put(delivery)
        await delivery.ack()

    await transport.consume(app_id, WORK, keep, prefetch=10)
    sent: list[object] = [1_700_000_000_250, "soon", True, -5, 1.5, None]
    connection, channel = await raw_channel(amqp_url)
    async with connection:
        for value in sent:
            headers = {"x-flowmesh-answer-by": value} if value is not None else None
            await channel.default_exchange.publish(
                aio_pika.Message(b"\x90", headers=headers),  # type: ignore[arg-type]
                routing_key=queue_name(app_id, WORK),
            )
        got = [(await asyncio.wait_for(received.get(), WAIT)).answer_by for _ in sent]

    assert got == [1_700_000_000.25, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.slow
async def test_message_over_the_brokers_size_limit_is_refused(
    open_transport: OpenTransport, app_id: str
) -> None:
    # Client-side check off, so the broker's max_message_size (128 MiB by default) decides.
    transport = await open_transport(max_message_bytes=None, publish_timeout=30.0)
    await transport.declare_app(app_id)

    with pytest.raises(TransportError, match="max size"):
        await transport.publish([Outgoing(app_id, WORK, bytes(128 * 1024 * 1024 + 1))])
    # The broker closed the confirming channel; the next publish waits for it to reopen.
    await transport.publish([Outgoing(app_id, WORK, b"small")])


async def test_connection_failure_is_a_transport_error_without_the_password() -> None:
    transport = RabbitMQTransport(
        RabbitMQConfig(url="amqp://flowmesh:s3cret@127.0.0.1:1/", operation_timeout=2.0)
    )

    with pytest.raises(TransportError) as caught:
        await transport.connect()

    assert "s3cret" not in str(caught.value)
    assert "flowmesh:***@127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in repr(RabbitMQConfig(url="amqp://u:s3cret@h/"))


def test_mask_url_hides_only_the_password() -> None:
    assert _mask_url("amqps://user:p%40ss@host:5671/vh?heartbeat=5") == (
        "amqps://user:***@host:5671/vh?heartbeat=5"
    )
    assert _mask_url("amqp://host/") == "amqp://host/"
    assert _mask_url("amqp://user@host/") == "amqp://user@host/"


async def test_transport_is_unusable_before_connect() -> None:
    transport = RabbitMQTransport(RabbitMQConfig(url="amqp://guest:guest@127.0.0.1/"))

    with pytest.raises(TransportError, match="connect"):
        await transport.publish([Outgoing("orders", WORK, b"x")])
    await transport.close()


async def test_answers_of_one_turn_leave_as_one_framed_message(
    open_transport: OpenTransport, amqp_url: str
) -> None:
    transport = await open_transport()
    address = f"fm.inbox.{uuid4().hex}"  # a queue we read ourselves, to count the messages
    connection, channel = await raw_channel(amqp_url)
    async with connection:
        queue = await channel.declare_queue(address, exclusive=True, auto_delete=True)
        await queue.bind(INBOX_EXCHANGE, address)

        await asyncio.gather(*(transport.send_reply(address, f"c-{i}", b"ok") for i in range(50)))
        await asyncio.sleep(0)  # the next answer comes a loop turn later
        await transport.send_reply(address, "c-alone", b"alone")

        # send_reply returns once the answer is queued; the messages follow shortly.
        received: list[aio_pika.abc.AbstractIncomingMessage] = []
        async with asyncio.timeout(WAIT):
            while len(received) < 2:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.01)
                else:
                    received.append(message)
        await asyncio.sleep(0.2)
        assert await queue.get(fail=False) is None  # two messages, no more
    framed, alone = sorted(received, key=lambda m: m.type != ANSWERS_TYPE)
    assert framed.type == ANSWERS_TYPE and framed.correlation_id is None
    assert unpack_answers(framed.body, max_bytes=len(framed.body)) == [
        (f"c-{i}", b"ok") for i in range(50)
    ]
    # A lone answer keeps the plain format: its body, correlation_id in the properties.
    assert (alone.type, alone.correlation_id, alone.body) == (None, "c-alone", b"alone")


async def test_a_malformed_answers_frame_is_dropped_and_the_inbox_keeps_working(
    open_transport: OpenTransport, amqp_url: str
) -> None:
    transport = await open_transport()
    inbox = await transport.open_inbox()
    connection, channel = await raw_channel(amqp_url)
    with structlog.testing.capture_logs() as logs:
        async with connection:
            exchange = await channel.get_exchange(INBOX_EXCHANGE, ensure=False)
            for body in (b"\xc1", b"\x91\x01", b"\x92"):  # invalid, [1], truncated
                await exchange.publish(
                    aio_pika.Message(body, type=ANSWERS_TYPE), routing_key=inbox.address
                )
            await transport.send_reply(inbox.address, "c-1", b"still served")

        assert await inbox.receive("c-1", WAIT) == b"still served"
    await inbox.close()
    dropped = [e for e in logs if e["event"] == "transport.answers_dropped"]
    assert [e["inbox"] for e in dropped] == [inbox.address] * 3
