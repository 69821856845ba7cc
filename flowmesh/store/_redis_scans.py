"""The app-wide reads of the Redis store, over every shard of the app.

With one shard (the default on a standalone Redis) each is the command it always was. With N
shards each sends one command per shard in one pipeline (on a cluster redis-py sends each
master its share concurrently) and merges the answers:

* ``list_outbox`` and ``list_instances`` merge by score. Sharded commits score instances with
  the server's clock in microseconds (``commit.lua``), so the orders hold across shards up to
  the clock difference between masters; within an instance, entries keep commit order
  whatever the clocks. ``skip`` counts instances of the merged order; a relay moving through
  the outbox window by window continues from where its previous listing stopped (per-shard
  positions are remembered), so each window costs ``limit`` members per shard, not ``skip``.
* ``claim_due_timers`` counts the due timers of every shard (``ZCOUNT``, one round trip; an
  idle app costs nothing more), shares ``limit`` among the shards that have some, starting at
  a shard that rotates with every call (no shard starves another), and claims them in one
  pipeline of ``claim_timers`` calls; it counts again if a race with another replica left it
  short of ``limit`` while timers are still due.
* ``next_timer_at`` and ``expired_held`` take the earliest over the shards.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flowmesh.model import WorkflowState, WorkflowStatus
from flowmesh.store._base import (
    HeldMessage,
    OutboxEntry,
    TimerEntry,
    _epoch_ms,
    _from_epoch_ms,
    _lease_ms,
)
from flowmesh.store._redis_batch import Call
from flowmesh.store._redis_connection import AnyPipeline, RedisConnection
from flowmesh.store._redis_keys import decode_held, decode_outgoing, parse_timer_member
from flowmesh.store._redis_shards import merge_scored, rotate


class ShardScans(RedisConnection):
    """Listing the outbox, instances and held messages, and claiming timers, of all shards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox_cursor: tuple[int, tuple[int, ...]] | None = None
        """``(skip, per-shard positions)`` where the last outbox listing stopped."""
        self._timer_turn = 0
        """The shard the next timer claim starts at (rotates)."""

    def _decode_state(self, blob: bytes, instance_id: str) -> WorkflowState:
        raise NotImplementedError  # RedisStore's

    async def _pipelined(self, fill: Any) -> list[Any]:
        """One pipeline (no transaction) filled by ``fill(pipe)``; its replies."""
        pipe: AnyPipeline
        async with self._redis.pipeline(transaction=False) as pipe:
            fill(pipe)
            return list(await pipe.execute())

    # -- outbox ---------------------------------------------------------------------------------

    async def list_outbox(self, limit: int = 100, *, skip: int = 0) -> list[OutboxEntry]:
        """Pending outbox entries: instances by oldest pending commit (from the ``skip``-th
        on), each in commit order."""
        if limit <= 0:
            return []
        skip = max(skip, 0)
        shards = self._layout.shards
        with self._translating("list outbox"):
            window, base = await self._outbox_window(limit, skip)
            pendings = await self._pipelined(
                lambda pipe: [pipe.hgetall(shards[k].outbox(i)) for k, i in window]
            )
        entries: list[OutboxEntry] = []
        for (_, instance_id), pending in zip(window, pendings, strict=True):
            decoded = sorted(
                (*decode_outgoing(blob), entry_id.decode()) for entry_id, blob in pending.items()
            )
            entries += (OutboxEntry(instance_id, entry_id, msg) for _, msg, entry_id in decoded)
        entries = entries[:limit]
        if base is not None:
            # The next window starts at the first instance not listed here; a relay whose
            # next call skips exactly these continues from the per-shard positions.
            shown = len(dict.fromkeys(e.instance_id for e in entries))
            positions = list(base)
            for k, _ in window[:shown]:
                positions[k] += 1
            self._outbox_cursor = (skip + shown, tuple(positions))
        return entries

    async def _outbox_window(
        self, limit: int, skip: int
    ) -> tuple[list[tuple[int, str]], tuple[int, ...] | None]:
        """``(shard, instance)`` of the ``skip``-th to ``skip + limit``-th outbox instance,
        and (sharded) how many members of each shard come before them."""
        shards = self._layout.shards
        if len(shards) == 1:
            # Every indexed instance has at least one entry, so `limit` instances suffice.
            raw = await self._redis.zrange(shards[0].outbox_index, skip, skip + limit - 1)
            return [(0, member.decode()) for member in raw], None
        cursor = self._outbox_cursor
        if cursor is not None and cursor[0] == skip:
            starts, drop = cursor[1], 0
        else:
            starts, drop = (0,) * len(shards), skip
        runs = await self._pipelined(
            lambda pipe: [
                pipe.zrange(keys.outbox_index, start, start + drop + limit - 1, withscores=True)
                for keys, start in zip(shards, starts, strict=True)
            ]
        )
        merged = merge_scored(runs)
        base = list(starts)
        for k, _, _ in merged[:drop]:
            base[k] += 1
        window = [(k, member.decode()) for k, member, _ in merged[drop : drop + limit]]
        return window, tuple(base)

    # -- timers ---------------------------------------------------------------------------------

    async def claim_due_timers(
        self, now: datetime, lease: timedelta, limit: int = 100
    ) -> list[TimerEntry]:
        """Timers due at ``now`` (at most ``limit``), each postponed to ``now + lease``."""
        now_ms = _epoch_ms(now)
        until_ms = now_ms + _lease_ms(lease)
        if limit <= 0:
            return []
        shards = self._layout.shards
        with self._translating("claim due timers"):
            if len(shards) == 1:
                members = await self._run(
                    "claim_timers", [shards[0].timers], [now_ms, until_ms, limit]
                )
                return [_timer(member) for member in members]
            claimed: list[TimerEntry] = []
            while len(claimed) < limit:
                counts = await self._pipelined(
                    lambda pipe: [pipe.zcount(keys.timers, "-inf", now_ms) for keys in shards]
                )
                shares = _shares(counts, limit - len(claimed), self._timer_turn)
                self._timer_turn += 1
                if not shares:
                    break
                calls: list[Call] = [
                    ([shards[k].timers], [now_ms, until_ms, share]) for k, share in shares
                ]
                got = 0
                for result in await self._run_pipelined("claim_timers", calls):
                    if isinstance(result, Exception):
                        raise result
                    claimed += (_timer(member) for member in result)
                    got += len(result)
                if got == sum(share for _, share in shares):
                    break  # no race: every shard had what it counted
        return sorted(claimed, key=lambda t: (t.fire_at, t.instance_id, t.seq))

    async def next_timer_at(self) -> datetime | None:
        """When the earliest timer can next be claimed (its fire time, or its lease's end)."""
        shards = self._layout.shards
        with self._translating("read next timer"):
            firsts = await self._pipelined(
                lambda pipe: [pipe.zrange(keys.timers, 0, 0, withscores=True) for keys in shards]
            )
        scores = [int(first[0][1]) for first in firsts if first]
        return _from_epoch_ms(min(scores)) if scores else None

    # -- held messages, instances -------------------------------------------------------------

    async def expired_held(
        self, before: datetime, limit: int = 100
    ) -> list[tuple[str, list[HeldMessage]]]:
        """Instances whose oldest held message arrived before ``before``, oldest first."""
        if limit <= 0:
            return []
        shards = self._layout.shards
        bound = f"({_epoch_ms(before)}"
        with self._translating("list expired held messages"):
            runs = await self._pipelined(
                lambda pipe: [
                    pipe.zrangebyscore(
                        keys.held_index, "-inf", bound, start=0, num=limit, withscores=True
                    )
                    for keys in shards
                ]
            )
            found = [(k, member.decode()) for k, member, _ in merge_scored(runs)[:limit]]
            lists = await self._pipelined(
                lambda pipe: [pipe.lrange(shards[k].held(i), 0, -1) for k, i in found]
            )
        return [
            (instance_id, [held_message(entry) for entry in entries])
            for (_, instance_id), entries in zip(found, lists, strict=True)
            if entries
        ]

    async def list_instances(
        self, status: WorkflowStatus | None = None, limit: int = 100
    ) -> list[WorkflowState]:
        """States of stored instances, most recently created first, optionally by status."""
        if limit <= 0:
            return []
        shards = self._layout.shards
        with self._translating("list instances"):
            runs = await self._pipelined(
                lambda pipe: [
                    pipe.zrevrange(
                        keys.index if status is None else keys.status_index(status),
                        0,
                        limit - 1,
                        withscores=True,
                    )
                    for keys in shards
                ]
            )
            found = [
                (k, member.decode())
                for k, member, _ in merge_scored(runs, newest_first=True)[:limit]
            ]
            blobs = await self._pipelined(
                lambda pipe: [pipe.hget(shards[k].instance(i), "s") for k, i in found]
            )
        # An instance purged between the two round trips simply drops out.
        return [
            self._decode_state(blob, instance_id)
            for (_, instance_id), blob in zip(found, blobs, strict=True)
            if blob is not None
        ]


def _timer(member: bytes) -> TimerEntry:
    instance_id, run_id, seq, fire_ms = parse_timer_member(member)
    return TimerEntry(instance_id, seq, _from_epoch_ms(fire_ms), run_id)


def _shares(counts: list[int], limit: int, turn: int) -> list[tuple[int, int]]:
    """``(shard, how many to claim)``: ``limit`` shared evenly among the shards with due
    timers (``counts``), the remainder going first to the shards from ``turn`` on."""
    wanted = {k: n for k, n in enumerate(counts) if n > 0}
    shares: dict[int, int] = {}
    order = [k for k in rotate(list(range(len(counts))), turn) if k in wanted]
    while limit > 0 and order:
        each = max(1, limit // len(order))
        for k in list(order):
            take = min(each, wanted[k] - shares.get(k, 0), limit)
            shares[k] = shares.get(k, 0) + take
            limit -= take
            if shares[k] == wanted[k]:
                order.remove(k)
            if limit == 0:
                break
    return sorted(shares.items())


def held_message(entry: bytes) -> HeldMessage:
    """A held message from its stored bytes."""
    held_ms, user_id, message_id, body = decode_held(entry)
    return HeldMessage(body, _from_epoch_ms(held_ms), user_id, message_id)
