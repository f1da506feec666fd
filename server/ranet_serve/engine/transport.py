"""Length-prefixed message frames over a Unix socket, as an asyncio protocol.

One connection per front-end process carries every request of that process, both ways. A protocol
(not streams) because under load one `data_received` brings many frames and they are all decoded in
one call, with no coroutine per message; writes go straight to the transport.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import cast

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
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's are not asyncio subclasses
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


def frame(payload: bytes) -> bytes:
    """One frame as bytes: the length header, then the payload."""
    return _HEADER.pack(len(payload)) + payload
