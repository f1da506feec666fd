"""Length-prefixed message frames over a Unix socket, as an asyncio protocol.

One connection per front-end process carries every request of that process, both ways. A protocol
(not streams) because under load one `data_received` brings many frames and they are all decoded in
one call, with no coroutine per message; the frames written in one turn of the event loop leave in one
write (`CoalescingTransport`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, cast

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
MAX_FRAME_BYTES = 1 << 30


class FrameProtocol(asyncio.Protocol):
    """Calls `on_frame(payload)` for every complete frame and `on_lost(exc)` when the connection ends
    (and `on_made()` once it is up)."""

    def __init__(
        self,
        on_frame: Callable[[bytes], None],
        on_lost: Callable[[Exception | None], None],
        on_made: Callable[[], None] | None = None,
    ):
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.on_made = on_made
        self.transport: asyncio.WriteTransport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Every answer of a batch, or every request a front-end's loop turn admits, leaves in one write.
        inner = cast(asyncio.WriteTransport, transport)  # uvloop's are not asyncio subclasses
        self.transport = cast(asyncio.WriteTransport, CoalescingTransport(inner, asyncio.get_running_loop()))
        if self.on_made is not None:
            self.on_made()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            if size > MAX_FRAME_BYTES:
                logger.error("frame of %d bytes refused; closing the connection", size)
                if self.transport is not None:
                    self.transport.close()
                return
            if end - start - _HEADER.size < size:
                break
            begin = start + _HEADER.size
            payload = bytes(buffer[begin : begin + size])
            start = begin + size
            try:
                self.on_frame(payload)
            except Exception:  # one bad message must not end the connection for everyone
                logger.exception("handling a message failed")
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost(exc)

    def send(self, payload: bytes) -> bool:
        """Queue one frame; False when the connection is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(frame(payload))
        return True


class CoalescingTransport:
    """An asyncio transport wrapper: writes made in one loop turn leave in one `write` of the inner one.

    Everything but writing and closing is the inner transport's (pausing reads, extra info, aborts).
    """

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Hand everything written so far to the inner transport (no-op when nothing is pending)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def frame(payload: bytes) -> bytes:
    """One frame as bytes: the length header, then the payload."""
    return _HEADER.pack(len(payload)) + payload
