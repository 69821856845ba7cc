"""Which exceptions out of redis-py are a broken connection rather than a bug.

On a connection error the cluster client closes *every* node's connections (``aclose()`` in
``RedisCluster.execute_command`` and in the cluster pipeline's retry), including connections
that concurrent commands on healthy masters are writing to or reading from. Those commands
then fail inside redis-py or asyncio with ``AttributeError: 'NoneType' object has no
attribute 'writelines'`` or ``RuntimeError: unable to perform operation on <TCPTransport
closed=True>``. They are failures of the connection, like a ``ConnectionError``: the store
reports them as :class:`~flowmesh.StoreError`, so the runtime retries the step instead of
counting it as the message's own fault (which would dead-letter it after a few deliveries).
Measured: 353 such failures in the cluster failover test, 2 workflows refused, before.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import redis

_CLIENT_DIRS = tuple(
    str(Path(module.__file__).parent) + os.sep for module in (redis, asyncio) if module.__file__
)
_UVLOOP = "uvloop/"
"""uvloop's transports are Cython: their frames are named ``uvloop/handles/stream.pyx``."""


def raised_in_client_io(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``AttributeError`` or ``RuntimeError`` raised in redis-py's,
    asyncio's or uvloop's own code (the innermost frame of its traceback), not flowmesh's."""
    if not isinstance(exc, AttributeError | RuntimeError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    return filename.startswith(_CLIENT_DIRS) or filename.startswith(_UVLOOP)


__all__ = ["raised_in_client_io"]
