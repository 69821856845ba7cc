"""TurnBufferedWriter: the frames written during one loop turn leave in one socket write."""

from __future__ import annotations

import asyncio
from typing import Any

from flowmesh.transport._rabbitmq_writes import TurnBufferedWriter


class FakeStreamWriter:
    """Records each call that would be a system call."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False
        self.eof = False

    def writelines(self, data: list[bytes]) -> None:
        self.sends.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    async def drain(self) -> None:
        return None


def buffered() -> tuple[TurnBufferedWriter, FakeStreamWriter]:
    fake = FakeStreamWriter()
    writer: Any = fake
    return TurnBufferedWriter(writer), fake


async def test_writes_of_one_turn_leave_in_one_send_in_order() -> None:
    writer, fake = buffered()
    for frame in (b"publish-1", b"ack-7", b"publish-2"):
        writer.write(frame)
        await writer.drain()  # aiormq drains after each frame: that must not send
    assert fake.sends == []
    await asyncio.sleep(0)
    assert fake.sends == [b"publish-1ack-7publish-2"]


async def test_writes_of_later_turns_leave_in_later_sends() -> None:
    writer, fake = buffered()
    writer.write(b"a")
    await asyncio.sleep(0)
    writer.write(b"b")
    await asyncio.sleep(0)
    assert fake.sends == [b"a", b"b"]


async def test_close_and_write_eof_send_what_is_buffered_first() -> None:
    writer, fake = buffered()
    writer.write(b"last frame")
    writer.write_eof()
    assert fake.sends == [b"last frame"] and fake.eof
    writer.write(b"close frame")
    writer.close()
    assert fake.sends == [b"last frame", b"close frame"] and fake.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert fake.sends == [b"last frame", b"close frame"]


async def test_nothing_is_sent_on_a_closed_transport() -> None:
    writer, fake = buffered()
    writer.write(b"frame")
    fake.closed = True  # the connection died within the turn
    await asyncio.sleep(0)
    assert fake.sends == []
