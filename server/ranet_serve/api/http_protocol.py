"""uvicorn's httptools protocol with its writes coalesced, and a request head bounded in size and time.

Coalesced writes: uvicorn writes a response's status line and headers when the app sends
`http.response.start`, and the body when it sends `http.response.body`: two `send` system calls for
every response. On a small answer (an inference result, a 429) each of them costs about as much as the
other, and a profile of a front-end at 16 concurrent single-image requests (py-spy, this 2-core
machine) spent 18% of its time in those two calls. `CoalescingTransport` (in `engine.transport`: the
engine's socket uses it too) holds what is written during one turn of the event loop and hands it to
the real transport as one buffer at the end of that turn (or at once before a close), so a response
leaves in one call and one TCP segment. Nothing waits longer than the current loop turn.

A bounded head: httptools buffers a request line and headers of any size, and uvicorn waits for them
forever. A client sending a 60 MB header held the front-end's event loop for seconds (every other
request waited: p50 4 ms to 800 ms), and one that stopped halfway through its headers held its
connection open indefinitely. A head over `MAX_HEAD_BYTES` now answers 431, one not complete within
`HEAD_TIMEOUT_S` 408, both as JSON errors, and the connection closes (the body has its own limits,
`api.body`).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ranet_serve.engine.transport import CoalescingTransport

# nginx reads heads of up to 4 x 8 KiB by default; a megabyte leaves any real client room and caps what
# one connection can make the parser buffer.
MAX_HEAD_BYTES = 1 << 20
HEAD_TIMEOUT_S = 30.0  # as long as a body may take to arrive (RANET_BODY_READ_TIMEOUT_S's default)
LINGER_S = 2.0  # how long a refused connection's input is still read and dropped before it closes


def _error_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` writing through a `CoalescingTransport`, with a bounded request head; pass it
    as `uvicorn.Config(http=...)`."""

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._in_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._lingering: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # refused: what the client still sends is read and dropped until it stops
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # The whole chunk went into a head that is still not complete (an upper bound when the
            # chunk also ended the previous request's body).
            self._head_bytes += len(data)
            if self._head_timer is None:  # only a head that spans reads needs a clock
                self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"the request line and headers exceed {self.max_head_bytes} bytes",
                )

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request httptools cannot parse (a bad Content-Length, chunked with a
        length, a raw non-ASCII URL): the JSON error every other 400 is, not uvicorn's plain text."""
        message = "the request is not valid HTTP/1.1 (its request line, a header or its framing)"
        self._refuse(400, "Bad Request", "invalid_http", message)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # No timer here: nearly every head arrives in the read that begins it, and a timer per request
        # would be an allocation on the request path for nothing (`data_received` starts one if not).
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(
                408,
                "Request Timeout",
                "request_timeout",
                f"the request's headers did not arrive within {self.head_timeout_s:g} s",
            )

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer, then close the way nginx's lingering close does: closing a socket with unread input
        sends a reset, which can destroy the answer before the client reads it (a client still sending
        its headers got ECONNRESET instead of the 431). So the write side is shut first (the client sees
        the answer, then end of file), input is dropped, and the socket closes after `LINGER_S`."""
        self._end_head()
        self.transport.write(_error_response(status, reason, code, message))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = self.loop.call_later(LINGER_S, self.transport.close)
