"""Reading request bodies under a size limit and a time limit, enforced while the stream arrives.

A declared Content-Length over the limit is refused before a byte is read; a body without one (chunked)
is cut off as soon as it passes the limit. Compressed bodies (`Content-Encoding: gzip|deflate`, which
KServe v2 clients may send) are inflated under the same limit, so a small zip bomb cannot grow past it.

A body still arriving `body_read_timeout_s` after reading began answers 408 and the connection closes:
a client trickling its body (slowloris) costs an idle coroutine for that long, never a worker thread,
and not forever. A client that disconnects mid-body ends the request as 499, not as a server error.
"""

from __future__ import annotations

import asyncio
import json
import zlib

from starlette.requests import Request

from ranet_serve.api.errors import BodyTimeoutError, ClientDisconnectedError
from ranet_serve.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError

DEFAULT_BODY_READ_TIMEOUT_S = 30.0


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes", limit=limit)


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse early when the client announces a body over the limit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError as exc:
        raise InvalidInputError(f"invalid Content-Length header {declared[:32]!r}") from exc
    if length > limit:
        raise _too_large(limit)


def body_read_timeout(request: Request) -> float:
    """The app's `body_read_timeout_s` (from its settings on `app.state`), else the default."""
    app = request.scope.get("app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    return float(getattr(settings, "body_read_timeout_s", DEFAULT_BODY_READ_TIMEOUT_S))


async def receive_chunks(request: Request, limit: int, timeout: float | None = None) -> list[bytes]:
    """The body's chunks as they arrived; raises PayloadTooLargeError once more than `limit` bytes have
    arrived, BodyTimeoutError when the whole body has not arrived `timeout` seconds (default: the app's
    `body_read_timeout_s`) after reading began, ClientDisconnectedError when the client went away.

    Reads the ASGI messages itself under one timeout for the whole body: a small body is one message
    already buffered by the server, and Starlette's stream plus a timeout per chunk cost more than the
    read they guarded."""
    check_declared_length(request, limit)
    seconds = body_read_timeout(request) if timeout is None else timeout
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnectedError("the client closed the connection mid-body")
                chunk = message.get("body", b"")
                if chunk:
                    received += len(chunk)
                    if received > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks
    except TimeoutError:
        raise BodyTimeoutError(
            f"the request body did not arrive within {seconds:g} s", timeout_seconds=seconds
        ) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (decompressed) body, at most `limit` bytes."""
    chunks = await receive_chunks(request, limit)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return inflate(body, request.headers.get("content-encoding"), limit)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a `Content-Encoding`; the inflated size is bounded by `limit` too."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS  # HTTP "deflate" is the zlib format
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Encoding {encoding[:32]!r}; use gzip or deflate"
        )
    decompressor = zlib.decompressobj(wbits)
    try:
        inflated = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"body is not valid {encoding} data ({exc})") from exc
    if len(inflated) > limit or decompressor.unconsumed_tail:
        raise _too_large(limit)
    if not decompressor.eof:
        raise InvalidInputError(f"body is truncated {encoding} data")
    return inflated


def parse_json(data: bytes | str, what: str) -> object:
    """`json.loads` of a request's JSON, every way it can fail an `InvalidInputError` (400).

    Beyond malformed text and bad UTF-8 (ValueErrors), a document nested deeper than the interpreter's
    recursion limit raises RecursionError, and an integer of more than 4300 digits a ValueError of its
    own: both were 500s."""
    try:
        return json.loads(data)
    except RecursionError:
        raise InvalidInputError(f"{what} is nested too deeply to be read") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the integer-digits limit
        raise InvalidInputError(f"{what} is not valid JSON ({exc})") from exc
