"""What in a Redis server's configuration can lose workflow histories (``check_safety``)."""

from __future__ import annotations

from collections.abc import Mapping

SAFETY_SETTINGS = ("maxmemory-policy", "appendonly", "appendfsync", "save")
"""The settings :func:`safety_warnings` reads (``CONFIG GET`` each)."""


def safety_warnings(settings: Mapping[str, str]) -> list[str]:
    """Warnings for ``settings`` (name -> value as ``CONFIG GET`` reports it).

    A setting missing from ``settings`` (hidden by a managed Redis) is reported as unchecked
    rather than assumed safe.
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
            "a machine crash can lose the last ~30 seconds of commits; use 'everysec' or 'always'"
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
    ``appendfsync`` nor the RDB ``save`` schedule: those stay unchecked (documented).
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
