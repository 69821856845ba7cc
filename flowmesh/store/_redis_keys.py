"""Key layout and small encodings of the Redis store (documented in docs/redis-keys.md).

Every key of an app lives under ``<prefix>:{<tag>}:`` - the braces are a Redis Cluster hash
tag, so all keys of one tag hash to one slot and a function may touch any of them. The tag is
the app ID, or ``<app>#<shard>`` when the app's keys are sharded (``_redis_shards.py``).
"""

from __future__ import annotations

# msgpack ships no type information; "unused-ignore" keeps this valid if stubs appear.
import msgpack  # type: ignore[import-untyped,unused-ignore]
from msgpack.exceptions import UnpackException  # type: ignore[import-untyped,unused-ignore]

from flowmesh._errors import DecodeError
from flowmesh.model import WorkflowStatus
from flowmesh.transport import Outgoing, QueueKind

REDIS_COMMANDS = (
    # sent by the store
    "ping",
    "fcall",
    "set",
    "get",
    "multi",
    "exec",
    "discard",
    "hget",
    "hgetall",
    "lrange",
    "smembers",
    "del",
    "zrange",
    "zrevrange",
    "zcount",
    "info|persistence",
    "info|memory",
    "wait",  # the replica acknowledgement of commits (_redis_replicas.py)
    # run by its functions (ACLs apply to the commands inside functions too)
    "exists",
    "hdel",
    "hexists",
    "hmget",
    "hset",
    "hvals",
    "incr",
    "llen",
    "ltrim",
    "rpush",
    "sadd",
    "scard",
    "spop",
    "time",
    "zadd",
    "zrangebyscore",
    "zrem",
    "zscore",
)
"""Every command the store needs (besides ``AUTH``), for a least-privilege ACL user.

``fcall`` runs flowmesh's function library, which ``flowmesh security apply`` loads: no
``eval``, ``evalsha``, ``script`` or ``function``, so an app's user runs no Lua of its own (a
busy script would stall every app sharing the server). The ``info`` sections stand in for
``config get`` (refused to such a user) in ``RedisStore.check_safety``. Not
listed: ``client|setinfo`` (Redis 7.2+), whose refusal redis-py's handshake ignores.
``tests/security/test_permissions.py`` runs the store contract suite under a user limited to
exactly these."""

# Instance IDs never contain "|" (see check_instance_id), so it safely separates the fields of
# a timer member.
_SEP = "|"


class RedisKeys:
    """Names of the Redis keys of one hash tag: an app, or one shard of an app."""

    def __init__(self, prefix: str, tag: str) -> None:
        self.base = f"{prefix}:{{{tag}}}:"
        self.index = self.base + "idx"
        self.outbox_index = self.base + "outbox"
        self.timers = self.base + "timers"
        self.seq = self.base + "seq"
        self.held_index = self.base + "early"
        # All status indexes, passed to scripts that may move an instance between them.
        self.status_indexes = tuple(f"{self.index}:{status.value}" for status in WorkflowStatus)

    def instance(self, instance_id: str) -> str:
        """Hash with the version ``v``, encoded state ``s`` and ``status``."""
        return f"{self.base}i:{instance_id}"

    def history(self, instance_id: str) -> str:
        """List of encoded history events."""
        return f"{self.base}h:{instance_id}"

    def outbox(self, instance_id: str) -> str:
        """Hash entry_id -> encoded pending message."""
        return f"{self.base}o:{instance_id}"

    def timer_members(self, instance_id: str) -> str:
        """Hash seq -> the instance's member in the app-wide timers zset."""
        return f"{self.base}t:{instance_id}"

    def waiters(self, instance_id: str) -> str:
        """Set of reply addresses waiting for the instance's result."""
        return f"{self.base}w:{instance_id}"

    def held(self, instance_id: str) -> str:
        """List of messages held until the instance exists (see ``WorkflowStore.hold``)."""
        return f"{self.base}e:{instance_id}"

    def waiting_start(self, instance_id: str) -> str:
        """String ``<workflow name>\n<note>``: why a start of the instance waits (expires)."""
        return f"{self.base}n:{instance_id}"

    def publish_problem(self, instance_id: str) -> str:
        """String: why some outbox messages of the instance are not published yet (expires)."""
        return f"{self.base}pp:{instance_id}"

    def status_index(self, status: WorkflowStatus) -> str:
        """Zset of the instances currently in ``status``."""
        return f"{self.index}:{status.value}"

    def per_instance(self, instance_id: str) -> list[str]:
        """The five per-instance keys, in the order the Lua scripts expect them."""
        return [
            self.instance(instance_id),
            self.history(instance_id),
            self.outbox(instance_id),
            self.timer_members(instance_id),
            self.waiters(instance_id),
        ]


def timer_member(instance_id: str, run_id: str, seq: int, fire_ms: int) -> str:
    """Member of the timers zset; carries the run and the original fire time, which the
    score does not."""
    return f"{instance_id}{_SEP}{run_id}{_SEP}{seq}{_SEP}{fire_ms}"


def parse_timer_member(member: bytes) -> tuple[str, str, int, int]:
    """``(instance_id, run_id, seq, fire_ms)`` from a timers zset member."""
    try:
        parts = member.decode().split(_SEP)
        if len(parts) == 3:  # written before timers carried their run: "<id>|<seq>|<fire_ms>"
            parts.insert(1, "")
        instance_id, run_id, seq, fire_ms = parts
        return instance_id, run_id, int(seq), int(fire_ms)
    except ValueError as exc:
        raise DecodeError(f"malformed timer member {member!r} in the Redis store") from exc


def encode_held(held_ms: int, user_id: str, message_id: str, body: bytes) -> bytes:
    """A held message as ``b"<arrival ms>:"`` + a msgpack map (the Lua scripts read the
    arrival time from the prefix)."""
    packed: bytes = msgpack.packb(
        {"user_id": user_id, "message_id": message_id, "body": body}, use_bin_type=True
    )
    return f"{held_ms}:".encode() + packed


def decode_held(data: bytes) -> tuple[int, str, str, bytes]:
    """``(arrival ms, user_id, message_id, body)`` from :func:`encode_held` bytes."""
    try:
        prefix, packed = data.split(b":", 1)
        fields = msgpack.unpackb(packed, raw=False)
        return int(prefix), fields["user_id"], fields["message_id"], fields["body"]
    except (ValueError, KeyError, TypeError, UnpackException) as exc:
        raise DecodeError(f"malformed held message in the Redis store: {exc}") from exc


def encode_outgoing(message: Outgoing, order: tuple[int, int]) -> bytes:
    """A pending outbox message as a msgpack map.

    ``order`` is (commit version, position in the commit): hash fields have no order, and the
    outbox must be published in commit order.
    """
    packed: bytes = msgpack.packb(
        {
            "app_id": message.app_id,
            "kind": message.kind.value,
            "body": message.body,
            "message_id": message.message_id,
            "reply_to": message.reply_to,
            "correlation_id": message.correlation_id,
            "order": order,
        },
        use_bin_type=True,
    )
    return packed


def decode_outgoing(data: bytes) -> tuple[tuple[int, int], Outgoing]:
    """Inverse of :func:`encode_outgoing`."""
    try:
        fields = msgpack.unpackb(data, raw=False)
        version, position = fields["order"]
        message = Outgoing(
            app_id=fields["app_id"],
            kind=QueueKind(fields["kind"]),
            body=fields["body"],
            message_id=fields["message_id"],
            reply_to=fields["reply_to"],
            correlation_id=fields["correlation_id"],
        )
    except (ValueError, KeyError, TypeError, UnpackException) as exc:
        raise DecodeError(f"malformed outbox entry in the Redis store: {exc}") from exc
    return (int(version), int(position)), message
