"""uvicorn's httptools protocol with its writes coalesced: one send per response instead of two.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and the
body when it sends `http.response.body`: two `send` system calls for every response. On a small
answer (an inference result, a 429) each of them costs about as much as the other, and a profile of a
front-end at 16 concurrent single-image requests (py-spy, this 2-core machine) spent 18% of its time in
those two calls. `CoalescingTransport` (in `engine.transport`: the engine's socket uses it too) holds
what is written during one turn of the event loop and hands it to the real transport as one buffer at
the end of that turn (or at once before a close), so a response leaves in one call and one TCP
segment. Nothing waits longer than the current loop turn.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ranet_serve.engine.transport import CoalescingTransport


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` writing through a `CoalescingTransport`; pass it as `uvicorn.Config(http=...)`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
