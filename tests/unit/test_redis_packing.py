"""The linear packer puts exactly redis-py's bytes on the wire, for any command."""

from __future__ import annotations

import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError
from redis.typing import EncodableT

from flowmesh.store._redis_packing import linear_packing_class, use_linear_packing

_ARGS: st.SearchStrategy[list[EncodableT]] = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.binary(min_size=7000, max_size=9000),  # over the 6,000-byte buffer cutoff
        st.text(max_size=50),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        st.binary(max_size=50).map(lambda b: memoryview(b)),  # noqa: PLW0108 - typed for mypy
    ),
    max_size=40,
)


def _both() -> tuple[Connection, Connection]:
    linear: Connection = linear_packing_class(Connection)()  # type: ignore[assignment]
    return Connection(), linear


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["EVALSHA", "CONFIG GET", b"SET", b"CLIENT SETNAME"]), args=_ARGS)
def test_linear_packing_sends_the_same_bytes_as_redis_py(
    name: str | bytes, args: list[EncodableT]
) -> None:
    reference, linear = _both()

    expected = b"".join(bytes(chunk) for chunk in reference.pack_command(name, *args))
    packed = linear.pack_command(name, *args)

    assert b"".join(bytes(chunk) for chunk in packed) == expected
    # Large values and memoryviews travel as chunks of their own (not copied into a buffer).
    for arg in args:
        if isinstance(arg, bytes) and len(arg) > 6000:
            assert any(chunk is arg for chunk in packed)


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_values_redis_py_refuses_are_refused_alike(bad: object) -> None:
    _, linear = _both()
    with pytest.raises(DataError):
        linear.pack_command("SET", "k", bad)  # type: ignore[arg-type]  # refused on purpose


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_url_scheme_keeps_its_connection_kind(url: str, base: type[Connection]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    use_linear_packing(client)

    connection_class = client.connection_pool.connection_class
    assert issubclass(connection_class, base)
    assert connection_class.pack_command is not base.pack_command
