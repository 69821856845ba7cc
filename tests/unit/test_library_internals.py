"""The library internals flowmesh's patches rely on are still there and behave as assumed.

Each patch is kept for a measured gain (see the module named in each message); the tested
versions are pinned in pyproject.toml. When an upgrade fails here, the message names the
patch to revisit: re-measure its gain, then adapt it or drop it.
"""

from __future__ import annotations

import asyncio
import inspect

import aio_pika
import aiormq
import aiormq.channel
import aiormq.connection
import pytest
import redis.asyncio
import redis.asyncio.connection
from aio_pika.abc import ConnectionParameter
from aio_pika.robust_connection import RobustConnection

from flowmesh.store.redis import RedisStore  # noqa: F401 - the patch's user imports cleanly
from flowmesh.transport.rabbitmq import RabbitMQTransport  # noqa: F401 - same

LINEAR = "linear packing (flowmesh/store/_redis_packing.py)"
FCALL_SLOT = "FCALL routing without COMMAND GETKEYS (flowmesh/store/_redis_cluster.py)"
WAIT_ROUTING = "WAIT after a slot's commits (flowmesh/store/_redis_replicas.py SlotRouted)"
CLUSTER_LINEAR = "linear packing on cluster nodes (flowmesh/store/_redis_cluster.py)"
WRITER = "turn-buffered writer (flowmesh/transport/_rabbitmq_writes.py)"
QUEUES = "unbounded frame queues (flowmesh/transport/_rabbitmq_writes.py unbound_frame_queues)"


def _fail(patch: str, what: str) -> None:
    pytest.fail(f"{patch}: {what} changed in the installed library; revisit the patch")


# -- redis-py: pack_command is overridden on the connection class ------------------------------


def test_linear_packing_redis_py_connections_pack_through_pack_command() -> None:
    base = redis.asyncio.connection.AbstractConnection
    pack = getattr(base, "pack_command", None)
    if pack is None or list(inspect.signature(pack).parameters) != ["self", "args"]:
        _fail(LINEAR, "AbstractConnection.pack_command(self, *args)")
    if "self.pack_command(" not in inspect.getsource(base.send_command):
        _fail(LINEAR, "send_command no longer packing through self.pack_command")


def test_linear_packing_connections_carry_encoder_and_buffer_cutoff() -> None:
    connection = redis.asyncio.connection.Connection()
    encoder = getattr(connection, "encoder", None)
    if not all(hasattr(encoder, n) for n in ("encoding", "encoding_errors", "encode")):
        _fail(LINEAR, "Connection.encoder (encoding, encoding_errors, encode)")
    if not isinstance(getattr(connection, "_buffer_cutoff", None), int):
        _fail(LINEAR, "Connection._buffer_cutoff")


def test_linear_packing_pools_open_connections_of_their_connection_class() -> None:
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0")
    pool = client.connection_pool
    if not isinstance(getattr(pool, "connection_class", None), type):
        _fail(LINEAR, "ConnectionPool.connection_class")
    if "self.connection_class(" not in inspect.getsource(type(pool)):
        _fail(LINEAR, "ConnectionPool creating connections from self.connection_class")


# -- redis-py cluster: FCALL slot from its arguments; nodes open their connection_class -------


def test_fcall_routing_cluster_clients_and_pipelines_resolve_slots_in_determine_slot() -> None:
    from redis.asyncio import cluster

    determine = getattr(cluster.RedisCluster, "_determine_slot", None)
    if determine is None or not inspect.iscoroutinefunction(determine):
        _fail(FCALL_SLOT, "RedisCluster._determine_slot (async)")
        return
    if list(inspect.signature(determine).parameters) != ["self", "command", "args"]:
        _fail(FCALL_SLOT, "RedisCluster._determine_slot(self, command, *args)")
    determine_nodes = cluster.RedisCluster._determine_nodes  # noqa: SLF001 - the internal checked
    if "self._determine_slot(" not in inspect.getsource(determine_nodes):
        _fail(FCALL_SLOT, "RedisCluster._determine_nodes calling _determine_slot")
    if "_determine_nodes(" not in inspect.getsource(cluster.PipelineStrategy):
        _fail(FCALL_SLOT, "cluster pipelines routing through client._determine_nodes")


def test_wait_routing_pipelines_group_each_nodes_commands_in_order_on_one_connection() -> None:
    """WAIT counts the writes of its own connection: it must follow the commits of its
    master on the same connection. A cluster pipeline sends each node's commands, in queue
    order, on one connection; the node of a command comes from _determine_nodes(command name,
    ...), where a SlotRouted name is resolved."""
    from redis.asyncio import cluster

    execute = inspect.getsource(cluster.PipelineStrategy._execute)  # noqa: SLF001
    if "client._determine_nodes(" not in execute or "*cmd.args" not in execute:
        _fail(WAIT_ROUTING, "pipelines routing by client._determine_nodes(*cmd.args)")
    if "execute_pipeline(" not in execute:
        _fail(WAIT_ROUTING, "pipelines sending each node's commands with execute_pipeline")
    pipeline = inspect.getsource(cluster.ClusterNode.execute_pipeline)
    if pipeline.count("acquire_connection(") != 1 or "pack_commands(" not in pipeline:
        _fail(WAIT_ROUTING, "ClusterNode.execute_pipeline: one connection, commands in order")


async def test_wait_routing_slot_routed_names_go_to_their_slots_master() -> None:
    from redis.asyncio.cluster import ClusterNode

    from flowmesh.store._redis_cluster import FlowmeshCluster
    from flowmesh.store._redis_replicas import SlotRouted

    client = FlowmeshCluster(host="127.0.0.1", port=1)
    master = ClusterNode("127.0.0.1", 7102)
    client.nodes_manager.slots_cache = {4242: [master]}
    nodes = await client._determine_nodes(SlotRouted("WAIT", 4242), 1, 1000)  # noqa: SLF001
    assert nodes == [master]
    assert SlotRouted("WAIT", 4242) == "WAIT" and str(SlotRouted("WAIT", 1)).encode() == b"WAIT"


MOVED_ONLY = "MOVED-only slot moves (flowmesh/store/_redis_cluster.py _NodesManager)"


def test_moved_only_transactions_report_errors_through_update_moved_exception() -> None:
    """The bug worked around: remove _NodesManager once redis-py stops recording connection
    errors as moves (then this check fails: re-test a failover without it)."""
    from redis.asyncio import cluster

    reinit = inspect.getsource(cluster.TransactionStrategy._reinitialize_on_error)  # noqa: SLF001
    if "update_moved_exception(error)" not in reinit or "CONNECTION_ERRORS" not in reinit:
        _fail(MOVED_ONLY, "TransactionStrategy recording connection errors as moves")
    if "e.host" not in inspect.getsource(cluster.NodesManager._update_moved_slots):  # noqa: SLF001
        _fail(MOVED_ONLY, "NodesManager._update_moved_slots reading the error's host")


def test_moved_only_connection_errors_leave_the_slot_map_usable() -> None:
    from redis.asyncio.cluster import ClusterNode
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import MovedError

    from flowmesh.store._redis_cluster import FlowmeshCluster

    client = FlowmeshCluster(host="127.0.0.1", port=1)
    manager = client.nodes_manager
    master = ClusterNode("127.0.0.1", 7101)
    manager.slots_cache = {7: [master]}
    manager.update_moved_exception(RedisConnectionError("gone"))
    assert manager.get_node_from_slot(7) is master  # redis-py 6.4: AttributeError, forever
    manager.update_moved_exception(MovedError("7 127.0.0.1:7105"))
    assert manager.get_node_from_slot(7).port == 7105


def test_cluster_linear_packing_nodes_are_built_from_the_clients_connection_kwargs() -> None:
    from redis.asyncio import cluster

    client = cluster.RedisCluster(host="127.0.0.1", port=1)
    kwargs = client.get_connection_kwargs()
    if kwargs is not client.nodes_manager.connection_kwargs:
        _fail(CLUSTER_LINEAR, "NodesManager sharing the client's connection_kwargs")
    if "connection_class" not in kwargs:
        _fail(CLUSTER_LINEAR, "connection_kwargs['connection_class']")
    if "**self.connection_kwargs" not in inspect.getsource(cluster.NodesManager.initialize):
        _fail(CLUSTER_LINEAR, "NodesManager.initialize creating nodes from connection_kwargs")
    if "self.connection_class(" not in inspect.getsource(cluster.ClusterNode):
        _fail(CLUSTER_LINEAR, "ClusterNode opening connections of self.connection_class")


# -- aiormq / aio-pika: a transport factory and a connection class that passes it through ------


def test_turn_buffered_writer_aiormq_transport_factory_is_an_extension_point() -> None:
    factory: type = getattr(aiormq.connection, "TransportFactory", type(None))
    if not inspect.iscoroutinefunction(getattr(factory, "create", None)):
        _fail(WRITER, "aiormq.connection.TransportFactory.create")
    for name in ("TCPTransportFactory", "TLSTransportFactory"):
        if not issubclass(getattr(aiormq.connection, name, object), factory):
            _fail(WRITER, f"aiormq.connection.{name}")
    if "transport_factory" not in inspect.signature(aiormq.Connection.__init__).parameters:
        _fail(WRITER, "aiormq.Connection(transport_factory=...)")


def test_turn_buffered_writer_aio_pika_passes_listed_parameters_and_calls_on_connected() -> None:
    parameters = getattr(RobustConnection, "PARAMETERS", None)
    if not isinstance(parameters, tuple) or not all(
        isinstance(p, ConnectionParameter) for p in parameters
    ):
        _fail(WRITER, "aio_pika RobustConnection.PARAMETERS")
    if not inspect.iscoroutinefunction(getattr(RobustConnection, "_on_connected", None)):
        _fail(WRITER, "aio_pika RobustConnection._on_connected")
    assert aio_pika.RobustConnection is RobustConnection


# -- aiormq's bounded frame queues, lifted by setting asyncio.Queue._maxsize -------------------


def test_unbounded_frame_queues_aiormq_keeps_frames_in_asyncio_queues() -> None:
    annotations = inspect.get_annotations(aiormq.Connection)
    if annotations.get("write_queue") not in (asyncio.Queue, "asyncio.Queue"):
        _fail(QUEUES, "aiormq.Connection.write_queue (an asyncio.Queue)")
    if "self.frames" not in inspect.getsource(aiormq.channel.Channel.__init__):
        _fail(QUEUES, "aiormq Channel.frames")
    if not inspect.iscoroutinefunction(getattr(aiormq.Connection, "channel", None)):
        _fail(QUEUES, "aiormq.Connection.channel (wrapped per connection)")


async def test_unbounded_frame_queues_asyncio_queue_maxsize_lifts_the_bound() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(1)
    if getattr(queue, "_maxsize", None) != 1:
        _fail(QUEUES, "asyncio.Queue._maxsize")
    queue._maxsize = 0  # type: ignore[attr-defined]  # noqa: SLF001 - the internal under test
    assert not queue.full()
    queue.put_nowait(2)  # no QueueFull: the bound is gone
    assert queue.qsize() == 2


# -- aio-pika's reconnect loop, which FailoverConnection points at the next node --------------

FAILOVER = "node failover (flowmesh/transport/_rabbitmq_failover.py)"


def test_failover_aio_pika_reads_the_url_per_attempt_and_reports_every_failure() -> None:
    connect = inspect.getsource(aio_pika.connection.Connection.connect)
    if "self.url" not in connect:
        _fail(FAILOVER, "Connection.connect reading self.url for every attempt")
    underlay = inspect.getsource(aio_pika.abc.UnderlayConnection.connect)
    if "close_callback(closing)" not in underlay:
        _fail(FAILOVER, "UnderlayConnection.connect calling the close callback on failure")
    loop = inspect.getsource(RobustConnection)
    if "await asyncio.sleep(self.reconnect_interval)" not in loop:
        _fail(FAILOVER, "RobustConnection's loop sleeping self.reconnect_interval per attempt")
    if not inspect.iscoroutinefunction(getattr(RobustConnection, "_on_connection_close", None)):
        _fail(FAILOVER, "RobustConnection._on_connection_close")
