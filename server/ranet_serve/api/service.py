"""The inference service: the one data plane every protocol front-end calls.

v1 and KServe v2 routes (REST and gRPC) translate their wire formats into one `ClassifyRequest` and
encode the one `ClassifyResult`; in between, this front-end half looks the model up in the engine's catalog,
validates the deadline, decodes and preprocesses the images (in a worker thread unless the request is
small), hands the engine one `EngineRequest` and waits for it until the deadline. Per-request metrics
are counted here. The engine (in this process or another) does everything else.

`stream` is the same request as anytime prediction: it yields every exit each image passes as the
engine reports it, then the result; closing the stream withdraws the request from the engine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType

import numpy as np
from starlette.concurrency import run_in_threadpool

from ranet_serve.api.errors import status_for
from ranet_serve.api.images import ImageLimits, declared_pixels, preprocess_batch
from ranet_serve.cascade.policy import Budget
from ranet_serve.cascade.results import ImageResult
from ranet_serve.engine.catalog import CatalogEntry
from ranet_serve.engine.client import EngineClient
from ranet_serve.engine.records import EngineRequest, EngineResult, ExitEvent, OnDeadline
from ranet_serve.errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidRequestError,
    PayloadTooLargeError,
    RanetServeError,
)
from ranet_serve.export.manifest import InputSpec
from ranet_serve.metrics import RequestMetrics, model_label
from ranet_serve.settings import Settings

# Encoded bytes beyond which a request is always decoded in a worker thread (see `_decodes_inline`).
INLINE_DECODE_MAX_BYTES = 64 * 1024

# How long past its deadline an `on_deadline=best` request waits for the engine's best answer: the
# engine answers at the first stage boundary after the deadline, so this covers one stage run (a few
# ms on the default model; a batch of the ImageNet-sized configs takes tens of ms on a CPU).
BEST_EFFORT_GRACE_SECONDS = 0.25


@dataclass(frozen=True)
class EncodedImages:
    """Encoded image files (PNG, JPEG, ...) as received; decoded against the model's input spec."""

    items: tuple[bytes, ...]


@dataclass(frozen=True)
class ClassifyRequest:
    """One inference request, whatever protocol it came in on.

    `images` is either encoded files or a float32 array [N, C, H, W] already in the model's input
    space. `deadline_ms` counts from `received` (a `time.monotonic()` value); None means the server's
    request timeout.
    """

    images: EncodedImages | np.ndarray
    model: str | None = None  # None: the server's default model
    version: str | None = None  # None: the latest version that loaded
    budget: Budget = field(default_factory=Budget)
    top_k: int = 1
    all_probabilities: bool = False  # return every class's probability (top_k = number of classes)
    deadline_ms: float | None = None
    on_deadline: OnDeadline = "error"  # "best": a passed deadline answers with the deepest exits so far
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ExitUpdate:
    """One exit an image of a streamed request passed (`final`: the exit that answers it)."""

    image: int
    result: ImageResult
    final: bool
    labels: tuple[str, ...]  # class index -> label of the model version that computed it
    model: str
    version: str


@dataclass(frozen=True)
class ClassifyResult:
    """What a protocol needs to answer: per-image results in request order, plus timings."""

    model: str
    version: str
    operating_point: str
    labels: tuple[str, ...]  # class index -> label
    images: tuple[ImageResult, ...]
    queue_seconds: float
    inference_seconds: float
    total_seconds: float


class RequestTracking:
    """The async context of `InferenceService.track`: in-flight gauge, then status, duration and reason.

    A class rather than an `asynccontextmanager` generator: this runs around every request, and the
    generator machinery cost several times the metric updates it wraps.

    A streamed response outlives its handler: the handler calls `hand_over()` and the stream calls
    `finish` when it ends, so duration and status cover the whole stream."""

    __slots__ = ("handed_over", "inflight", "label", "metrics", "protocol", "started")

    def __init__(self, metrics: RequestMetrics, label: str, protocol: str = "http"):
        self.metrics = metrics
        self.label = label
        self.protocol = protocol
        self.inflight = metrics.inflight_child(label)
        self.started = 0.0
        self.handed_over = False

    async def __aenter__(self) -> None:
        self.started = time.perf_counter()
        self.inflight.inc()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.handed_over:
            self.finish(exc)

    def hand_over(self) -> None:
        """Leaving the `async with` no longer ends the request: whoever took it over calls `finish`."""
        self.handed_over = True

    def finish(self, exc: BaseException | None) -> None:
        """The request ended: with `exc` None it answered 200; otherwise the status `exc` maps to."""
        self.inflight.dec()
        seconds = time.perf_counter() - self.started
        protocol = self.protocol
        if exc is None:
            self.metrics.request_finished(self.label, 200, seconds, protocol=protocol)
        elif isinstance(exc, Exception):
            status = status_for(exc)
            self.metrics.request_finished(self.label, status, seconds, _reason(exc, status), protocol)
        else:  # cancelled: the client went away
            self.metrics.request_finished(self.label, 499, seconds, "cancelled", protocol)


class InferenceService:
    """Lookup, deadline, preprocessing and waiting for every inference request; metrics per request."""

    def __init__(
        self,
        settings: Settings,
        engine: EngineClient,
        metrics: RequestMetrics,
        on_served: Callable[[float], None] | None = None,
    ):
        """`on_served(inference_seconds)` hears the engine's inference time of every served request
        (the admission limit's measure of the model, free of queueing)."""
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.on_served = on_served
        self.limits = ImageLimits(
            max_image_bytes=settings.max_image_bytes, max_image_pixels=settings.max_image_pixels
        )

    def track(self, model: str | None, protocol: str = "http") -> RequestTracking:
        """Count one inference request (status, duration, in-flight, rejections) around its handler.

        Wraps the whole handler, body reading, decoding and encoding included, so a request rejected
        at the edge counts too. The model label is the requested name only if the engine serves it;
        `protocol` ("http" or "grpc") is the front-end it came in on.
        """
        return RequestTracking(self.metrics, self.model_label(model), protocol)

    def model_label(self, model: str | None) -> str:
        return model_label(model or self.default_model(), self.engine.catalog.has_model)

    def default_model(self) -> str:
        """The model a request that names none gets now (`Catalog.default_model` holds the rule)."""
        return self.engine.catalog.default_model(
            self.settings.default_model, explicit=self.settings.default_model_explicit
        )

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Run one request; raises the domain errors the API maps to statuses."""
        entry = self._lookup(request)
        deadline = request.received + self.timeout_seconds(request.deadline_ms)
        # While this request is decoded the scheduler knows it is coming, so an open batch waits for
        # it; with nothing on its way a batch closes without waiting out the queue delay.
        with self.engine.arriving(entry.name, request.version):
            images = await self._decode(request, entry, deadline)
            waiting = self.engine.infer(self._engine_request(request, entry, deadline), images)
            result = await _wait(waiting, deadline, request.on_deadline)
        return self._result(request, entry, result)

    async def stream(self, request: ClassifyRequest) -> AsyncGenerator[ExitUpdate | ClassifyResult, None]:
        """Anytime prediction: every exit each image passes, in order, as the engine reports it, then
        the `ClassifyResult` last. Raises what `classify` raises, at the point it happens; closing
        the iterator early (the client left) withdraws the request, and its images stop at their next
        stage boundary."""
        entry = self._lookup(request)
        deadline = request.received + self.timeout_seconds(request.deadline_ms)
        labels = entry.require_manifest().labels
        updates: asyncio.Queue[ExitEvent | None] = asyncio.Queue()
        with self.engine.arriving(entry.name, request.version):
            images = await self._decode(request, entry, deadline)
            engine_request = replace(self._engine_request(request, entry, deadline), stream=True)
            waiting = self.engine.infer(engine_request, images, updates.put_nowait)
            task = asyncio.ensure_future(_wait(waiting, deadline, request.on_deadline))
        # The engine hands every exit event over before the answer, so this marker comes last.
        task.add_done_callback(lambda _: updates.put_nowait(None))
        try:
            while (event := await updates.get()) is not None:
                yield ExitUpdate(event.image, event.result, event.final, labels, entry.name, entry.version)
            yield self._result(request, entry, task.result())
        finally:
            if not task.done():
                task.cancel()

    def _lookup(self, request: ClassifyRequest) -> CatalogEntry:
        """The ready catalog entry the request names (or the default model's)."""
        if request.model is None:
            return self.engine.catalog.find_default(
                self.settings.default_model,
                explicit=self.settings.default_model_explicit,
                version=request.version,
            )
        return self.engine.catalog.find_ready(request.model, request.version)

    async def _decode(self, request: ClassifyRequest, entry: CatalogEntry, deadline: float) -> np.ndarray:
        """The request's images in the model's input space (see `_decodes_inline`), before the deadline."""
        spec = entry.require_manifest().input
        if self._decodes_inline(request.images):
            images = self._prepare(request.images, spec)
        else:
            images = await run_in_threadpool(self._prepare, request.images, spec)
        if deadline - time.monotonic() <= 0:
            raise DeadlineExceededError("deadline passed before inference started (decoding took too long)")
        return images

    @staticmethod
    def _engine_request(request: ClassifyRequest, entry: CatalogEntry, deadline: float) -> EngineRequest:
        return EngineRequest(
            model=entry.name,
            version=request.version,
            budget=request.budget,
            top_k=request.top_k,
            all_probabilities=request.all_probabilities,
            received=request.received,
            deadline=deadline,
            on_deadline=request.on_deadline,
        )

    def _result(self, request: ClassifyRequest, entry: CatalogEntry, result: EngineResult) -> ClassifyResult:
        if self.on_served is not None:
            self.on_served(result.inference_seconds)
        labels = entry.require_manifest().labels
        if result.version != entry.version:  # a reload swapped the latest version meanwhile
            labels = self.engine.catalog.find(result.model, result.version).require_manifest().labels
        return ClassifyResult(
            model=result.model,
            version=result.version,
            operating_point=result.operating_point,
            labels=labels,
            images=result.images,
            queue_seconds=result.queue_seconds,
            inference_seconds=result.inference_seconds,
            total_seconds=time.monotonic() - request.received,
        )

    def timeout_seconds(self, deadline_ms: float | None) -> float:
        """A request's time budget: its `deadline_ms` (checked here, once), else the server's timeout."""
        if deadline_ms is None:
            return self.settings.request_timeout_ms / 1000.0
        if not math.isfinite(deadline_ms) or deadline_ms <= 0:
            raise InvalidRequestError(f"deadline_ms must be a positive number, got {deadline_ms}")
        return deadline_ms / 1000.0

    def _decodes_inline(self, images: EncodedImages | np.ndarray) -> bool:
        """Whether a request is small enough to decode on the event loop instead of a worker thread.

        Handing work to a worker thread costs the event loop more than decoding one small image: in a
        profile of the server at 16 concurrent one-image requests (Fashion-MNIST PNGs, 880 bytes, 37 us
        to decode), the thread handoff took 15% of the event loop's time. Requests whose images declare
        few pixels in all are decoded in place; anything larger still goes to a thread, so one request
        never holds up the others for long. The header is read first (11 us), so a small file that
        declares a huge image (a decompression bomb) is not decoded here.
        """
        max_pixels = self.settings.inline_decode_max_pixels
        if max_pixels <= 0:
            return False
        if not isinstance(images, EncodedImages):
            return int(images.size) <= max_pixels  # an array is only checked and converted
        if sum(len(data) for data in images.items) > INLINE_DECODE_MAX_BYTES:
            return False
        total = 0
        for data in images.items:
            pixels = declared_pixels(data)
            if pixels is None:
                return False  # let the worker thread's full decode say what is wrong
            total += pixels
            if total > max_pixels:
                return False
        return True

    def _prepare(self, images: EncodedImages | np.ndarray, spec: InputSpec) -> np.ndarray:
        """Decode or check the images into a float32 [N, C, H, W] tensor (see `_decodes_inline`)."""
        limit = self.settings.max_images_per_request
        count = (
            len(images.items)
            if isinstance(images, EncodedImages)
            else int(images.shape[0])
            if images.ndim
            else 0
        )
        if count == 0:
            raise InvalidInputError("the request contains no images")
        if count > limit:
            raise PayloadTooLargeError(
                f"{count} images in one request; at most {limit} are allowed", limit=limit
            )
        if isinstance(images, EncodedImages):
            items = list(images.items)
            return np.ascontiguousarray(
                preprocess_batch(items, spec, self.limits, draft=self.settings.jpeg_draft)
            )
        return _check_tensor(images, spec)


def _reason(exc: Exception, status: int) -> str:
    """A bounded rejection reason: the error's own `reason` detail (queue_full, shutdown) or its code."""
    if isinstance(exc, RanetServeError):
        reason = exc.details.get("reason")
        return reason if isinstance(reason, str) else exc.code
    return "internal_error" if status >= 500 else "invalid_request"


async def _wait(waiting: Awaitable[EngineResult], deadline: float, on_deadline: OnDeadline) -> EngineResult:
    """The engine's answer, or DeadlineExceededError at the deadline (cancelling the wait withdraws the
    request from the engine too: skipped if queued, its images dropped if in the cascade).

    With `on_deadline="best"` the engine itself answers at the deadline, with the deepest exits so
    far; the wait lasts `BEST_EFFORT_GRACE_SECONDS` longer for that answer to arrive.

    `asyncio.timeout` cancels this task's own await at the deadline; `wait_for` (Python 3.11) wrapped
    the wait in a task of its own for every request."""
    if on_deadline == "best":
        deadline += BEST_EFFORT_GRACE_SECONDS
    remaining = deadline - time.monotonic()
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            return await waiting
    except TimeoutError as exc:
        raise DeadlineExceededError(
            f"no answer before the deadline (waited {1000 * remaining:.0f} ms for inference)"
        ) from exc


def _check_tensor(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    expected = (spec.channels, spec.size, spec.size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise InvalidInputError(
            f"input tensor has shape {list(array.shape)}; this model takes [N, {expected[0]}, {expected[1]}, "
            f"{expected[2]}] (float32, {spec.color_mode}, normalised with the model's mean and std)",
            expected_shape=str([-1, *expected]),
        )
    if array.dtype != np.float32:
        raise InvalidInputError(f"input tensor has dtype {array.dtype}; this model takes float32")
    if not np.isfinite(array).all():
        raise InvalidInputError("input tensor contains NaN or infinite values")
    return np.ascontiguousarray(array)
