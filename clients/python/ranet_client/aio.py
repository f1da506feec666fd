"""`AsyncRanetClient`: the asyncio client, the same API as `RanetClient` with awaitable calls."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from urllib.parse import quote

import httpx

from ranet_client._base import ClientBase, default_headers
from ranet_client._protocol import (
    DEFAULT_URL,
    TRANSPORT_ERRORS,
    Encoding,
    Prepared,
    error_from_exception,
    error_from_response,
    json_or_empty,
    parse_body,
)
from ranet_client.budget import FlopsValue, OnDeadline
from ranet_client.errors import RanetError, UnavailableError
from ranet_client.images import ImageInput
from ranet_client.results import ClassifyResponse, Health, ModelInfo, ModelList, Readiness
from ranet_client.retry import RetryPolicy
from ranet_client.streams import AsyncClassifyStream


class AsyncRanetClient(ClientBase):
    """Asynchronous client of a RANet Serve server; one instance serves many concurrent calls.

    Use as an async context manager (or await `aclose`)::

        async with AsyncRanetClient("http://127.0.0.1:8080") as client:
            answers = await asyncio.gather(*(client.classify(p, target_flops="15M") for p in paths))

    `max_connections` bounds the connection pool (concurrent requests beyond it wait for a connection).
    `sleep` and `rng` are injectable so tests can check retry waits without waiting; `transport`
    replaces the network (e.g. `httpx.MockTransport`). `api_key` is sent as `Authorization: Bearer`
    to servers that require one (`RANET_API_KEY`).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | int | None = None,
        encoding: Encoding = "multipart",
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_connections: int = 100,
        rng: random.Random | None = None,
    ):
        super().__init__(url, model=model, timeout=timeout, retry=retry, encoding=encoding, rng=rng)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=self.timeout,
            headers=default_headers(api_key, headers),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRanetClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- inference ------------------------------------------------------------------------------------

    async def classify(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        *,
        model: str | None = None,
        max_flops: FlopsValue | None = None,
        target_flops: FlopsValue | None = None,
        confidence: float | None = None,
        thresholds: Sequence[float] | str | None = None,
        operating_point: str | None = None,
        top_k: int | None = None,
        version: str | None = None,
        deadline_ms: float | None = None,
        on_deadline: OnDeadline | None = None,
        encoding: Encoding | None = None,
    ) -> ClassifyResponse:
        """Classify one image or a list of images in one request.

        `images`: a path, bytes, binary file, PIL image or uint8 numpy array, or a list/tuple of them.
        Budget knobs (all optional, see the server's budget semantics): `max_flops` caps each image's
        cost (a number or "20M"); `target_flops` picks the best operating point within an average cost;
        `confidence`/`thresholds` override the exit thresholds; `operating_point` picks one by name.
        `deadline_ms` is the server-side deadline; `on_deadline="best"` answers a deadline that passes
        mid-cascade with each image's deepest exit (`deadline_limited`) instead of a 504.
        Raises a `RanetError` subclass (e.g. `BudgetError` when `max_flops` is below the cheapest exit).
        """
        prepared = self._prepare_classify(
            images,
            model=model,
            encoding=encoding,
            max_flops=max_flops,
            target_flops=target_flops,
            confidence=confidence,
            thresholds=thresholds,
            operating_point=operating_point,
            top_k=top_k,
            version=version,
            deadline_ms=deadline_ms,
            on_deadline=on_deadline,
        )
        return parse_body(await self._send(prepared), ClassifyResponse.from_dict)

    def classify_stream(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        *,
        model: str | None = None,
        max_flops: FlopsValue | None = None,
        target_flops: FlopsValue | None = None,
        confidence: float | None = None,
        thresholds: Sequence[float] | str | None = None,
        operating_point: str | None = None,
        top_k: int | None = None,
        version: str | None = None,
        deadline_ms: float | None = None,
        on_deadline: OnDeadline | None = None,
        encoding: Encoding | None = None,
    ) -> AsyncClassifyStream:
        """`RanetClient.classify_stream` for asyncio. Not a coroutine: it returns the stream, used as
        `async with client.classify_stream(images, confidence=1) as stream:` then `async for item in
        stream:` (`ExitEvent`s, then the `StreamSummary`); `aclose()` it when not in `async with`.
        """
        prepared = self._prepare_classify(
            images,
            model=model,
            encoding=encoding,
            max_flops=max_flops,
            target_flops=target_flops,
            confidence=confidence,
            thresholds=thresholds,
            operating_point=operating_point,
            top_k=top_k,
            version=version,
            deadline_ms=deadline_ms,
            on_deadline=on_deadline,
            stream=True,
        )
        return AsyncClassifyStream(lambda: self._send(prepared, stream=True), self.url)

    # -- catalogue and health -----------------------------------------------------------------------

    async def models(self) -> ModelList:
        """Every model the server has, with versions, exits, operating points and the default model."""
        return parse_body(await self._send(Prepared("GET", "/v1/models")), ModelList.from_dict)

    async def model(self, name: str) -> ModelInfo:
        """One model's versions, input spec, labels, exits and operating points (NotFoundError if none)."""
        return parse_body(
            await self._send(Prepared("GET", f"/v1/models/{quote(name, safe='')}")), ModelInfo.from_dict
        )

    async def health(self) -> Health:
        """Liveness; never retried (it reports the present). Raises TransportError when unreachable."""
        response = await self._send(Prepared("GET", "/healthz"), retry=False, accept_errors=True)
        return Health.from_dict(json_or_empty(response), response.is_success)

    async def ready(self) -> Readiness:
        """Readiness: a 503 is an answer here ("not ready"), not an error."""
        response = await self._send(Prepared("GET", "/readyz"), retry=False, accept_errors=True)
        if not response.is_success and response.status_code != 503:
            raise error_from_response(response)
        return Readiness.from_dict(json_or_empty(response), response.is_success)

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> Readiness:
        """Poll readiness until ready or `timeout` seconds pass (then UnavailableError); bounded."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = await self.ready()
                if state.ready:
                    return state
                reason = state.status
            except RanetError as exc:
                reason = str(exc)
            if time.monotonic() + interval > deadline:
                raise UnavailableError(
                    f"server at {self.url} not ready after {timeout:g} s: {reason}", code="not_ready"
                )
            await self._sleep(interval)

    async def metrics(self) -> str:
        """The Prometheus exposition text of `/metrics`."""
        return (await self._send(Prepared("GET", "/metrics"))).text

    # -- transport ------------------------------------------------------------------------------------

    async def _send(
        self, prepared: Prepared, *, retry: bool = True, accept_errors: bool = False, stream: bool = False
    ) -> httpx.Response:
        """Send with the retry policy; return a 2xx answer (any answer with `accept_errors`) or raise.

        `stream`: the answer's body is not read yet (the caller reads and closes it); an error answer's
        body is read, and the response closed, before it becomes an exception.
        """
        policy = self.retry if retry else RetryPolicy.never()
        attempt = 0
        while True:
            attempt += 1
            error: RanetError
            cause: Exception | None = None
            try:
                if stream:
                    request = self._http.build_request(prepared.method, prepared.path, **prepared.kwargs)
                    response = await self._http.send(request, stream=True)
                else:
                    response = await self._http.request(prepared.method, prepared.path, **prepared.kwargs)
            except TRANSPORT_ERRORS as exc:
                error, cause = error_from_exception(exc, self.url, attempt), exc
            else:
                if response.is_success or accept_errors:
                    return response
                try:
                    if stream:
                        await response.aread()
                        await response.aclose()
                    error = error_from_response(response, attempt)
                except TRANSPORT_ERRORS as exc:  # the error answer's body did not arrive
                    await response.aclose()
                    error, cause = error_from_exception(exc, self.url, attempt), exc
            wait = policy.delay(attempt, error, self.rng)
            if wait is None:
                raise error from cause
            await self._sleep(wait)
