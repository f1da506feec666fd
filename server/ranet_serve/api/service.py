"""The inference service: the one data plane both protocols call.

v1 and KServe v2 routes translate their wire formats into one `ClassifyRequest` and encode the one
`ClassifyResult`; everything between (model lookup, budget resolution, preprocessing (in a worker
thread unless the request is small), batching, the deadline, per-request metrics) happens here, once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from ranet_serve.api.errors import InvalidRequestError, status_for
from ranet_serve.api.images import ImageLimits, declared_pixels, preprocess_batch
from ranet_serve.api.metrics import ServerMetrics, model_label
from ranet_serve.api.settings import Settings
from ranet_serve.api.store import ModelStore, ReadyVersion
from ranet_serve.cascade.batcher import Replan, RequestResult
from ranet_serve.cascade.executor import ImageResult
from ranet_serve.cascade.policy import Budget
from ranet_serve.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    RanetServeError,
)
from ranet_serve.export.manifest import InputSpec

# Encoded bytes beyond which a request is always decoded in a worker thread (see `_decodes_inline`).
INLINE_DECODE_MAX_BYTES = 64 * 1024


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
    received: float = field(default_factory=time.monotonic)


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


class InferenceService:
    """Lookup, budget, preprocessing, batching and deadline for every inference request."""

    def __init__(self, settings: Settings, store: ModelStore, metrics: ServerMetrics):
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.limits = ImageLimits(
            max_image_bytes=settings.max_image_bytes, max_image_pixels=settings.max_image_pixels
        )

    @asynccontextmanager
    async def track(self, model: str | None) -> AsyncIterator[None]:
        """Count one inference request (status, duration, in-flight, rejections) around its handler.

        Wraps the whole handler, body reading and decoding included, so a request rejected at the
        edge counts too. The model label is the requested name only if the store serves it.
        """
        label = self._model_label(model)
        started = time.perf_counter()
        gauge = self.metrics.inflight.labels(label)
        gauge.inc()
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, Exception):
                status = status_for(exc)
                self.metrics.request_finished(
                    label, status, time.perf_counter() - started, _reason(exc, status)
                )
            else:  # cancelled: the client went away
                self.metrics.request_finished(label, 499, time.perf_counter() - started, "cancelled")
            raise
        else:
            self.metrics.request_finished(label, 200, time.perf_counter() - started)
        finally:
            gauge.dec()

    def _model_label(self, model: str | None) -> str:
        return model_label(model or self.settings.default_model, self.store.has_model)

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Run one request; raises the domain errors the API maps to statuses."""
        name = request.model or self.settings.default_model
        with self.store.lease(name, request.version) as entry:
            manifest = entry.manifest
            num_classes = manifest.config.num_classes
            top_k = num_classes if request.all_probabilities else request.top_k
            if not 1 <= top_k <= num_classes:
                raise InvalidRequestError(
                    f"top_k must be between 1 and {num_classes} (the number of classes), got {request.top_k}"
                )
            plan = entry.plan(request.budget)
            deadline = request.received + self._timeout_seconds(request)
            try:
                # While this request is decoded the batcher knows it is coming, so an open batch waits
                # for it; with nothing on its way a batch closes without waiting out the queue delay.
                with entry.batcher.arriving():
                    if self._decodes_inline(request.images):
                        images = self._prepare(request.images, manifest.input)
                    else:
                        images = await run_in_threadpool(self._prepare, request.images, manifest.input)
                    count = images.shape[0]
                    replan: Replan | None = None
                    if entry.adaptive is not None:
                        entry.adaptive.observe_arrival(entry.batcher.backlog_images)
                        if request.budget == Budget():
                            # The default may move while this request waits: it runs at the default of
                            # the moment its batch forms (requests with knobs keep their plan).
                            replan = partial(entry.plan, Budget())
                    future = self._submit(
                        entry,
                        images,
                        np.tile(plan.thresholds, (count, 1)),
                        np.full(count, plan.max_exit, dtype=np.int64),
                        top_k,
                        deadline,
                        replan=replan,
                    )
                result = await self._wait(future, deadline)
            except (OverloadedError, DeadlineExceededError):
                if entry.adaptive is not None:
                    entry.adaptive.observe_shed()  # shed or too late: the objective is under threat
                raise
            self.metrics.queued(entry.name, result.timing.queue_seconds)
            for index, image in enumerate(result.images):
                if not math.isfinite(image.confidence):
                    raise InvalidInputError(
                        f"image {index}: the model produced non-finite scores (input values out of range?)",
                        image=index,
                    )
            total_seconds = time.monotonic() - request.received
            if entry.adaptive is not None:
                entry.adaptive.observe(total_seconds)
            return ClassifyResult(
                model=entry.name,
                version=entry.version,
                operating_point=result.operating_point or plan.operating_point,
                labels=manifest.labels,
                images=result.images,
                queue_seconds=result.timing.queue_seconds,
                inference_seconds=result.timing.inference_seconds,
                total_seconds=total_seconds,
            )

    def _timeout_seconds(self, request: ClassifyRequest) -> float:
        if request.deadline_ms is None:
            return self.settings.request_timeout_ms / 1000.0
        if not math.isfinite(request.deadline_ms) or request.deadline_ms <= 0:
            raise InvalidRequestError(f"deadline_ms must be a positive number, got {request.deadline_ms}")
        return request.deadline_ms / 1000.0

    @staticmethod
    def _submit(
        entry: ReadyVersion,
        images: torch.Tensor,
        thresholds: np.ndarray,
        max_exit: np.ndarray,
        top_k: int,
        deadline: float,
        replan: Replan | None = None,
    ) -> Future[RequestResult]:
        if deadline - time.monotonic() <= 0:
            raise DeadlineExceededError("deadline passed before inference started (decoding took too long)")
        return entry.batcher.submit(images, thresholds, max_exit, top_k, deadline, replan=replan)

    @staticmethod
    async def _wait(future: Future[RequestResult], deadline: float) -> RequestResult:
        remaining = deadline - time.monotonic()
        try:
            # The batcher drops a request still queued at its deadline; wait_for also bounds a request
            # whose batch is running (cancelling its future if it has not started, also when the
            # client goes away).
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(remaining, 0.0))
        except TimeoutError as exc:
            raise DeadlineExceededError(
                f"no answer before the deadline (waited {1000 * remaining:.0f} ms for inference)"
            ) from exc

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

    def _prepare(self, images: EncodedImages | np.ndarray, spec: InputSpec) -> torch.Tensor:
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
            batch = preprocess_batch(list(images.items), spec, self.limits)
            return batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        return _check_tensor(images, spec)


def _reason(exc: Exception, status: int) -> str:
    """A bounded rejection reason: the error's own `reason` detail (queue_full, shutdown) or its code."""
    if isinstance(exc, RanetServeError):
        reason = exc.details.get("reason")
        return reason if isinstance(reason, str) else exc.code
    return "internal_error" if status >= 500 else "invalid_request"


def _check_tensor(array: np.ndarray, spec: InputSpec) -> torch.Tensor:
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
    return torch.from_numpy(np.ascontiguousarray(array))
