"""Replica acknowledgement of commits: ``WAIT`` after each group-commit pipeline.

Redis replicates asynchronously. A commit its master acknowledged but had not yet sent to a
replica is lost when the master dies and that replica is promoted, and the runtime acks the
consumed messages (an activity's result, say) right after the commit: such a loss could leave
a workflow waiting forever. So, with ``replica_acks`` > 0, the store reports a commit batch
successful only once ``WAIT replica_acks timeout`` on the same connection says enough replicas
have it (``WAIT`` counts the writes of *its own connection*, so it is sent in the pipeline of
the commits: on a standalone Redis the pipeline is one connection; on a cluster the pipeline
sends each master's commands, in order, on one connection of that master, and one ``WAIT`` per
master touched goes last in that master's part, all masters concurrently).

When fewer replicas acknowledged within the timeout (a master without a live replica, e.g.
right after a failover), the commit stands (it cannot be undone) and the store proceeds:
fail-open, with one rate-limited warning per master. Redis' ``min-replicas-to-write`` is the
fail-closed alternative on the server side (docs/redis-keys.md). After a shortfall the next
commits to that master wait at most a tenth of the timeout for :data:`DEGRADED_FOR` seconds
(a master with no replica does not cost every commit the full timeout); one acknowledged
``WAIT`` ends that early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio.cluster import RedisCluster

from flowmesh._errors import ConfigurationError

log = structlog.get_logger("flowmesh.store")

DEFAULT_TIMEOUT = 1.0
"""Seconds a commit batch waits for its replicas (``FLOWMESH_REDIS_REPLICA_ACK_TIMEOUT``)."""

DEGRADED_FOR = 5.0
"""Seconds after a shortfall during which a master's commits wait a tenth of the timeout."""

WARN_EVERY = 30.0
"""Seconds between two warnings about the same master."""

MAX_REPLICA_ACKS = 16


def check_replica_acks(acks: int | None, timeout: float, socket_timeout: float) -> None:
    """Raise :class:`ConfigurationError` for a count outside 0-16 or a timeout that is not
    positive or not below the socket timeout (the reply of ``WAIT`` would time out first)."""
    if acks is not None and not 0 <= acks <= MAX_REPLICA_ACKS:
        raise ConfigurationError(f"replica_acks must be 0-{MAX_REPLICA_ACKS}, got {acks}")
    if not 0 < timeout < socket_timeout:
        raise ConfigurationError(
            f"replica_ack_timeout must be > 0 and below socket_timeout ({socket_timeout} s), "
            f"got {timeout}"
        )


class SlotRouted(str):
    """A command name that routes to the master of ``slot`` on a cluster.

    ``WAIT`` has no key, and a ``target_nodes`` argument does not survive redis-py's retry of
    a cluster pipeline (it is popped from the command). This name carries its slot instead,
    and :class:`~flowmesh.store._redis_cluster.FlowmeshCluster` resolves it each time the
    pipeline runs, against the slot map of that moment: the same master as the commits of
    that slot. It is sent as the plain command name.
    """

    slot: int

    def __new__(cls, command: str, slot: int) -> SlotRouted:
        routed = super().__new__(cls, command)
        routed.slot = slot
        return routed


@dataclass(frozen=True, slots=True)
class Wait:
    """One ``WAIT`` of a batch: the master it targets and the calls it covers."""

    node: str
    calls: tuple[int, ...]
    numreplicas: int
    timeout_ms: int

    @property
    def args(self) -> tuple[int, int]:
        """The arguments of the command."""
        return self.numreplicas, self.timeout_ms


@dataclass
class ReplicaAcks:
    """Decides each batch's ``WAIT`` commands and reads their replies (one per store)."""

    wanted: int
    timeout: float
    app_id: str
    clock: Callable[[], float] = time.monotonic
    unreplicated: int = 0
    """Commits whose ``WAIT`` fell short (or failed), since the store was created."""
    _unreported: dict[str, int] = field(default_factory=dict)
    _warned_at: dict[str, float] = field(default_factory=dict)
    _degraded_until: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Whether commits wait for replicas at all."""
        return self.wanted > 0

    def plan(self, nodes: Sequence[str]) -> list[Wait]:
        """The ``WAIT`` commands for calls sent to ``nodes`` (one master name per call)."""
        by_node: dict[str, list[int]] = {}
        for index, node in enumerate(nodes):
            by_node.setdefault(node, []).append(index)
        now = self.clock()
        waits = []
        for node, calls in by_node.items():
            timeout = self.timeout
            if now < self._degraded_until.get(node, 0.0):
                timeout /= 10
            waits.append(Wait(node, tuple(calls), self.wanted, max(1, round(timeout * 1000))))
        return waits

    def settle(self, waits: Sequence[Wait], replies: Sequence[Any], failed: Sequence[bool]) -> None:
        """Account for the replies of ``waits`` (a count, or an exception); ``failed[i]``:
        call ``i`` failed on its own (it wrote nothing that could be lost)."""
        now = self.clock()
        for wait, reply in zip(waits, replies, strict=True):
            if isinstance(reply, int) and reply >= wait.numreplicas:
                self._degraded_until.pop(wait.node, None)
                continue
            commits = sum(1 for i in wait.calls if not failed[i])
            if not commits:
                continue
            self.unreplicated += commits
            self._unreported[wait.node] = self._unreported.get(wait.node, 0) + commits
            if wait.node not in self._degraded_until or now >= self._degraded_until[wait.node]:
                self._degraded_until[wait.node] = now + DEGRADED_FOR
            if now - self._warned_at.get(wait.node, -WARN_EVERY) >= WARN_EVERY:
                self._warned_at[wait.node] = now
                self._warn(wait, reply)

    def _warn(self, wait: Wait, reply: Any) -> None:
        got = f"error {reply}" if isinstance(reply, BaseException) else f"{reply} replica(s)"
        log.warning(
            "store.commit_not_on_replica",
            app_id=self.app_id,
            node=wait.node,
            commits=self._unreported.pop(wait.node, 0),
            total=self.unreplicated,
            detail=f"commit not yet on a replica: a failover now could lose it (WAIT "
            f"{wait.numreplicas} {wait.timeout_ms} answered {got}; the commit stands)",
        )

    def report(self) -> None:
        """Log the shortfalls not reported yet (rate-limited away); the store calls this at
        close, so that the logs account for every commit."""
        for node, commits in sorted(self._unreported.items()):
            log.warning(
                "store.commit_not_on_replica",
                app_id=self.app_id,
                node=node,
                commits=commits,
                total=self.unreplicated,
                detail="commits not yet on a replica since the last warning (at close)",
            )
        self._unreported.clear()


def add_waits(
    pipe: Any, client: Any, acks: ReplicaAcks, keys: Sequence[Sequence[str]], label: str
) -> list[Wait]:
    """Append to ``pipe`` (of ``client``) the ``WAIT`` of each master that the calls with
    ``keys`` go to (their first key decides, as for ``FCALL``); on a standalone Redis
    (named ``label`` in warnings), one. Returns them for :meth:`ReplicaAcks.settle`."""
    if not isinstance(client, RedisCluster):
        waits = acks.plan([label] * len(keys))
        for wait in waits:
            pipe.execute_command("WAIT", *wait.args)
        return waits
    slots = [client.keyslot(k[0]) for k in keys]
    names = []
    for slot in slots:
        try:  # only a name for the warning: the command is routed when the pipeline runs
            names.append(client.nodes_manager.get_node_from_slot(slot).name)
        except Exception:  # no slot map yet, or the slot not covered
            names.append(f"slot {slot}")
    waits = acks.plan(names)
    for wait in waits:
        pipe.execute_command(SlotRouted("WAIT", slots[wait.calls[0]]), *wait.args)
    return waits


__all__ = [
    "DEFAULT_TIMEOUT",
    "ReplicaAcks",
    "SlotRouted",
    "Wait",
    "add_waits",
    "check_replica_acks",
]
