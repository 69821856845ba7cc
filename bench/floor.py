"""The floor: exactly the I/O a durable step needs on flowmesh's design, and nothing else.

Processes (each a separate OS process, like flowmesh's workers)::

    driver ──start──▶ [floor.a.work] ─▶ A ──task──▶ [floor.b.work] ─▶ B ──reply──┐
                                        ▲  (and [floor.c.work] ─▶ C ──reply──┐)  │
                                        └──────────── [floor.a.reply] ◀──────────┴──┘

* Every queue is a durable quorum queue; every message (~200 bytes of msgpack) is persistent
  and published with a publisher confirm; every delivery is acked explicitly.
* A "step" in A: take the deliveries that arrived for one instance (a per-instance mailbox, as
  flowmesh batches; one step at a time per instance, the start being its first), make ONE
  Redis round trip (EVALSHA of a tiny script: RPUSH the step's entries to the instance's list,
  and INCR a done counter when the instance finished), publish the next task(s) with
  confirms, then ack the deliveries.
* Publish before ack, not ack before publish: a quorum queue writes a settlement to its Raft log
  like a publish, and an ack sent just before the next publish delays that publish's confirm
  (measured here: 4.0 ms per sequential step with ack-then-publish, 3.2 ms with
  publish-then-ack). flowmesh also publishes first (its outbox is committed before either).
* B and C: consume a task, publish a confirmed persistent reply to A's reply queue, ack.

Prefetch: A's start queue :data:`FLOOR_START_PREFETCH`, B/C's task queues
:data:`FLOOR_TASK_PREFETCH` (the floor's own best, not flowmesh's default), A's reply queue
256 (``WorkerOptions.reply_prefetch``, as flowmesh's hosts). State between steps lives in A's
memory (flowmesh's cached execution plays that role). No replay, no history encoding, no
outbox bookkeeping, no logging.

Run roles with ``python -m bench.floor host a`` / ``python -m bench.floor responder b``; the
benchmark drives them with :class:`FloorDriver`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiormq
import msgpack  # type: ignore[import-untyped,unused-ignore]
import redis.asyncio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aiormq import spec
from yarl import URL

from bench import loops
from flowmesh.transport._rabbitmq_writes import (
    BufferingRobustConnection,
    TurnBufferedTransportFactory,
)

_QUEUE_ARGS: dict[str, Any] = {"x-queue-type": "quorum"}
FLOOR_START_PREFETCH = 16
"""Prefetch of floor A's start queue (starts it steps at once).

The floor runs at its own best settings, not flowmesh's, so that no ratio is flattered. In
W1 runs of 2026-12-04 the floor reached 461-689 workflows/s with 16 and 372-527 with 100
(8, 32 and 128 were no better than 16)."""
FLOOR_TASK_PREFETCH = 100
"""Prefetch of floor B's and C's task queues. In the same runs the floor's W3 took
0.68-1.06 s with 100 and 1.32-1.48 s with 16; W1 did not change beyond the noise."""
MESSAGE_BYTES = 200
"""Approximate size of every floor message (flowmesh's task/result messages are similar)."""

# One round trip per step: append the step's entries; count the instance done if it finished.
_APPEND = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
if ARGV[1] == '1' then redis.call('INCR', KEYS[2]) end
return 1
"""


_PERSISTENT = spec.Basic.Properties(delivery_mode=2)
_CONNECT: dict[str, Any] = {
    "timeout": 30.0,
    "connection_name": "flowmesh-bench-floor",
    "reconnect_interval": 1.0,
    "ssl_context": None,
}


async def connect_buffered(
    url: str,
    *,
    timeout: float,
    connection_name: str,
    reconnect_interval: float,
    ssl_context: ssl.SSLContext | None,
) -> AbstractRobustConnection:
    """A robust connection to one node whose frames leave in one write per loop turn: the
    socket handling of flowmesh's transport (minus its failover between cluster nodes, which
    the floor, on one broker, does not need)."""
    connection = BufferingRobustConnection(
        URL(url),
        ssl_context=ssl_context,
        client_properties={"connection_name": connection_name},
        reconnect_interval=reconnect_interval,
        transport_factory=TurnBufferedTransportFactory(),
    )
    await connection.connect(timeout=timeout)
    return connection


def queue(name: str, kind: str = "work") -> str:
    """Queue of floor process ``name`` ("a", "b", "c")."""
    return f"floor.{name}.{kind}"


def pack(value: dict[str, Any]) -> bytes:
    """msgpack ``value`` padded to about :data:`MESSAGE_BYTES`."""
    body: bytes = msgpack.packb(value)
    pad = MESSAGE_BYTES - len(body) - 8
    if pad > 0:
        body = msgpack.packb({**value, "pad": b"x" * pad})
    return body


def history_key(prefix: str, instance_id: str) -> str:
    """The list A appends an instance's step entries to."""
    return f"{prefix}:floor:h:{instance_id}"


def done_key(prefix: str) -> str:
    """Counter of finished instances."""
    return f"{prefix}:floor:done"


class _Link:
    """A publishing connection with a confirming channel, and a consuming connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.publisher: AbstractRobustConnection | None = None
        self.consumer: AbstractRobustConnection | None = None
        self.confirms: AbstractChannel | None = None

    async def open(self) -> None:
        # The same socket handling as flowmesh's transport (one write per loop turn), so the
        # floor measures the I/O a step needs, not how a client library schedules its writes.
        self.publisher = await connect_buffered(self._url, **_CONNECT)
        self.consumer = await connect_buffered(self._url, **_CONNECT)
        self.confirms = await self.publisher.channel(publisher_confirms=True)
        for name in ("a", "b", "c"):
            await self.confirms.declare_queue(queue(name), durable=True, arguments=_QUEUE_ARGS)
        await self.confirms.declare_queue(queue("a", "reply"), durable=True, arguments=_QUEUE_ARGS)

    async def publish(self, routing_key: str, body: bytes) -> None:
        """Persistent, confirmed (aio-pika waits for the broker's ack of this message)."""
        assert self.confirms is not None
        async with asyncio.timeout(30):
            channel = cast("aiormq.Channel", await self.confirms.get_underlay_channel())
            # wait=False, as flowmesh publishes: the confirm is awaited, but concurrent
            # publishes do not queue behind aiormq's channel lock one socket write at a time.
            await channel.basic_publish(
                body, routing_key=routing_key, properties=_PERSISTENT, wait=False
            )

    async def consume(self, name: str, prefetch: int, callback: Any) -> None:
        assert self.consumer is not None
        channel = await self.consumer.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await channel.declare_queue(name, durable=True, arguments=_QUEUE_ARGS)
        await declared.consume(callback)  # aiormq runs each delivery in a task of its own

    async def close(self) -> None:
        for connection in (self.consumer, self.publisher):
            if connection is not None:
                await connection.close()


@dataclass
class _Instance:
    kind: str  # "chain3" | "seq" | "fan"
    n: int
    got: int = 0
    mailbox: list[tuple[AbstractIncomingMessage, dict[str, Any]]] = field(default_factory=list)
    draining: bool = False


class Host:
    """Process A: advances instances one Redis round trip per step."""

    def __init__(self, link: _Link, store: redis.asyncio.Redis, prefix: str) -> None:
        self._link = link
        self._redis = store
        self._append = store.register_script(_APPEND)
        self._prefix = prefix
        self._instances: dict[str, _Instance] = {}

    async def _record(self, instance_id: str, done: bool, entries: Sequence[bytes]) -> None:
        await self._append(
            keys=[history_key(self._prefix, instance_id), done_key(self._prefix)],
            args=[1 if done else 0, *entries],
        )

    async def on_start(self, message: AbstractIncomingMessage) -> None:
        start = msgpack.unpackb(message.body)
        instance_id, kind, n = start["id"], start["k"], start["n"]
        # The start is the instance's first step: replies arriving meanwhile wait in the
        # mailbox (one writer per instance, as in flowmesh), then go in one batch.
        instance = self._instances[instance_id] = _Instance(kind, n, draining=True)
        try:
            await self._record(instance_id, False, [msgpack.packb([time.time(), 0, None])])
            if kind == "fan":
                tasks = [pack({"id": instance_id, "s": s, "v": s}) for s in range(1, n + 1)]
            else:
                tasks = [pack({"id": instance_id, "s": 1, "v": start.get("v", 0)})]
            await asyncio.gather(*(self._link.publish(queue("b"), body) for body in tasks))
            await message.ack()
            await self._drain(instance_id, instance)
        finally:
            instance.draining = False

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        reply = msgpack.unpackb(message.body)
        instance = self._instances.get(reply["id"])
        if instance is None:
            await message.ack()  # a duplicate after the instance finished
            return
        instance.mailbox.append((message, reply))
        if not instance.draining:
            instance.draining = True
            try:
                await self._drain(reply["id"], instance)
            finally:
                instance.draining = False

    async def _drain(self, instance_id: str, instance: _Instance) -> None:
        while instance.mailbox:
            batch, instance.mailbox = instance.mailbox, []
            instance.got += len(batch)
            target = 2 if instance.kind == "chain3" else instance.n
            done = instance.got >= target
            now = time.time()
            await self._record(
                instance_id, done, [msgpack.packb([now, r["s"], r["o"]]) for _, r in batch]
            )
            last = batch[-1][1]
            if done:
                del self._instances[instance_id]
            elif instance.kind == "chain3":
                await self._link.publish(
                    queue("c"), pack({"id": instance_id, "s": 2, "v": last["o"]})
                )
            elif instance.kind == "seq":
                await self._link.publish(
                    queue("b"), pack({"id": instance_id, "s": instance.got + 1, "v": last["o"]})
                )
            for delivery, _ in batch:
                await delivery.ack()
            if done:
                return


class Responder:
    """Processes B and C: reply to each task (confirmed), then ack it."""

    def __init__(self, link: _Link, name: str) -> None:
        self._link = link
        self._name = name

    async def on_task(self, message: AbstractIncomingMessage) -> None:
        task = msgpack.unpackb(message.body)
        value = task["v"] + 1 if self._name == "b" else task["v"] * 2
        await self._link.publish(
            queue("a", "reply"), pack({"id": task["id"], "s": task["s"], "o": value})
        )
        await message.ack()


async def _serve(role: str, name: str, work_prefetch: int, reply_prefetch: int) -> None:
    link = _Link(os.environ["FLOWMESH_AMQP_URL"])
    await link.open()
    store = redis.asyncio.Redis.from_url(os.environ["FLOWMESH_REDIS_URL"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if role == "host":
            host = Host(link, store, os.environ["FLOWMESH_REDIS_PREFIX"])
            await link.consume(queue(name), work_prefetch, host.on_start)
            await link.consume(queue(name, "reply"), reply_prefetch, host.on_reply)
        else:
            responder = Responder(link, name)
            await link.consume(queue(name), work_prefetch, responder.on_task)
        print("ready", flush=True)
        await stop.wait()
    finally:
        await link.close()
        await store.aclose()


# -- the driver (runs in the benchmark process) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class FloorRun:
    """Per instance: when the driver published its start and when A recorded its last step."""

    starts: dict[str, float]
    ends: dict[str, float]
    step_times: dict[str, list[float]]


class FloorDriver:
    """Publishes starts to A (like ``Client.start_workflow`` does) and reads A's lists."""

    def __init__(self, amqp_url: str, redis_url: str, prefix: str) -> None:
        self._link = _Link(amqp_url)
        self._redis = redis.asyncio.Redis.from_url(redis_url)
        self._prefix = prefix
        self._runs = 0

    async def open(self) -> None:
        """Connect and declare the floor's queues."""
        await self._link.open()

    async def close(self) -> None:
        """Disconnect."""
        await self._link.close()
        await self._redis.aclose()

    async def run(
        self, kind: str, count: int, n: int, timeout: float, *, rate: float | None = None
    ) -> FloorRun:
        """Start ``count`` instances of ``kind`` (at once, or ``rate`` per second) and wait
        until all are done."""
        self._runs += 1
        started = asyncio.get_running_loop().time()
        ids = [f"r{self._runs}-{kind}-{i}" for i in range(count)]
        before = int(await self._redis.get(done_key(self._prefix)) or 0)
        starts: dict[str, float] = {}

        async def start(i: int, instance_id: str) -> None:
            await loops.pace(started, i, rate)
            starts[instance_id] = time.time()
            await self._link.publish(
                queue("a"), pack({"id": instance_id, "k": kind, "n": n, "v": i})
            )

        await asyncio.gather(*(start(i, x) for i, x in enumerate(ids)))
        deadline = time.monotonic() + timeout
        while int(await self._redis.get(done_key(self._prefix)) or 0) < before + count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"floor {kind}: not done within {timeout}s")
            await asyncio.sleep(loops.COMPLETION_POLL_S)
        ends: dict[str, float] = {}
        step_times: dict[str, list[float]] = {}
        for chunk in range(0, len(ids), 500):
            pipe = self._redis.pipeline(transaction=False)
            for instance_id in ids[chunk : chunk + 500]:
                pipe.lrange(history_key(self._prefix, instance_id), 0, -1)
            replies = await pipe.execute()
            for offset, entries in enumerate(replies):
                instance_id = ids[chunk + offset]
                decoded = [msgpack.unpackb(e) for e in entries]
                _check(kind, n, instance_id, chunk + offset, decoded)
                step_times[instance_id] = [e[0] for e in decoded]
                ends[instance_id] = decoded[-1][0]
        return FloorRun(starts, ends, step_times)


def _check(kind: str, n: int, instance_id: str, value: int, entries: list[list[Any]]) -> None:
    """Every floor instance must have done all its steps with the right results."""
    if kind == "chain3":
        ok = len(entries) == 3 and entries[-1][2] == (value + 1) * 2
    elif kind == "seq":
        ok = len(entries) == n + 1 and entries[-1][2] == n
    else:
        ok = len(entries) == n + 1 and sorted(e[2] for e in entries[1:]) == list(range(2, n + 2))
    if not ok:
        raise AssertionError(f"floor {kind} instance {instance_id} is wrong: {entries[-3:]}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.floor {host,responder} NAME``."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("role", choices=["host", "responder"])
    parser.add_argument("name")
    parser.add_argument(
        "--work-prefetch",
        type=int,
        default=None,
        help=f"default {FLOOR_START_PREFETCH} for the host, {FLOOR_TASK_PREFETCH} for responders",
    )
    parser.add_argument("--reply-prefetch", type=int, default=256)
    args = parser.parse_args(argv)
    default = FLOOR_START_PREFETCH if args.role == "host" else FLOOR_TASK_PREFETCH
    work_prefetch = default if args.work_prefetch is None else args.work_prefetch
    loops.run(_serve(args.role, args.name, work_prefetch, args.reply_prefetch))


if __name__ == "__main__":
    main()
