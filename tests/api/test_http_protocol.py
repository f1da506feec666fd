"""The front-end's HTTP protocol: what is written in one loop turn leaves in one write, and a request
head over its size or time limit is refused with a JSON error while the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest
import uvicorn

from ranet_serve.api.http_protocol import CoalescingHttpToolsProtocol
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


# -- the bounded request head, on a real uvicorn server ------------------------------------------------


class _QuickHeadProtocol(CoalescingHttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout_s = 0.5


async def _echo_length(scope: Any, receive: Any, send: Any) -> None:
    """A minimal ASGI app: answers with the size of the body it read."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def head_server() -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_echo_length, http=_QuickHeadProtocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.01)
    yield listener.getsockname()
    server.should_exit = True
    thread.join(10)
    listener.close()


def _exchange(address: tuple[str, int], *chunks: bytes) -> bytes:
    """Send `chunks` on one connection and read until the server closes it (a 10 s guard, no sleeps)."""
    with socket.create_connection(address, timeout=10) as connection:
        for chunk in chunks:
            try:
                connection.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):  # refused mid-send: read the answer
                break
        received = b""
        while data := connection.recv(65536):
            received += data
    return received


def _json_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def test_a_head_over_the_limit_answers_431_json_and_the_server_keeps_serving(head_server) -> None:
    oversized = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (128 * 1024) + b"\r\n\r\n"
    assert _json_error(
        _exchange(head_server, *(oversized[i : i + 8192] for i in range(0, len(oversized), 8192)))
    ) == (
        431,
        "headers_too_large",
    )
    ok = _exchange(head_server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"\r\n\r\n0")


def test_a_head_that_stops_arriving_answers_408_json(head_server) -> None:
    assert _json_error(_exchange(head_server, b"POST / HTTP/1.1\r\nHost: x\r\n")) == (408, "request_timeout")


def test_a_large_body_in_one_write_is_not_counted_as_head(head_server) -> None:
    body = b"z" * (1 << 20)  # 16 times the head limit, sent with its head in one write
    request = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = _exchange(head_server, request + body)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n%d" % len(body))


def test_a_request_httptools_cannot_parse_answers_400_json(head_server) -> None:
    bad_length = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
    assert _json_error(_exchange(head_server, bad_length)) == (400, "invalid_http")
