"""Redis commands packed in linear time.

redis-py's ``pack_command`` rebuilds its output buffer once per argument (``b"".join`` of the
buffer so far and the new argument), so packing costs grow with the square of a command's
size. A workflow commit is one ``EVALSHA`` with 30-40 keys and arguments, and packing it took
about 60 µs, 5% of a hosting worker's CPU under load; packed linearly it takes about 20 µs.

The connection classes here only replace ``pack_command``; what goes on the wire is the
same bytes (``tests/unit/test_redis_packing.py`` checks it against redis-py's own packing).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

_CRLF = b"\r\n"


class _LinearPacking:
    """Mixed into a redis-py connection class in front of it (see :func:`use_linear_packing`)."""

    encoder: Any
    _buffer_cutoff: int

    def pack_command(self, *args: Any) -> list[bytes]:
        """The RESP encoding of one command, as redis-py's ``pack_command`` returns it: a
        list of chunks, large values (over the connection's buffer cutoff) kept apart so they
        are not copied."""
        first = args[0]
        assert not isinstance(first, float)
        # A command name with a space in it ("CONFIG GET") is several words on the wire.
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        encoder = self.encoder
        encoding, errors = encoder.encoding, encoder.encoding_errors
        cutoff = self._buffer_cutoff
        output: list[bytes] = []  # memoryview chunks too, typed as redis-py types them
        parts: list[bytes] = [b"*%d\r\n" % len(args)]
        data: Any
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode(encoding, errors)
            elif kind is int:
                data = b"%d" % arg
            else:  # floats, memoryviews, subclasses; bools and others raise as in redis-py
                data = encoder.encode(arg)
            size = len(data)
            if size > cutoff or isinstance(data, memoryview):
                parts.append(b"$%d\r\n" % size)
                output.append(b"".join(parts))
                output.append(data)
                parts = [_CRLF]
            else:
                parts.append(b"$%d\r\n%b\r\n" % (size, data))
        output.append(b"".join(parts))
        return output


_Connection = type[redis.asyncio.connection.AbstractConnection]
_CLASSES: dict[_Connection, _Connection] = {}
"""One subclass per base class, not one per client: a class is not garbage."""


def linear_packing_class(base: _Connection) -> _Connection:
    """``base`` (TCP, TLS or Unix-socket connection) with :class:`_LinearPacking`."""
    if base in _CLASSES.values():  # already linear
        return base
    if base not in _CLASSES:
        _CLASSES[base] = type(f"LinearPacking{base.__name__}", (_LinearPacking, base), {})
    return _CLASSES[base]


def use_linear_packing(client: redis.asyncio.Redis) -> None:
    """Make every connection ``client`` opens pack commands in linear time.

    Call before the first command: connections are created lazily with the pool's
    ``connection_class``, which ``from_url`` picked by the URL's scheme.
    """
    pool = client.connection_pool
    pool.connection_class = linear_packing_class(pool.connection_class)
