"""RabbitMQ URL lists (one URL per cluster node), the order nodes are tried in, the quorum
group size a configuration asks for, and reading an existing queue's group size back."""

from __future__ import annotations

import aiormq.exceptions
import pytest
from aio_pika.abc import FieldValue

from flowmesh._errors import ConfigurationError
from flowmesh.transport import split_node_urls
from flowmesh.transport._rabbitmq_declare import (
    GROUP_SIZE,
    ExistingSize,
    existing_group_size,
    with_group_size,
)
from flowmesh.transport._rabbitmq_failover import MAX_BACKOFF, NEXT_NODE_PAUSE, _pause
from flowmesh.transport._rabbitmq_nodes import NodeRing, node_address
from flowmesh.transport.rabbitmq import RabbitMQConfig

# -- parsing ----------------------------------------------------------------------------------


def test_a_single_url_is_one_node_unchanged() -> None:
    assert split_node_urls("amqp://guest:guest@127.0.0.1:5672/") == (
        "amqp://guest:guest@127.0.0.1:5672/",
    )


def test_full_urls_separated_by_commas_are_nodes() -> None:
    assert split_node_urls(
        "amqp://g:g@127.0.0.1:5701, amqp://g:g@127.0.0.1:5702,amqp://g:g@127.0.0.1:5703"
    ) == ("amqp://g:g@127.0.0.1:5701", "amqp://g:g@127.0.0.1:5702", "amqp://g:g@127.0.0.1:5703")


def test_short_entries_inherit_scheme_credentials_vhost_and_query_from_the_first() -> None:
    nodes = split_node_urls("amqps://u:p@rabbit-1:5671/prod?heartbeat=5,rabbit-2:6000,rabbit-3")
    assert nodes == (
        "amqps://u:p@rabbit-1:5671/prod?heartbeat=5",
        "amqps://u:p@rabbit-2:6000/prod?heartbeat=5",
        # no port: the scheme's default, not the first entry's
        "amqps://u:p@rabbit-3/prod?heartbeat=5",
    )


def test_short_entries_may_be_ipv6_literals() -> None:
    assert split_node_urls("amqp://h1,[::1]:5702")[1] == "amqp://[::1]:5702"


def test_an_unencoded_comma_in_a_password_stays_in_its_url() -> None:
    assert split_node_urls("amqp://u:pa,ss@h1/vh") == ("amqp://u:pa,ss@h1/vh",)
    assert split_node_urls("amqp://u:a,b,c@h1/,h2") == ("amqp://u:a,b,c@h1/", "amqp://u:a,b,c@h2/")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("amqp://u:s3cret@h1,", "empty entry"),
        ("amqp://u:s3cret@h1,,h2", "empty entry"),
        ("http://u:s3cret@h1", "must be amqp:// or amqps://"),
        ("amqp://u:s3cret@h1,redis://h2", "must be amqp:// or amqps://"),
        ("amqp://u:s3cret@h1,h2/vh", "expected amqp://... or amqps://... or host\\[:port\\]"),
        ("amqp://u:s3cret@h1,h2:99999", "host\\[:port\\]"),
        ("amqp://u:s3cret@h1:99999", "bad RabbitMQ URL"),
        ("amqp://u:s3cret@/vh", "names no host"),
        ("amqp://u:s3cret@h1,h1:5672", "listed twice"),
        ("amqp://u:s3cret@h1,amqps://u:s3cret@h2", "differs from the first"),
        ("amqp://u:s3cret@h1/a,amqp://u:s3cret@h2/b", "differs from the first"),
        ("amqp://u:s3cret@h1,amqp://v:s3cret@h2", "differs from the first"),
    ],
)
def test_bad_entries_are_configuration_errors_naming_them_without_passwords(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        RabbitMQConfig(url=text)
    assert "s3cret" not in str(caught.value)


def test_the_config_masks_every_node_password_and_reprs_none() -> None:
    config = RabbitMQConfig(url="amqp://u:s3cret@h1:5701,h2:5702")
    assert config.masked_url == "amqp://u:***@h1:5701,amqp://u:***@h2:5702"
    assert "s3cret" not in repr(config)
    assert config.message_user_id == "u"


def test_tls_settings_come_from_the_first_node_and_apply_to_all() -> None:
    config = RabbitMQConfig(url="amqps://u:p@h1/?cafile=/ca.pem,h2")
    assert config.nodes[1] == "amqps://u:p@h2/?cafile=/ca.pem"
    tls = config.effective_tls
    assert tls is not None
    assert tls.ca_file == "/ca.pem"


def test_node_address_is_host_and_port_without_credentials() -> None:
    assert node_address("amqp://u:p@Rabbit-1/vh") == "rabbit-1:5672"
    assert node_address("amqps://u:p@h:5999/") == "h:5999"
    assert node_address("amqp://[::1]:5702") == "[::1]:5702"


# -- quorum group size ----------------------------------------------------------------------


def test_group_size_defaults_to_min_3_nodes_for_a_list_and_the_broker_for_one_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLOWMESH_QUORUM_SIZE", raising=False)
    assert RabbitMQConfig(url="amqp://h1").group_size is None
    assert RabbitMQConfig(url="amqp://h1,h2").group_size == 2
    assert RabbitMQConfig(url="amqp://h1,h2,h3").group_size == 3
    assert RabbitMQConfig(url="amqp://h1,h2,h3,h4,h5").group_size == 3
    assert RabbitMQConfig(url="amqp://h1", quorum_size=5).group_size == 5


def test_group_size_comes_from_the_environment_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWMESH_QUORUM_SIZE", "5")
    assert RabbitMQConfig(url="amqp://h1").group_size == 5
    assert RabbitMQConfig(url="amqp://h1,h2,h3").group_size == 5
    assert RabbitMQConfig(url="amqp://h1", quorum_size=2).group_size == 2


@pytest.mark.parametrize("value", ["0", "-1", "three", "1.5"])
def test_a_bad_group_size_in_the_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLOWMESH_QUORUM_SIZE", value)
    with pytest.raises(ConfigurationError, match="FLOWMESH_QUORUM_SIZE"):
        RabbitMQConfig(url="amqp://h1")


def test_a_bad_configured_group_size_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="quorum queue size"):
        RabbitMQConfig(url="amqp://h1", quorum_size=0)


def test_with_group_size_sets_replaces_or_drops_the_argument() -> None:
    base: dict[str, FieldValue] = {"x-queue-type": "quorum", GROUP_SIZE: 2}
    assert with_group_size(base, 3) == {"x-queue-type": "quorum", GROUP_SIZE: 3}
    assert with_group_size(base, None) == {"x-queue-type": "quorum"}
    assert base[GROUP_SIZE] == 2  # not modified


def _refusal(text: str) -> Exception:
    error = ConfigurationError("cannot declare queue 'fm.a.work'")
    error.__cause__ = aiormq.exceptions.ChannelPreconditionFailed(text)
    return error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # RabbitMQ 3.10's wording, as refused by the cluster in tests/cluster.
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue "
            "'q' in vhost '/': received the value '3' of type 'byte' but current is none",
            ExistingSize(None),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue "
            "'q' in vhost '/': received '3' but current is '2'",
            ExistingSize(2),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue "
            "'q' in vhost '/': received none but current is the value '2' of type 'byte'",
            ExistingSize(2),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in "
            "vhost '/': received '20' but current is '5'",
            None,
        ),
        ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'", None),
    ],
)
def test_existing_group_size_is_read_from_the_refusal_only_when_it_names_it(
    text: str, expected: ExistingSize | None
) -> None:
    assert existing_group_size(_refusal(text)) == expected


# -- the order nodes are tried in -------------------------------------------------------------


def test_the_ring_starts_where_told_and_cycles() -> None:
    ring = NodeRing(("a", "b", "c"), start=1)
    assert ring.current == "b"
    assert [ring.advance(failed=True) for _ in range(4)] == ["c", "a", "b", "c"]


def test_the_ring_counts_failed_rounds_until_a_connection_succeeds() -> None:
    ring = NodeRing(("a", "b", "c"), start=0)
    ring.advance(failed=False)  # a connection lost is not a failed attempt
    for _ in range(3):
        ring.advance(failed=True)
    assert ring.rounds_failed == 1
    ring.connected()
    assert ring.rounds_failed == 0


def test_random_starts_spread_over_every_node() -> None:
    starts = {NodeRing(("a", "b", "c")).current for _ in range(200)}
    assert starts == {"a", "b", "c"}


def test_one_node_is_always_the_one() -> None:
    ring = NodeRing(("a",))
    assert ring.advance(failed=True) == "a"
    assert ring.rounds_failed == 1


def test_the_pause_is_short_within_a_round_then_doubles_up_to_the_cap() -> None:
    assert _pause(0, 1.0) == NEXT_NODE_PAUSE
    assert _pause(0, 0.05) == 0.05
    assert [_pause(r, 1.0) for r in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert _pause(20, 1.0) == MAX_BACKOFF
    assert _pause(3, 60.0) == 60.0  # a reconnect interval above the cap is kept
