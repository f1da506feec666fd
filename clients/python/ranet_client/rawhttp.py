"""A minimal HTTP/1.1 client on asyncio streams, for load generation: requests are pre-encoded bytes.

Why: the load generator and the stress benchmarks run on the machine they measure, and every
microsecond of client CPU is taken from the server. httpx spent about 1 ms per request (0.43 ms on
the aiohttp wire); writing pre-encoded bytes and reading one response costs about 0.1 ms, what `hey`
costs. Only what a load generator needs: keep-alive connections, Content-Length or chunked bodies, a
retry on a fresh connection when the server had closed an idle one. Not a general HTTP client (no
TLS, no redirects, no compression): `ranet_client.RanetClient` is that.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection: write a whole request, read one response (Content-Length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Answer:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.read()
            self.reusable = False
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return Answer(status, headers, body)

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


class Pool:
    """Idle connections are reused; a request finding none opens a new one (callers bound concurrency)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list[Connection] = []
        self.opened = 0

    async def request(self, payload: bytes) -> Answer:
        reused = bool(self.idle)
        if reused:
            connection = self.idle.pop()
        else:
            connection = await Connection.open(self.host, self.port)
            self.opened += 1
        try:
            answer = await connection.send(payload)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            connection.close()
            if reused and not getattr(exc, "partial", b""):
                # The server closed this idle keep-alive connection (its idle timeout) before our
                # request reached it: what every HTTP client does is retry once on a fresh connection.
                return await self.request_fresh(payload)
            raise
        except BaseException:
            connection.close()
            raise
        if connection.reusable:
            self.idle.append(connection)
        else:
            connection.close()
        return answer

    async def request_fresh(self, payload: bytes) -> Answer:
        connection = await Connection.open(self.host, self.port)
        self.opened += 1
        try:
            answer = await connection.send(payload)
        finally:
            connection.close()
        return answer

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


def encode_request(
    host: str, port: int, method: str, path: str, body: bytes = b"", content_type: str | None = None
) -> bytes:
    """One HTTP/1.1 request as bytes (keep-alive: the HTTP/1.1 default)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


def multipart(
    files: list[tuple[str, str, bytes, str]], boundary: str = "ranet-raw-boundary"
) -> tuple[bytes, str]:
    """A multipart/form-data body of (field, filename, data, content type) parts, and its Content-Type."""
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
        for field, filename, data, content_type in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
