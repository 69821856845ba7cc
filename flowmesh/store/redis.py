"""The Redis :class:`~flowmesh.store.WorkflowStore`: one atomic Redis function call per commit.

Usage::

    store = RedisStore(RedisStoreConfig(url="redis://127.0.0.1:6379/0", app_id="orders"), Codec())
    await store.connect()       # creates the client and checks the server answers
    ...
    await store.close()

or ``async with RedisStore(...) as store:``. The key layout is documented in
``docs/redis-keys.md``. This module is what is stored and where; how the store connects (URL,
TLS, retries, function calls, the error boundary, the safety check) is its base
:class:`~flowmesh.store._redis_connection.RedisConnection`.

Round trips: ``commit`` is one ``FCALL`` (which also takes the result waiters when asked);
``load`` is one ``MULTI``/``EXEC`` (state and history read together, so they always belong to
the same version); ``remove_outbox_many`` is one pipeline of one ``FCALL`` per 200 instances.
The Lua code is a Redis Functions library (:mod:`flowmesh.store._redis_functions`) that
``flowmesh security apply`` loads; an app's ACL user may ``FCALL`` it but run no Lua of its own.
Where the library is missing and the user may load it (development), the first call loads it.

TLS: a ``rediss://`` URL, with :class:`~flowmesh.security.TLSConfig` (CA, client certificate,
verification on by default; turning it off is logged as a warning). Access control: the store
only touches keys under ``<key_prefix>:{<app_id>}:`` (and ``<key_prefix>:{<app_id>#<k>}:``
for shard ``k`` of a sharded app, see ``_redis_shards.py``) and runs the commands listed in
``REDIS_COMMANDS``, so an ACL user limited to exactly those works (``flowmesh security plan``).

A commit whose reply was lost (the connection dropped after Redis applied it) and that is
retried fails its version check and raises :class:`~flowmesh.VersionConflictError`: the caller
reloads, finds its own events in the history, and carries on as after any conflict. Likewise a
retried ``purge`` may answer False for an instance it did delete.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from redis.exceptions import ResponseError

from flowmesh._errors import VersionConflictError
from flowmesh.model import (
    HistoryEvent,
    WorkflowState,
    WorkflowStatus,
    check_instance_id,
)
from flowmesh.store._base import (
    MAX_WAITERS,
    Commit,
    HeldMessage,
    HistorySlice,
    InstanceRecord,
    Waiter,
    _check_commit,
    _due_ms,
    _epoch_ms,
)
from flowmesh.store._redis_batch import Call, TurnBatcher
from flowmesh.store._redis_connection import AnyPipeline, RedisStoreConfig, redis_client
from flowmesh.store._redis_keys import (
    REDIS_COMMANDS,
    encode_held,
    encode_outgoing,
    timer_member,
)
from flowmesh.store._redis_scans import ShardScans, held_message

__all__ = [
    "REDIS_COMMANDS",
    "RedisStore",
    "RedisStoreConfig",
    "StoreCodec",
    "redis_client",
]


_NOT_AWAITED = tuple(status.value for status in WorkflowStatus if status.ends_waiting)
"""Statuses for which ``add_waiter`` answers at once instead of storing the waiter."""


def _waiter_member(waiter: Waiter) -> str:
    """The waiters set's member for ``waiter``: inbox addresses contain no space."""
    if not waiter.correlation_id:
        return waiter.address
    return f"{waiter.address} {waiter.correlation_id}"


def _parse_waiters(members: Iterable[bytes]) -> list[Waiter]:
    """Waiters from set members; a bare address was stored before correlation IDs were."""
    waiters = []
    for member in members:
        address, _, correlation_id = member.decode().partition(" ")
        waiters.append(Waiter(address, correlation_id))
    return sorted(waiters)


_TAKE_ALL = 1 << 20
"""SPOP count that takes a whole waiters set."""

_OUTBOX_CHUNK = 200
"""Instances per ``remove_outbox.lua`` call: bounds how long one call blocks the server."""


class StoreCodec(Protocol):
    """What the store needs from :class:`flowmesh.codec.Codec`.

    The store passes its app ID and the instance whose keys hold a blob, so that encrypted
    values are bound to where they are kept (one moved to another instance's or app's keys
    does not decode).
    """

    def encode_event(self, event: HistoryEvent, /, *, app_id: str, instance_id: str) -> bytes:
        """Bytes of one history event."""

    def decode_event(self, data: bytes, /, *, app_id: str, instance_id: str) -> HistoryEvent:
        """A history event from :meth:`encode_event` bytes."""

    def encode_state(self, state: WorkflowState, /, *, app_id: str, instance_id: str) -> bytes:
        """Bytes of a workflow state."""

    def decode_state(self, data: bytes, /, *, app_id: str, instance_id: str) -> WorkflowState:
        """A workflow state from :meth:`encode_state` bytes."""


class RedisStore(ShardScans):
    """Workflow store of one app on a standalone Redis or a Redis Cluster.

    The constructor does no I/O; call :meth:`connect` (or use ``async with``) first. Redis
    errors surface as :class:`~flowmesh.StoreError` with the password masked.
    """

    def __init__(self, config: RedisStoreConfig, codec: StoreCodec) -> None:
        super().__init__(config)
        self._codec = codec
        self._commits = TurnBatcher(self._send_commits)

    async def _send_commits(self, calls: list[Call]) -> list[Any]:
        """Commit scripts gathered by the :class:`TurnBatcher`, in one round trip; a script
        error fails only its own commit. With ``replica_acks``, the pipeline ends with
        ``WAIT`` (``_redis_replicas.py``): the batch is done once replicas have it."""
        if self._replica_acks.enabled:
            return await self._run_pipelined("commit", calls, replicated=True)
        if len(calls) == 1:
            try:
                return [await self._run("commit", *calls[0])]
            except ResponseError as exc:
                return [exc]
        return await self._run_pipelined("commit", calls)

    def _decode_state(self, blob: bytes, instance_id: str) -> WorkflowState:
        # The store's app and the instance key: values are bound to where they are kept.
        return self._codec.decode_state(blob, app_id=self.config.app_id, instance_id=instance_id)

    async def load(self, instance_id: str) -> InstanceRecord | None:
        """The instance's state and history (one MULTI/EXEC round trip), or None."""
        pipe: AnyPipeline
        with self._translating(f"load {instance_id!r}"):
            keys = self._layout.of(instance_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(keys.instance(instance_id), "s")
                pipe.lrange(keys.history(instance_id), 0, -1)
                blob, events = await pipe.execute()
        if blob is None:
            return None
        app_id, decode_event = self.config.app_id, self._codec.decode_event
        return InstanceRecord(
            state=self._codec.decode_state(blob, app_id=app_id, instance_id=instance_id),
            history=tuple(
                [decode_event(e, app_id=app_id, instance_id=instance_id) for e in events]
            ),
        )

    async def load_history(self, instance_id: str, start: int, limit: int) -> HistorySlice | None:
        """Events ``start`` to ``start + limit - 1`` and the run (one MULTI/EXEC), or None."""
        pipe: AnyPipeline
        with self._translating(f"load history of {instance_id!r}"):
            keys = self._layout.of(instance_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(keys.instance(instance_id), "status")  # gone with a purge
                pipe.hget(keys.instance(instance_id), "r")
                pipe.lrange(keys.history(instance_id), start, start + limit)  # one more
                status, run_id, blobs = await pipe.execute()
        if status is None:
            return None
        app_id, decode_event = self.config.app_id, self._codec.decode_event
        events = [decode_event(e, app_id=app_id, instance_id=instance_id) for e in blobs[:limit]]
        return HistorySlice(run_id.decode() if run_id else "", tuple(events), len(blobs) > limit)

    async def load_state(self, instance_id: str) -> WorkflowState | None:
        """The instance's state without its history, or None."""
        key = self._layout.of(instance_id).instance(instance_id)
        with self._translating(f"load state of {instance_id!r}"):
            # redis-py annotates hget as returning str, which is wrong without decode_responses.
            blob = await cast("Awaitable[bytes | None]", self._redis.hget(key, "s"))
        return None if blob is None else self._decode_state(blob, instance_id)

    async def commit(self, commit: Commit) -> list[Waiter]:
        """Apply ``commit`` in one FCALL or raise :class:`~flowmesh.VersionConflictError`.

        Returns the waiters the same script removed (``commit.take_waiters``), sorted; else an
        empty list.
        """
        _check_commit(commit)
        instance_id, state = commit.instance_id, commit.state
        app_id, shard = self.config.app_id, self._layout.of(instance_id)
        keys = [
            *shard.per_instance(instance_id)[:4],
            shard.index,
            shard.outbox_index,
            shard.timers,
            shard.seq,
            shard.waiters(instance_id),
            shard.held(instance_id),
            shard.held_index,
            *shard.status_indexes,
        ]
        args: list[Any] = [
            instance_id,
            commit.expected_version,
            state.version,
            state.status.value,
            self._codec.encode_state(state, app_id=app_id, instance_id=instance_id),
            1 if commit.replace_history else 0,
            len(commit.append),
            *[
                self._codec.encode_event(event, app_id=app_id, instance_id=instance_id)
                for event in commit.append
            ],
            len(commit.outbox),
        ]
        for position, entry in enumerate(commit.outbox):
            args += (entry.entry_id, encode_outgoing(entry.message, (state.version, position)))
        args += (len(commit.cancel_timers), *commit.cancel_timers, len(commit.add_timers))
        for timer in commit.add_timers:
            fire_ms = _due_ms(timer.fire_at)
            member = timer_member(instance_id, timer.run_id, timer.seq, fire_ms)
            args += (timer.seq, member, fire_ms)
        args += (len(commit.clear_outbox), *commit.clear_outbox, 1 if commit.take_waiters else 0)
        args += (commit.expected_run_id, state.run_id, commit.take_held)
        # Sharded: order instances by the server's clock, comparable across shards.
        args.append(1 if self._layout.count > 1 else 0)

        with self._translating(f"commit to {instance_id!r}"):
            reply = await self._commits.call(keys, args)
        if reply[0] == 0:
            raise VersionConflictError(
                f"instance {instance_id!r}: expected version {commit.expected_version} of run "
                f"{commit.expected_run_id!r} with {commit.take_held} held messages applied, "
                f"stored version {reply[1]}",
                stored_version=int(reply[1]),
            )
        return _parse_waiters(reply[1:])

    async def remove_outbox(self, instance_id: str, entry_ids: Sequence[str]) -> None:
        """Forget published outbox entries; unknown IDs are ignored."""
        await self.remove_outbox_many([(instance_id, entry_ids)])

    async def remove_outbox_many(self, batch: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Forget published outbox entries of many instances in one round trip.

        One ``remove_outbox.lua`` call per 200 instances, all sent in one pipeline; each call
        is atomic and idempotent.
        """
        work = [(instance_id, ids) for instance_id, ids in batch if ids]
        if not work:
            return
        ids_of: dict[str, list[str]] = {}
        for instance_id, ids in work:
            ids_of.setdefault(instance_id, []).extend(ids)
        calls: list[tuple[list[str], list[Any]]] = []
        # A call's keys share one hash tag: the instances of one shard.
        for shard, instance_ids in sorted(self._layout.group(ids_of).items()):
            keys_of = self._layout.shards[shard]
            for start in range(0, len(instance_ids), _OUTBOX_CHUNK):
                keys = [keys_of.outbox_index]
                args: list[Any] = []
                for instance_id in instance_ids[start : start + _OUTBOX_CHUNK]:
                    ids = ids_of[instance_id]
                    keys.append(keys_of.outbox(instance_id))
                    args += (instance_id, len(ids), *ids)
                calls.append((keys, args))
        with self._translating(f"remove outbox entries of {len(work)} instances"):
            if len(calls) == 1:
                await self._run("remove_outbox", *calls[0])
            else:
                for result in await self._run_pipelined("remove_outbox", calls):
                    if isinstance(result, Exception):
                        raise result

    async def add_waiter(self, instance_id: str, waiter: Waiter) -> WorkflowState | None:
        """Remember ``waiter`` unless the instance is finished; its state, or None if absent."""
        shard = self._layout.of(instance_id)
        keys = [shard.instance(instance_id), shard.waiters(instance_id)]
        args = [_waiter_member(waiter), MAX_WAITERS, *_NOT_AWAITED]
        with self._translating(f"add waiter to {instance_id!r}"):
            blob = await self._run("add_waiter", keys, args)
        return None if blob is None else self._decode_state(blob, instance_id)

    async def take_waiters(self, instance_id: str) -> list[Waiter]:
        """Remove and return the waiters of ``instance_id``, sorted."""
        key = self._layout.of(instance_id).waiters(instance_id)
        with self._translating(f"take waiters of {instance_id!r}"):
            # SPOP with a count of at least the set's size takes every member and deletes
            # the key, atomically, in one command (the set holds at most MAX_WAITERS; older
            # hosts may have left a few more, hence the margin).
            members = await cast("Awaitable[list[bytes] | None]", self._redis.spop(key, _TAKE_ALL))
        return _parse_waiters(members or [])

    async def purge(self, instance_id: str) -> bool:
        """Delete the instance, its history, outbox, timers and waiters; False if absent."""
        shard = self._layout.of(instance_id)
        keys = [
            *shard.per_instance(instance_id),
            shard.index,
            shard.outbox_index,
            shard.timers,
            *shard.status_indexes,
        ]
        with self._translating(f"purge {instance_id!r}"):
            existed = await self._run("purge", keys, [instance_id])
        return bool(existed)

    async def hold(self, instance_id: str, message: HeldMessage) -> bool:
        """Keep ``message`` until the instance exists (one script); False if it exists."""
        check_instance_id(instance_id)
        held_ms = _epoch_ms(message.held_at)
        shard = self._layout.of(instance_id)
        keys = [shard.instance(instance_id), shard.held(instance_id), shard.held_index]
        entry = encode_held(held_ms, message.user_id, message.message_id, message.body)
        with self._translating(f"hold a message for {instance_id!r}"):
            if not self._replica_acks.enabled:
                return bool(await self._run("hold", keys, [instance_id, held_ms, entry]))
            # The message is acked once held: like a commit, it waits for the replicas.
            calls: list[Call] = [(keys, [instance_id, held_ms, entry])]
            (reply,) = await self._run_pipelined("hold", calls, replicated=True)
        if isinstance(reply, Exception):
            raise reply
        return bool(reply)

    async def held(self, instance_id: str) -> list[HeldMessage]:
        """The messages held for ``instance_id``, oldest first."""
        key = self._layout.of(instance_id).held(instance_id)
        with self._translating(f"read held messages of {instance_id!r}"):
            entries = await cast("Awaitable[list[bytes]]", self._redis.lrange(key, 0, -1))
        return [held_message(entry) for entry in entries]

    async def drop_held(self, instance_id: str, before: datetime) -> None:
        """Forget the held messages of ``instance_id`` that arrived before ``before``."""
        shard = self._layout.of(instance_id)
        keys = [shard.held(instance_id), shard.held_index]
        with self._translating(f"drop held messages of {instance_id!r}"):
            await self._run("drop_held", keys, [instance_id, _epoch_ms(before)])

    async def note_waiting_start(
        self, instance_id: str, name: str, note: str, ttl: timedelta
    ) -> None:
        """Remember for ``ttl`` why a start of ``instance_id`` waits (a key that expires)."""
        check_instance_id(instance_id)
        seconds = max(1, int(ttl.total_seconds()))
        key = self._layout.of(instance_id).waiting_start(instance_id)
        with self._translating(f"note a waiting start of {instance_id!r}"):
            await self._redis.set(key, f"{name}\n{note}", ex=seconds)

    async def waiting_start(self, instance_id: str) -> tuple[str, str] | None:
        """``(name, note)`` of a waiting start of ``instance_id``, if noted recently."""
        key = self._layout.of(instance_id).waiting_start(instance_id)
        with self._translating(f"read the waiting start of {instance_id!r}"):
            raw = await cast("Awaitable[bytes | None]", self._redis.get(key))
        if raw is None:
            return None
        name, _, note = raw.decode().partition("\n")
        return name, note

    async def note_publish_problems(self, notes: Sequence[tuple[str, str]], ttl: timedelta) -> None:
        """Remember (``SET`` with an expiry) or forget (``DEL``) why outbox messages wait,
        in one pipeline."""
        if not notes:
            return
        seconds = max(1, int(ttl.total_seconds()))
        pipe: AnyPipeline
        with self._translating(f"note publish problems of {len(notes)} instances"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for instance_id, note in notes:
                    key = self._layout.of(instance_id).publish_problem(instance_id)
                    if note:
                        pipe.set(key, note, ex=seconds)
                    else:
                        pipe.delete(key)
                await pipe.execute()

    async def publish_problem(self, instance_id: str) -> str:
        """The last publish problem noted for ``instance_id`` ('' if none or expired)."""
        key = self._layout.of(instance_id).publish_problem(instance_id)
        with self._translating(f"read the publish problem of {instance_id!r}"):
            raw = await cast("Awaitable[bytes | None]", self._redis.get(key))
        return "" if raw is None else raw.decode(errors="replace")
