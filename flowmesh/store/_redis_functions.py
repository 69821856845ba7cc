"""flowmesh's server-side code as one Redis Functions library (``FUNCTION LOAD``, ``FCALL``).

Why functions and not ``EVALSHA``: a user who may run ``EVAL``/``SCRIPT LOAD`` may run *any*
Lua, e.g. a busy loop that blocks the Redis every app shares. With functions, the apps' ACL
users get ``FCALL`` only (no ``EVAL``, ``EVALSHA``, ``SCRIPT``, ``FUNCTION``), so they can run
nothing but the functions an administrator loaded: ``flowmesh security apply`` loads this
library, and Redis persists it (AOF/RDB) and replicates it like data.

Versions: the library's name and every function name carry a digest of the code
(``flowmesh_<12 hex>``, ``fm_<12 hex>_commit``). New code calling an old library therefore
gets "Function not found" instead of running old code, and during a rolling deploy old and new
workers each find their own library side by side. Old libraries are inert; delete them with
``FUNCTION DELETE`` once no worker of that version runs (see docs/redis-keys.md).

Development: a user that may ``FUNCTION LOAD`` (the ``default`` user) gets the library loaded by
the store on first use, the same code as ``security apply`` loads.

The scripts are the ``*.lua`` files next to this module, written against ``KEYS``/``ARGV`` as
for ``EVAL``; each becomes a function whose parameters have those names, so its text runs as is.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from functools import cache
from typing import Final

SCRIPTS: Final = (
    "commit",
    "claim_timers",
    "add_waiter",
    "remove_outbox",
    "purge",
    "hold",
    "drop_held",
)
"""The library's functions, one per ``<name>.lua`` file."""


@dataclass(frozen=True, slots=True)
class FunctionLibrary:
    """The library's name, its code for ``FUNCTION LOAD`` and its function names."""

    name: str
    code: str
    version: str
    """Digest of the scripts (12 hex digits): part of every name, so versions never mix."""

    def function(self, script: str) -> str:
        """The ``FCALL`` name of ``script`` in this version of the library."""
        return f"fm_{self.version}_{script}"


@cache
def library() -> FunctionLibrary:
    """This flowmesh version's library (built once from the ``*.lua`` files)."""
    package = importlib.resources.files(__package__)
    texts = {name: package.joinpath(f"{name}.lua").read_text("utf-8") for name in SCRIPTS}
    digest = hashlib.sha256()
    for name in SCRIPTS:
        digest.update(f"{name}\0{texts[name]}\0".encode())
    version = digest.hexdigest()[:12]
    parts = [f"#!lua name=flowmesh_{version}\n"]
    for name in SCRIPTS:
        # Redis Functions pass keys and arguments as parameters; naming them KEYS and ARGV
        # lets the EVAL-style script text run unchanged.
        parts.append(
            f"redis.register_function('fm_{version}_{name}', function(KEYS, ARGV)\n"
            f"{texts[name]}\nend)\n"
        )
    return FunctionLibrary(f"flowmesh_{version}", "".join(parts), version)


def is_missing_function(error: Exception) -> bool:
    """Whether ``error`` is Redis saying the called function is not loaded."""
    return "function not found" in str(error).lower()
