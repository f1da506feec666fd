"""What the load generator sends requests to: a RANet Serve server, or a plain one-image classifier.

The load generator is the project's yardstick, so comparisons with other servers (TorchServe, a
hand-written FastAPI app) must use the very same loop, images, concurrency and report. A `Target`
hides the only thing that differs, the wire protocol: `RanetTarget` speaks RANet Serve's /v1 through
`AsyncRanetClient` (batches, budget knobs, exits, FLOPs and server timings); `PlainTarget` POSTs one
image per request to a fixed path, as TorchServe's `POST /predictions/<model>` and most hand-written
servers take it, and reads the class from a small JSON answer. What a plain server does not report
(exit, FLOPs, queue time) stays None instead of being made up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from ranet_client._base import USER_AGENT
from ranet_client._protocol import (
    TRANSPORT_ERRORS,
    error_from_document,
    error_from_exception,
    error_from_response,
    normalize_url,
)
from ranet_client.aio import AsyncRanetClient
from ranet_client.errors import ConnectionFailedError, RanetError, RequestTimeoutError
from ranet_client.rawhttp import Pool, encode_request, multipart

PlainBody = Literal["raw", "multipart"]
PLAIN_BODIES: tuple[str, ...] = ("raw", "multipart")


@dataclass(frozen=True)
class Prediction:
    """One image's answer as the load generator records it; None where the server does not say."""

    class_index: int | None
    label: str | None
    confidence: float | None = None
    exit: int | None = None
    flops: int | None = None
    budget_limited: bool = False


@dataclass(frozen=True)
class TargetAnswer:
    """One successful request: a prediction per image, in order, and the server-side time split if sent."""

    predictions: tuple[Prediction, ...]
    queue_ms: float | None = None
    inference_ms: float | None = None


class Target(Protocol):
    """A server the load generator can drive. `classify` raises a `RanetError` for every failure (an
    error status, no answer, an unreadable answer), so failures are counted alike for every target."""

    @property
    def takes_knobs(self) -> bool:
        """Whether budget knobs (max_flops, top_k, ...) mean anything to this server."""
        ...

    @property
    def max_images_per_request(self) -> int | None:
        """None: any batch the server accepts."""
        ...

    async def classify(self, images: Sequence[bytes], knobs: Mapping[str, Any]) -> TargetAnswer: ...

    async def aclose(self) -> None: ...


class RanetTarget:
    """RANet Serve through `AsyncRanetClient`; `own` closes the client with the target."""

    takes_knobs = True
    max_images_per_request: int | None = None

    def __init__(self, client: AsyncRanetClient, *, own: bool = True):
        self.client = client
        self._own = own

    async def classify(self, images: Sequence[bytes], knobs: Mapping[str, Any]) -> TargetAnswer:
        answer = await self.client.classify(list(images), **dict(knobs))
        return TargetAnswer(
            predictions=tuple(
                Prediction(r.class_index, r.label, r.confidence, r.exit, r.flops, r.budget_limited)
                for r in answer.results
            ),
            queue_ms=answer.timings.queue_ms,
            inference_ms=answer.timings.inference_ms,
        )

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()


class TargetPool:
    """Several targets of one server, each with its own small connection pool; a request goes to the
    least busy one.

    Why not one client with many connections: httpx's pool (httpcore 1.0) checks every connection it
    holds, with system calls, each time it hands one out, and hands them out unfairly. Measured against
    one `ranet serve` at 16 concurrent one-image requests (2-core machine): one client with 16
    connections spent 1.4 ms of CPU per request and saw a p99 of 133 ms while the server answered every
    request within 15 ms; 16 clients with one connection each spent 0.9 ms and saw 33 ms. A load
    generator that slow measures itself, not the server.
    """

    def __init__(self, targets: Sequence[Target]):
        if not targets:
            raise ValueError("a target pool needs at least one target")
        self.targets = tuple(targets)
        self._busy = [0] * len(self.targets)

    @property
    def takes_knobs(self) -> bool:
        return self.targets[0].takes_knobs

    @property
    def max_images_per_request(self) -> int | None:
        return self.targets[0].max_images_per_request

    async def classify(self, images: Sequence[bytes], knobs: Mapping[str, Any]) -> TargetAnswer:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            return await self.targets[index].classify(images, knobs)
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        await asyncio.gather(*(target.aclose() for target in self.targets))


def parse_plain_answer(body: Any) -> Prediction:
    """A plain server's answer for one image: `{"class_index": 3, "label": "Dress", "confidence": 0.9}`.

    `class_index` or `label` must be present (either is enough to judge accuracy); `confidence` is
    optional. A one-element list around the object is accepted too (some handlers wrap their answer).
    Raises ValueError for anything else.
    """
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object with class_index and/or label")
    index, label, confidence = body.get("class_index"), body.get("label"), body.get("confidence")
    if index is None and label is None:
        raise ValueError("the answer has neither class_index nor label")
    if isinstance(index, bool) or (index is not None and not isinstance(index, int)):
        raise ValueError(f"class_index must be an integer, got {index!r}")
    return Prediction(
        class_index=index,
        label=None if label is None else str(label),
        confidence=None if confidence is None else float(confidence),
    )


class PlainTarget:
    """A one-image-per-request classifier at `url` + `path`: the body is the image file itself
    (`raw`, e.g. TorchServe) or a multipart form with the file in `field` (`multipart`, FastAPI's
    `UploadFile`). No retries: a load test counts failures rather than hiding them."""

    takes_knobs = False
    max_images_per_request: int | None = 1

    def __init__(
        self,
        url: str,
        path: str,
        *,
        body: PlainBody = "raw",
        field: str = "file",
        timeout: float = 30.0,
        max_connections: int = 100,
        content_type: str = "image/png",
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if body not in PLAIN_BODIES:
            raise ValueError(f"unknown body {body!r}; use one of {', '.join(PLAIN_BODIES)}")
        if not path.startswith("/"):
            raise ValueError(f"the path must start with '/', got {path!r}")
        self.url = normalize_url(url)
        self.path = path
        self.body = body
        self.field = field
        self.content_type = content_type
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def classify(self, images: Sequence[bytes], knobs: Mapping[str, Any]) -> TargetAnswer:
        if len(images) != 1:
            raise ValueError(f"a plain target takes one image per request, got {len(images)}")
        if knobs:
            raise ValueError(f"a plain target takes no knobs, got {', '.join(sorted(knobs))}")
        if self.body == "raw":
            kwargs: dict[str, Any] = {"content": images[0], "headers": {"Content-Type": self.content_type}}
        else:
            kwargs = {"files": {self.field: ("image.png", images[0], self.content_type)}}
        try:
            response = await self._http.post(self.path, **kwargs)
        except TRANSPORT_ERRORS as exc:
            raise error_from_exception(exc, self.url) from exc
        if not response.is_success:
            raise error_from_response(response)
        try:
            prediction = parse_plain_answer(response.json())
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise RanetError(
                f"{self.url}{self.path} answered {response.status_code} with an unreadable body: {exc}",
                status=response.status_code,
                code="invalid_response",
            ) from exc
        return TargetAnswer(predictions=(prediction,))

    async def aclose(self) -> None:
        await self._http.aclose()


class RawTarget:
    """Any target over `ranet_client.rawhttp`: each distinct request is encoded to bytes once and then
    written as it is (the `raw` wire of the load generator, about a tenth of httpx's CPU per request).

    `ranet`: RANet Serve's v1 multipart (`files` parts, knobs in the query string), answers parsed into
    predictions with exits, FLOPs and server timings. Otherwise a plain one-image server at `path`
    (`body` raw or multipart, as `PlainTarget`). No retries: a load test counts failures. Error answers
    raise the same `RanetError` classes as the other targets (same error documents, same mapping).
    """

    CACHE_LIMIT = 4096  # distinct (images, knobs) requests kept encoded

    def __init__(
        self,
        url: str,
        *,
        ranet: bool,
        model: str | None = None,
        path: str | None = None,
        body: PlainBody = "raw",
        field: str = "file",
        timeout: float = 30.0,
        content_type: str = "image/png",
    ):
        parts = urlsplit(normalize_url(url))
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the raw wire speaks plain http to a host, got {url!r}")
        self.url = normalize_url(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.ranet = ranet
        self.takes_knobs = ranet
        self.max_images_per_request: int | None = None if ranet else 1
        self.path = path or (f"/v1/models/{model}/classify" if model else "/v1/classify")
        self.body, self.field, self.content_type = body, field, content_type
        self.timeout = timeout
        self._pool = Pool(self.host, self.port)
        self._encoded: dict[tuple[tuple[int, ...], tuple[tuple[str, str], ...]], bytes] = {}

    async def classify(self, images: Sequence[bytes], knobs: Mapping[str, Any]) -> TargetAnswer:
        request = self._request(images, knobs)
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._pool.request(request)
        except TimeoutError as exc:
            raise RequestTimeoutError(f"no answer from {self.url} in time", code="timeout") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ConnectionFailedError(
                f"could not reach {self.url}: {exc or type(exc).__name__}", code="connection_failed"
            ) from exc
        try:
            document = json.loads(answer.body) if answer.body else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if not 200 <= answer.status < 300:
            raise error_from_document(
                answer.status, document, fallback=answer.body[:200].decode(errors="replace")
            )
        try:
            return self._parse(document)
        except (KeyError, TypeError, ValueError) as exc:
            raise RanetError(
                f"{self.url}{self.path} answered {answer.status} with an unreadable body: {exc}",
                status=answer.status,
                code="invalid_response",
            ) from exc

    def _request(self, images: Sequence[bytes], knobs: Mapping[str, Any]) -> bytes:
        if not self.ranet and (len(images) != 1 or knobs):
            raise ValueError("a plain target takes one image and no knobs per request")
        key = (tuple(id(image) for image in images), tuple(sorted((k, str(v)) for k, v in knobs.items())))
        request = self._encoded.get(key)
        if request is None:
            request = self._encode(images, dict(key[1]))
            if len(self._encoded) >= self.CACHE_LIMIT:
                self._encoded.clear()
            self._encoded[key] = request
        return request

    def _encode(self, images: Sequence[bytes], knobs: dict[str, str]) -> bytes:
        if self.ranet:
            files = [("files", f"{i}.png", data, self.content_type) for i, data in enumerate(images)]
            body, media_type = multipart(files)
            path = f"{self.path}?{urlencode(knobs)}" if knobs else self.path
            return encode_request(self.host, self.port, "POST", path, body, media_type)
        if self.body == "raw":
            return encode_request(self.host, self.port, "POST", self.path, images[0], self.content_type)
        body, media_type = multipart([(self.field, "image.png", images[0], self.content_type)])
        return encode_request(self.host, self.port, "POST", self.path, body, media_type)

    def _parse(self, document: Any) -> TargetAnswer:
        if not self.ranet:
            return TargetAnswer(predictions=(parse_plain_answer(document),))
        timings = document.get("timings") or {}
        return TargetAnswer(
            predictions=tuple(
                Prediction(
                    int(r["class_index"]),
                    r.get("label"),
                    float(r["confidence"]),
                    int(r["exit"]),
                    int(r["flops"]),
                    bool(r.get("budget_limited", False)),
                )
                for r in document["results"]
            ),
            queue_ms=timings.get("queue_ms"),
            inference_ms=timings.get("inference_ms"),
        )

    async def aclose(self) -> None:
        self._pool.close()
