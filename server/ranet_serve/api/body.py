"""Reading request bodies under a size limit, enforced while the stream arrives.

A declared Content-Length over the limit is refused before a byte is read; a body without one (chunked)
is cut off as soon as it passes the limit. Compressed bodies (`Content-Encoding: gzip|deflate`, which
KServe v2 clients may send) are inflated under the same limit, so a small zip bomb cannot grow past it.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from starlette.requests import Request

from ranet_serve.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError


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


async def stream_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks; raises PayloadTooLargeError once more than `limit` bytes have arrived."""
    check_declared_length(request, limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (decompressed) body, at most `limit` bytes."""
    buffer = bytearray()
    async for chunk in stream_body(request, limit):
        buffer += chunk
    return inflate(bytes(buffer), request.headers.get("content-encoding"), limit)


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
