"""How one app's keys are spread over shards (hash tags), and the layout key that records it.

An instance's keys share one hash tag, so its commit stays one atomic function call; the
app-wide indexes (instance and status indexes, outbox, timers, held messages, the sequence)
exist once per shard, under the same tag as the instances they index. With one shard the tag
is ``{<app>}``, the layout flowmesh always had; with N > 1 shard ``k`` uses ``{<app>#<k>}``. App
IDs are ``a-z 0-9 -`` only, so no app's tag contains ``#`` and the ACL patterns
``~<prefix>:{<app>}:*`` and ``~<prefix>:{<app>#*}:*`` match the keys of exactly one app.

An instance's shard is ``crc32(instance_id) mod N``: stable across processes, machines and
Python versions (unlike ``hash()``), so every replica finds the same keys.

The layout key ``<prefix>:{<app>}:layout`` holds ``v2 shards=N``. A store without it was
written with one shard (the layout before shards existed, identical to ``v2 shards=1``).
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

from flowmesh._errors import ConfigurationError
from flowmesh.store._redis_keys import RedisKeys

LAYOUT_VERSION = "v2"
"""Version of the key layout; ``v2`` added shards (``v2 shards=1`` is the original layout)."""

STANDALONE_SHARDS = 1
"""Default shards on a standalone Redis: one server has one core either way, and one shard
keeps every app-wide read one command (and the layout flowmesh always had)."""

CLUSTER_SHARDS = 16
"""Default shards on a Redis Cluster: enough to spread an app over the masters of any
cluster up to a dozen or so (16 slots over 3 masters leave none empty, see
tests/cluster), few enough that a scan over all shards (timers, outbox, listings) stays one
pipelined round trip of 16 small commands."""

MAX_SHARDS = 1024
"""Bound on ``shards``: every app-wide scan sends one command per shard."""


def shard_of(instance_id: str, shards: int) -> int:
    """The shard of ``instance_id`` among ``shards`` (stable: CRC-32 of its UTF-8 bytes)."""
    if shards == 1:
        return 0
    return zlib.crc32(instance_id.encode()) % shards


def shard_tag(app_id: str, shard: int, shards: int) -> str:
    """The hash tag (between the braces) of ``shard``: ``<app>`` alone when unsharded."""
    return app_id if shards == 1 else f"{app_id}#{shard}"


def layout_value(shards: int) -> str:
    """What the layout key holds for ``shards``."""
    return f"{LAYOUT_VERSION} shards={shards}"


def parse_layout(value: str) -> tuple[str, int | None]:
    """``(version, shards)`` from a layout value; shards None when unreadable."""
    version, _, rest = value.partition(" ")
    name, _, count = rest.partition("=")
    if name != "shards" or not count.isdigit():
        return version, None
    return version, int(count)


def check_shards(shards: int) -> int:
    """``shards`` if within 1..MAX_SHARDS, else :class:`ConfigurationError`."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ConfigurationError(f"Redis shards must be 1..{MAX_SHARDS}, got {shards}")
    return shards


def check_layout(found: str | None, expected_shards: int, where: str) -> None:
    """Refuse a store whose layout key says something other than ``expected_shards``.

    ``found`` None: no layout key (an empty store, or one written before layouts were
    recorded, which used one shard).
    """
    if found is None:
        return
    version, shards = parse_layout(found)
    if version != LAYOUT_VERSION or shards is None:
        raise ConfigurationError(
            f"{where} was written with key layout {found!r}, which this flowmesh version "
            f"does not know (it writes {layout_value(expected_shards)!r}); upgrade flowmesh"
        )
    if shards != expected_shards:
        raise ConfigurationError(
            f"{where} was written with {shards} shard(s) (layout {found!r}), but this worker "
            f"is configured for {expected_shards} ({layout_value(expected_shards)!r}); set "
            f"FLOWMESH_REDIS_SHARDS={shards} (or --redis-shards {shards}), or leave it unset "
            "to use what the store records"
        )


class ShardedKeys:
    """The keys of one app over its shards; ``layout`` is the app's layout key."""

    def __init__(self, prefix: str, app_id: str, shards: int) -> None:
        self.count = check_shards(shards)
        self.shards = tuple(RedisKeys(prefix, shard_tag(app_id, k, shards)) for k in range(shards))
        self.layout = RedisKeys(prefix, app_id).base + "layout"
        self.unsharded_index = RedisKeys(prefix, app_id).index
        """The instance index of the one-shard layout: present if data was written so."""

    def of(self, instance_id: str) -> RedisKeys:
        """The keys of the shard holding ``instance_id``."""
        return self.shards[shard_of(instance_id, self.count)]

    def group(self, instance_ids: Iterable[str]) -> dict[int, list[str]]:
        """``instance_ids`` by shard, each group in the given order."""
        groups: dict[int, list[str]] = {}
        for instance_id in instance_ids:
            groups.setdefault(shard_of(instance_id, self.count), []).append(instance_id)
        return groups


T = TypeVar("T")


def merge_scored(
    runs: Sequence[Sequence[tuple[bytes, float]]], *, newest_first: bool = False
) -> list[tuple[int, bytes, float]]:
    """``(shard, member, score)`` of every shard's run (each sorted by score), merged by
    score; ties go to the lower shard, so the order is the same on every call."""
    sign = -1 if newest_first else 1
    tagged = (
        [(sign * score, shard, member) for member, score in run] for shard, run in enumerate(runs)
    )
    return [(shard, member, sign * key) for key, shard, member in heapq.merge(*tagged)]


def rotate(items: Sequence[T], start: int) -> list[T]:
    """``items`` starting at ``start`` (mod their number) and wrapping around."""
    if not items:
        return []
    start %= len(items)
    return [*items[start:], *items[:start]]


__all__ = [
    "CLUSTER_SHARDS",
    "LAYOUT_VERSION",
    "MAX_SHARDS",
    "STANDALONE_SHARDS",
    "ShardedKeys",
    "check_layout",
    "check_shards",
    "layout_value",
    "merge_scored",
    "parse_layout",
    "rotate",
    "shard_of",
    "shard_tag",
]
