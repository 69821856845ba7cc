"""The broker refuses messages larger than flowmesh's codec limit, on every queue kind.

A private RabbitMQ node runs with the broker settings flowmesh ships
(``deploy/rabbitmq/flowmesh.conf``, which compose mounts): ``max_message_size`` = 4 MiB, the
codec's ``max_message_bytes``. RabbitMQ's default (128 MiB) let anyone with write access park
messages 32 times larger than any flowmesh party decodes in the queues, and a replica with a
reply prefetch of 256 buffer 32 GiB of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pytest

from flowmesh._errors import TransportError
from flowmesh.transport import Delivery, Outgoing, QueueKind, queue_name
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport
from tests.harness.processes import REPO
from tests.harness.servers import PrivateRabbitMQ

pytestmark = [pytest.mark.real_services, pytest.mark.timeout(180)]

LIMIT = 4 * 1024 * 1024
APP = "big"


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """A private node with flowmesh's broker settings appended to its rabbitmq.conf."""
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("oversized") / "rabbitmq")
    shipped = (REPO / "deploy/rabbitmq/flowmesh.conf").read_text()
    with (node.directory / "rabbitmq.conf").open("a") as conf:
        conf.write(shipped)
    with node:
        yield node


async def _raw_publish(url: str, kind: QueueKind, body: bytes) -> BaseException | None:
    """Publish ``body`` as any AMQP client could (no flowmesh checks); the error, if any."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("fm.apps", ensure=False)
        await exchange.publish(aio_pika.Message(body), routing_key=f"{APP}.{kind.value}")
    except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError) as exc:
        return exc
    finally:
        await connection.close()
    return None


async def _counts(transport: RabbitMQTransport) -> dict[str, int]:
    stats = await transport.queue_stats(APP)
    return {
        "work": stats.work_messages,
        "reply": stats.reply_messages,
        "dead": stats.dead_messages,
        "quarantine": stats.quarantine_messages,
    }


async def test_an_oversized_message_is_refused_on_every_queue_and_loses_nothing_else(
    rabbit: PrivateRabbitMQ,
) -> None:
    """On each of the work, reply, quarantine and dead queues: a message one byte over the
    limit from a raw client is refused by the broker (PRECONDITION_FAILED naming the sizes),
    from flowmesh's transport before it is sent; the legitimate messages around it are all
    there, and a message of exactly the limit is accepted and can be dead-lettered."""
    transport = RabbitMQTransport(RabbitMQConfig(url=rabbit.url))
    await transport.connect()
    try:
        await transport.declare_app(APP)
        for kind in QueueKind:
            await transport.publish([Outgoing(APP, kind, b"before", message_id=f"b-{kind}")])

        refusals = await asyncio.gather(
            *(_raw_publish(rabbit.url, kind, bytes(LIMIT + 1)) for kind in QueueKind)
        )
        for kind, refusal in zip(QueueKind, refusals, strict=True):
            print(f"{kind.value}: {refusal!r}")
            assert refusal is not None, f"the broker took an oversized message on {kind.value}"
            assert "larger than configured max size" in str(refusal)

        for kind in QueueKind:
            with pytest.raises(TransportError, match=f"exceeds the maximum of {LIMIT}"):
                await transport.publish([Outgoing(APP, kind, bytes(LIMIT + 1))])
            await transport.publish([Outgoing(APP, kind, b"after", message_id=f"a-{kind}")])
        await transport.publish([Outgoing(APP, QueueKind.WORK, bytes(LIMIT), message_id="max")])
        assert await _counts(transport) == {"work": 3, "reply": 2, "dead": 2, "quarantine": 2}

        # The largest message the broker takes also fits the dead queue with its reason.
        dead_lettered, release = asyncio.Event(), asyncio.Event()

        async def handle(delivery: Delivery) -> None:
            if len(delivery.body) == LIMIT:
                await transport.dead_letter(delivery, APP, "test: at the size limit")
                dead_lettered.set()
            else:
                await release.wait()
                await delivery.requeue()

        subscription = await transport.consume(APP, QueueKind.WORK, handle, prefetch=3)
        await asyncio.wait_for(dead_lettered.wait(), 10)
        release.set()
        await subscription.cancel()
        # The two other work messages were requeued by handlers still running when the
        # subscription was cancelled (or returned by the broker with the channel): the
        # queue counts them once that has happened, not necessarily at once.
        expected = {"work": 2, "reply": 2, "dead": 3, "quarantine": 2}
        counts = await _counts(transport)
        for _ in range(100):
            if counts == expected:
                break
            await asyncio.sleep(0.1)
            counts = await _counts(transport)
        assert counts == expected
        assert queue_name(APP, QueueKind.DEAD) == "fm.big.dead"
    finally:
        await transport.close()
