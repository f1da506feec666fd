"""The coalescing transport under uvicorn: what is written in one loop turn leaves in one write."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ranet_serve.engine.transport import CoalescingTransport


class RecordingTransport:
    """Stands in for an asyncio transport: records the calls it gets, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(cast(Any, inner), asyncio.get_running_loop()), inner


async def _next_turn() -> None:
    """Let the loop run the callbacks scheduled so far (the flush) by yielding twice."""
    for _ in range(2):
        await asyncio.sleep(0)


def test_writes_of_one_loop_turn_leave_as_one_write() -> None:
    async def scenario() -> None:
        transport, inner = _coalescing()
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(bytearray(b"{}"))
        assert inner.calls == []  # nothing leaves before the turn ends
        await _next_turn()
        assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
        transport.write(b"next")
        await _next_turn()
        assert inner.calls[-1] == ("write", b"next") and len(inner.calls) == 2

    asyncio.run(scenario())


def test_close_sends_what_is_pending_first_and_other_calls_reach_the_transport() -> None:
    async def scenario() -> None:
        transport, inner = _coalescing()
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        transport.close()
        assert inner.calls == [("write", b"HTTP/1.1 400 Bad Request\r\n\r\n"), ("close", None)]
        await _next_turn()  # the scheduled flush finds nothing left to send
        assert len(inner.calls) == 2
        assert transport.get_extra_info("peername") == "info:peername"

    asyncio.run(scenario())
