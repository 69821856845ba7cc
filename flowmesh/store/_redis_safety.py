"""What in a Redis server's configuration can lose workflow histories (``check_safety``).

What each setting guarantees for a commit Redis acknowledged (and so for a delivery flowmesh
acked and an outbox it published after that commit):

* ``appendonly yes`` + ``appendfsync always``: the commit is on disk before Redis answers; a
  Redis, process or machine crash loses nothing acknowledged. Required by default.
* ``appendfsync everysec``: written to the AOF at once but fsynced about every second; a Redis
  process crash loses nothing, a machine crash or power loss up to ~1-2 s of acknowledged
  commits, whose messages may already be published. Refused unless explicitly allowed.
* ``appendfsync no``: the operating system flushes when it likes (~30 s on Linux).
* ``appendonly no``: at best the last RDB snapshot survives a restart.
* Replication is asynchronous whatever the fsync policy: a failover to a replica loses what the
  replica had not received.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio.client import Pipeline
    from redis.asyncio.cluster import ClusterNode, RedisCluster

SAFETY_SETTINGS = ("maxmemory-policy", "appendonly", "appendfsync", "save")
"""The settings :func:`safety_warnings` reads (``CONFIG GET`` each)."""


EVERYSEC_ALLOWED_BY = "--allow-redis-everysec"
"""How an operator accepts ``appendfsync everysec`` (named in the warning)."""


def safety_warnings(settings: Mapping[str, str], *, allow_everysec: bool = False) -> list[str]:
    """Warnings for ``settings`` (name -> value as ``CONFIG GET`` reports it).

    A setting missing from ``settings`` (hidden by a managed Redis) is reported as unchecked
    rather than assumed safe. ``appendfsync everysec`` is a warning unless ``allow_everysec``.
    """
    warnings: list[str] = []
    unknown = [name for name in SAFETY_SETTINGS if name not in settings]
    if unknown:
        warnings.append(
            f"could not read {', '.join(unknown)} from the Redis server; check that "
            "maxmemory-policy is noeviction and that AOF persistence (appendonly yes) is on"
        )

    policy = settings.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        warnings.append(
            f"maxmemory-policy is {policy!r}: when Redis reaches maxmemory it evicts keys, "
            "silently deleting workflow histories; set it to 'noeviction' so writes fail instead"
        )

    appendonly = settings.get("appendonly")
    save = settings.get("save")
    if appendonly == "no" and save is not None:
        if save.strip() in ("", '""'):
            warnings.append(
                "no persistence: appendonly is 'no' and RDB snapshots are off (save is empty), "
                "so a Redis restart loses every workflow; set appendonly to 'yes'"
            )
        else:
            warnings.append(
                f"appendonly is 'no': only RDB snapshots (save {save!r}) persist data, so a "
                "crash loses every commit since the last snapshot; set appendonly to 'yes'"
            )
    elif appendonly == "yes" and settings.get("appendfsync") == "no":
        warnings.append(
            "appendfsync is 'no': the operating system decides when the AOF reaches disk, so "
            "a machine crash can lose the last ~30 seconds of commits; set it to 'always'"
        )
    elif appendonly == "yes" and settings.get("appendfsync") == "everysec" and not allow_everysec:
        warnings.append(
            "appendfsync is 'everysec': Redis acknowledges a commit before it reaches disk, so "
            "a machine crash or power loss can lose the last second of acknowledged steps "
            "whose messages were already sent; set appendfsync to 'always', or accept that "
            f"window with {EVERYSEC_ALLOWED_BY}"
        )
    return warnings


INFO_SECTIONS = ("persistence", "memory")
"""``INFO`` sections :func:`info_safety_warnings` reads when ``CONFIG`` is refused.

An ACL user restricted to its app's keys (``flowmesh security plan``) may run ``INFO
persistence`` and ``INFO memory`` but not ``CONFIG GET``, which would also reveal secrets such
as ``requirepass`` and ``masterauth``."""


def info_safety_warnings(sections: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Warnings from ``INFO persistence`` and ``INFO memory`` (section -> parsed fields).

    ``INFO`` shows whether AOF is on (``aof_enabled``) and the eviction policy, but neither
    ``appendfsync`` nor the RDB ``save`` schedule: those stay unchecked here (``flowmesh
    security apply`` checks them with the administrator's connection).
    """
    persistence = sections.get("persistence", {})
    memory = sections.get("memory", {})
    settings: dict[str, str] = {}
    if "maxmemory_policy" in memory:
        settings["maxmemory-policy"] = str(memory["maxmemory_policy"])
    if "aof_enabled" in persistence:
        settings["appendonly"] = "yes" if str(persistence["aof_enabled"]) == "1" else "no"
    warnings: list[str] = []
    unknown = [name for name in ("maxmemory-policy", "appendonly") if name not in settings]
    if unknown:
        warnings.append(
            f"could not read {', '.join(unknown)} from the Redis server; check that "
            "maxmemory-policy is noeviction and that AOF persistence (appendonly yes) is on"
        )
    policy = settings.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        warnings.append(
            f"maxmemory-policy is {policy!r}: when Redis reaches maxmemory it evicts keys, "
            "silently deleting workflow histories; set it to 'noeviction' so writes fail instead"
        )
    if settings.get("appendonly") == "no":
        warnings.append(
            "appendonly is 'no': at best RDB snapshots persist data, so a crash or restart "
            "loses commits since the last snapshot (or everything); set appendonly to 'yes'"
        )
    return warnings


def settings_of(client: redis.asyncio.Redis) -> Callable[[], Awaitable[list[dict[Any, Any]]]]:
    """Reads the safety settings of a standalone server in one pipeline."""

    async def read() -> list[dict[Any, Any]]:
        pipe: Pipeline
        async with client.pipeline(transaction=False) as pipe:
            for name in SAFETY_SETTINGS:
                pipe.config_get(name)
            return cast("list[dict[Any, Any]]", await pipe.execute())

    return read


def node_settings_of(
    client: RedisCluster, node: ClusterNode
) -> Callable[[], Awaitable[list[dict[Any, Any]]]]:
    """Reads the safety settings of one cluster node."""

    async def read() -> list[dict[Any, Any]]:
        return [
            await client.execute_command("CONFIG GET", name, target_nodes=node)
            for name in SAFETY_SETTINGS
        ]

    return read


def node_info_of(
    client: RedisCluster, node: ClusterNode
) -> Callable[[str], Awaitable[dict[str, Any]]]:
    """Reads one ``INFO`` section of one cluster node."""

    async def info(section: str) -> dict[str, Any]:
        return cast("dict[str, Any]", await client.info(section, target_nodes=node))

    return info


def setting_text(value: bytes | str) -> str:
    """A ``CONFIG GET`` name or value as text."""
    return value.decode() if isinstance(value, bytes) else value
