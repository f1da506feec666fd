"""An httpx transport that sends through aiohttp: the client's logic, aiohttp's cheaper wire.

Why: the load generator runs on the machine it measures, and its CPU per request is taken from the
server. httpx's own transport (httpcore with anyio) spent most of the load generator's time: a
py-spy profile at 16 concurrent one-image requests put 68% of it in httpx and httpcore, and the
client cost 1.0-1.6 ms of CPU per request against 0.1 ms for `hey`. Sending the very requests httpx
builds through aiohttp's connection pool instead measured 430 us per request against 980 us (2-core
machine, same server, 2,000 requests from 16 clients). Everything above the wire stays httpx and the
client's own: request building, retries, error mapping, response parsing. aiohttp is optional (the
`fast` extra); `available()` says whether it is installed.

Answers are read whole before httpx sees them (the cheapest way for one-shot JSON), except a request
that accepts `text/event-stream` (`classify_stream`): its body is handed to httpx as it arrives, and
closing the httpx response early closes the connection, as httpx's own transport does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import httpx


def available() -> bool:
    """Whether aiohttp is installed (the `fast` extra)."""
    return importlib.util.find_spec("aiohttp") is not None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AiohttpTransport(...))`: at most `max_connections` connections.

    The session is created on first use, inside the running event loop (aiohttp binds it to the loop).
    aiohttp's failures become the httpx exceptions the client maps (`ConnectError`, `ReadTimeout`, ...),
    so a caller sees the same `RanetError`s with either transport.
    """

    def __init__(self, max_connections: int = 100):
        self.max_connections = max_connections
        self._session: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                auto_decompress=False,  # httpx decodes Content-Encoding itself
            )
        timeout = _timeout(request.extensions.get("timeout", {}))
        body = await request.aread()
        streamed = "text/event-stream" in request.headers.get("accept", "")
        try:
            answer = await self._session.request(
                request.method,
                str(request.url),
                data=body or None,
                headers=list(request.headers.multi_items()),
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent"),
            )
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
            if streamed:  # the body is read as the caller iterates it (server-sent events)
                stream = _Body(answer, request)
                return httpx.Response(answer.status, headers=headers, stream=stream, request=request)
            try:
                content = await answer.read()
            finally:
                answer.release()
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(answer.status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _timeout(spec: dict[str, float | None]) -> Any:
    """httpx's per-request timeouts (connect, read, write, pool) as aiohttp's."""
    import aiohttp

    return aiohttp.ClientTimeout(
        total=None, connect=spec.get("pool"), sock_connect=spec.get("connect"), sock_read=spec.get("read")
    )


class _Body(httpx.AsyncByteStream):
    """An aiohttp answer's body as httpx reads a streamed one: chunks as they arrive, aiohttp's failures
    as httpx's; closing before the end closes the connection (the server sees the client leave)."""

    def __init__(self, answer: Any, request: httpx.Request):
        self._answer = answer
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._answer.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=self._request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self._request) from exc

    async def aclose(self) -> None:
        if self._answer.content.at_eof():
            self._answer.release()  # read to the end: the connection goes back to the pool
        else:
            self._answer.close()
