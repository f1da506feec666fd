"""Anytime classification over Server-Sent Events: `classify_stream` on both clients.

The server streams a classification (`POST /v1/classify` with `stream=true`) as one `exit` event per
exit each image passes, in exit order, as soon as that exit is computed, then one `done` event (model,
version, operating point, timings); a failure after the stream started is an `error` event carrying the
error document and the HTTP status the request would have had. Errors found before the first exit
(bad input, unknown model, shed with 429) are ordinary JSON answers and raise, and are retried, exactly
as for `classify`.

A stream yields `ExitEvent`s and, last, a `StreamSummary` (what `classify` would have answered). Closing
it early (`close()`, leaving its `with` block, or `break` inside one) closes the connection, which
withdraws the request on the server: its images stop at their next stage boundary.

SSE is parsed here (a few lines over httpx's line iterators) rather than with a dependency: the server
sends `event:` and `data:` fields only, one JSON document per event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

import httpx

from ranet_client._protocol import (
    EVENT_STREAM,
    TRANSPORT_ERRORS,
    error_from_document,
    error_from_exception,
    parse_document,
)
from ranet_client.errors import ConnectionFailedError, RanetError
from ranet_client.results import ExitEvent, StreamSummary

StreamItem = ExitEvent | StreamSummary


class SSEDecoder:
    """Lines of a `text/event-stream` body to (event, data) messages (the WHATWG event-stream format).

    `feed` takes one line without its line ending and returns a message when the line ends one (an
    empty line), else None. `data` lines are joined with newlines; comments (`:`), `id` and `retry`
    are ignored; an event without `event:` is a "message".
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data and not self._event:
                return None
            message = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


class StreamAssembler:
    """Typed items from a classification stream's messages: `ExitEvent`s, then the `StreamSummary`.

    Raises the `RanetError` an `error` event stands for (mapped like an error answer), and
    `ConnectionFailedError` when the stream ends without `done` or `error` (`finish`). Events it does
    not know are skipped, so a newer server may add some.
    """

    def __init__(self, url: str):
        self.url = url
        self.finals: dict[int, ExitEvent] = {}
        self.summary: StreamSummary | None = None
        self._decoder = SSEDecoder()

    def line(self, line: str) -> StreamItem | None:
        """The item one line of the response completes, if any. Lines after `done` are read and
        dropped: the response is read to its end, so the connection can be reused."""
        message = self._decoder.feed(line)
        if message is None or self.summary is not None:
            return None
        return self.handle(*message)

    def handle(self, event: str, data: str) -> StreamItem | None:
        if event not in ("exit", "done", "error"):
            return None
        document = _document(data, event)
        if event == "exit":
            item = parse_document(document, ExitEvent.from_dict, 200)
            if item.final:
                self.finals[item.image] = item
            return item
        if event == "error":
            status = document.get("status")
            raise error_from_document(
                int(status) if isinstance(status, int) else 500,
                document,
                fallback="the server failed while streaming",
            )
        finals = self.finals
        self.summary = parse_document(document, lambda done: StreamSummary.from_done(done, finals), 200)
        return self.summary

    def finish(self) -> None:
        if self.summary is None:
            raise ConnectionFailedError(
                f"the stream from {self.url} ended before its done event", code="incomplete_stream"
            )


def _document(data: str, event: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise RanetError(
            f"the server sent a {event} event whose data is not JSON", status=200, code="invalid_response"
        ) from exc
    if not isinstance(document, dict):
        raise RanetError(
            f"the server sent a {event} event whose data is not an object",
            status=200,
            code="invalid_response",
        )
    return document


def _check_event_stream(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith(EVENT_STREAM):
        raise RanetError(
            f"asked for a stream, the server answered {response.status_code} "
            f"with {content_type or 'no content type'}",
            status=response.status_code,
            code="invalid_response",
        )


class ClassifyStream:
    """A streamed classification (`RanetClient.classify_stream`): iterate for `ExitEvent`s as they
    arrive, then the `StreamSummary` (also kept in `.summary`).

    The request is sent on entering the `with` block or at the first `next()`, whichever comes first;
    errors before the stream (4xx, 429 and 503 after retries, no connection) raise there. Use it as a
    context manager, or `close()` it, so an early stop closes the connection::

        with client.classify_stream(images, confidence=1) as stream:
            for item in stream:
                ...
    """

    def __init__(self, open_response: Callable[[], httpx.Response], url: str):
        self._open_response = open_response
        self._url = url
        self._response: httpx.Response | None = None
        self._items: Generator[StreamItem, None, None] | None = None
        self._closed = False
        self._assembler = StreamAssembler(url)

    @property
    def summary(self) -> StreamSummary | None:
        """The answer, once the `done` event has arrived (None before)."""
        return self._assembler.summary

    @property
    def response(self) -> httpx.Response | None:
        """The streaming HTTP response once the request was sent (None before)."""
        return self._response

    def _open(self) -> httpx.Response:
        if self._closed:
            raise RuntimeError("this stream is closed")
        if self._response is None:
            response = self._open_response()
            try:
                _check_event_stream(response)
            except RanetError:
                response.close()
                raise
            self._response = response
        return self._response

    def __enter__(self) -> ClassifyStream:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> ClassifyStream:
        return self

    def __next__(self) -> StreamItem:
        if self._closed:
            raise StopIteration
        if self._items is None:
            self._items = self._read(self._open())
        return next(self._items)

    def _read(self, response: httpx.Response) -> Generator[StreamItem, None, None]:
        assembler = self._assembler
        try:
            for line in response.iter_lines():
                if (item := assembler.line(line)) is not None:
                    yield item
            assembler.finish()
        except TRANSPORT_ERRORS as exc:
            raise error_from_exception(exc, self._url) from exc
        finally:
            response.close()

    def close(self) -> None:
        """Stop reading and close the connection (the server withdraws the request if it still runs)."""
        self._closed = True
        if self._items is not None:
            self._items.close()
        if self._response is not None:
            self._response.close()


class AsyncClassifyStream:
    """`ClassifyStream` for asyncio (`AsyncRanetClient.classify_stream`)::

    async with client.classify_stream(images, confidence=1) as stream:
        async for item in stream:
            ...
    """

    def __init__(self, open_response: Callable[[], Awaitable[httpx.Response]], url: str):
        self._open_response = open_response
        self._url = url
        self._response: httpx.Response | None = None
        self._items: AsyncGenerator[StreamItem, None] | None = None
        self._closed = False
        self._assembler = StreamAssembler(url)

    @property
    def summary(self) -> StreamSummary | None:
        """The answer, once the `done` event has arrived (None before)."""
        return self._assembler.summary

    @property
    def response(self) -> httpx.Response | None:
        """The streaming HTTP response once the request was sent (None before)."""
        return self._response

    async def _open(self) -> httpx.Response:
        if self._closed:
            raise RuntimeError("this stream is closed")
        if self._response is None:
            response = await self._open_response()
            try:
                _check_event_stream(response)
            except RanetError:
                await response.aclose()
                raise
            self._response = response
        return self._response

    async def __aenter__(self) -> AsyncClassifyStream:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncClassifyStream:
        return self

    async def __anext__(self) -> StreamItem:
        if self._closed:
            raise StopAsyncIteration
        if self._items is None:
            self._items = self._read(await self._open())
        return await anext(self._items)

    async def _read(self, response: httpx.Response) -> AsyncGenerator[StreamItem, None]:
        assembler = self._assembler
        try:
            async for line in response.aiter_lines():
                if (item := assembler.line(line)) is not None:
                    yield item
            assembler.finish()
        except TRANSPORT_ERRORS as exc:
            raise error_from_exception(exc, self._url) from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Stop reading and close the connection (the server withdraws the request if it still runs)."""
        self._closed = True
        if self._items is not None:
            await self._items.aclose()
        if self._response is not None:
            await self._response.aclose()
