"""A RabbitMQ URL list against one real broker: a node that does not answer is skipped when
connecting, wherever the random start puts it."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from flowmesh._errors import TransportError
from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

pytestmark = pytest.mark.real_services


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


async def test_connect_skips_a_dead_node_of_the_list_whatever_the_start(amqp_url: str) -> None:
    live = urlsplit(amqp_url)
    dead = f"127.0.0.1:{_closed_port()}"
    url = f"{amqp_url.rstrip('/')},{dead}" if live.path in ("", "/") else amqp_url
    if url == amqp_url:
        pytest.skip("the test broker URL has a virtual host path; the short form is simpler")
    seen = set()
    for _ in range(6):  # the start is random: both orders come up with near certainty
        async with RabbitMQTransport(RabbitMQConfig(url=url, operation_timeout=5.0)) as transport:
            seen.add(transport.nodes[0])  # connected: the exchanges were declared there
    assert seen == {f"{live.hostname}:{live.port or 5672}"}


async def test_no_node_answering_is_one_transport_error_naming_every_node() -> None:
    url = f"amqp://u:s3cret@127.0.0.1:{_closed_port()},127.0.0.1:{_closed_port()}"
    transport = RabbitMQTransport(RabbitMQConfig(url=url, operation_timeout=2.0))
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    text = str(caught.value)
    assert "s3cret" not in text
    assert text.count("127.0.0.1:") >= 2  # the list it tried, masked
