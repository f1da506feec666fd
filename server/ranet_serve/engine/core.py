"""The engine: below every protocol. Takes preprocessed requests, returns per-image results.

A front-end (in this process, or in another one through `engine.client`) hands the engine one typed
`EngineRequest` and the request's images in the model's input space; `Engine.submit` resolves the
model version and the budget, queues the images on that version's scheduler and returns a future
that completes with an `EngineResult` (or a domain error). Everything a protocol does (parsing,
decoding, encoding, HTTP status) stays in the front-end; everything about models, batches and load
stays here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from functools import partial

import numpy as np
import torch

from ranet_serve.cascade.policy import Budget
from ranet_serve.cascade.results import ImageResult
from ranet_serve.engine.catalog import Catalog
from ranet_serve.engine.records import EngineRequest, EngineResult, ExitEvent, RepositoryEntry
from ranet_serve.engine.registry import ModelStore, ReadyVersion, ReloadReport, RuntimeFactory
from ranet_serve.engine.scheduler import Replan, RequestResult
from ranet_serve.errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
)
from ranet_serve.metrics import EngineMetrics
from ranet_serve.settings import Settings

logger = logging.getLogger(__name__)


class Engine:
    """The model registry and its schedulers behind one `submit`. Thread-safe."""

    def __init__(self, settings: Settings, metrics: EngineMetrics, runtime_factory: RuntimeFactory):
        self.settings = settings
        self.metrics = metrics
        self.store = ModelStore(settings, metrics, runtime_factory)

    # -- lifecycle (blocking: call from a worker thread) ------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    def load(self) -> ReloadReport:
        return self.store.load()

    def reload(self) -> ReloadReport:
        return self.store.reload()

    def load_model(self, name: str) -> ReloadReport:
        return self.store.load_model(name)

    def unload_model(self, name: str) -> ReloadReport:
        return self.store.unload_model(name)

    def repository_index(self) -> tuple[RepositoryEntry, ...]:
        return self.store.repository_index()

    def close(self) -> None:
        self.store.close()

    # -- load signals --------------------------------------------------------------------------

    def shed(self, model: str, count: int = 1) -> None:
        """Requests for `model` shed before they reached the engine (admission): a load signal."""
        adaptive = self.store.adaptive_for(model)
        if adaptive is not None:
            for _ in range(min(count, 64)):
                adaptive.observe_shed()

    def backlog(self) -> tuple[int, float]:
        """(requests waiting in every scheduler's queue, estimated seconds of work queued and running)."""
        return self.store.backlog()

    # -- requests ------------------------------------------------------------------------------

    def submit(
        self,
        request: EngineRequest,
        images: torch.Tensor,
        on_exit: Callable[[ExitEvent], None] | None = None,
    ) -> Future[EngineResult]:
        """Queue `images` [N, C, H, W] float32; raises the domain errors that are known at once.

        Cancelling the returned future withdraws the request: skipped if its batch has not started,
        its images dropped at their next stage boundary if it has. `on_exit` (for `request.stream`)
        hears every exit of every image, on the scheduler's worker thread, before the future completes.
        """
        entry = self.store.acquire(request.model, request.version)
        try:
            inner = self._queue(entry, request, images, on_exit)
        except (OverloadedError, DeadlineExceededError):
            if entry.adaptive is not None:
                entry.adaptive.observe_shed()  # shed or too late: the objective is under threat
            self.store.release(entry)
            raise
        except BaseException:
            self.store.release(entry)
            raise
        outer: Future[EngineResult] = Future()
        outer.add_done_callback(lambda done: inner.cancel() if done.cancelled() else None)
        inner.add_done_callback(partial(self._finish, entry, request, outer))
        return outer

    def _queue(
        self,
        entry: ReadyVersion,
        request: EngineRequest,
        images: torch.Tensor,
        on_exit: Callable[[ExitEvent], None] | None,
    ) -> Future[RequestResult]:
        manifest = entry.manifest
        num_classes = manifest.config.num_classes
        top_k = num_classes if request.all_probabilities else request.top_k
        if not 1 <= top_k <= num_classes:
            raise InvalidRequestError(
                f"top_k must be between 1 and {num_classes} (the number of classes), got {request.top_k}"
            )
        spec = manifest.input
        expected = (spec.channels, spec.size, spec.size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.shape[0] == 0:
            # The front-end prepared the images for the version it saw; a reload swapped it since.
            raise NotReadyError(
                f"model {entry.name!r} changed while the request was prepared; retry", model=entry.name
            )
        plan = entry.plan(request.budget)
        if request.deadline - time.monotonic() <= 0:
            raise DeadlineExceededError("deadline passed before inference started (decoding took too long)")
        count = int(images.shape[0])
        replan: Replan | None = None
        if entry.adaptive is not None:
            entry.adaptive.observe_arrival(entry.batcher.backlog_images)
            if request.budget == Budget():
                # The default may move while this request waits: it runs at the default of the moment
                # its batch forms (requests with knobs keep their plan).
                replan = partial(entry.plan, Budget())
        deadline = request.deadline if math.isfinite(request.deadline) else None
        return entry.batcher.submit(
            images,
            np.tile(plan.thresholds, (count, 1)),
            np.full(count, plan.max_exit, dtype=np.int64),
            top_k,
            deadline,
            replan=replan,
            operating_point=plan.operating_point,
            on_exit=None if on_exit is None else _exit_sink(on_exit),
            best_effort=request.on_deadline == "best",
        )

    def _finish(
        self,
        entry: ReadyVersion,
        request: EngineRequest,
        outer: Future[EngineResult],
        inner: Future[RequestResult],
    ) -> None:
        """Runs where the scheduler completes the request (its worker thread): cheap bookkeeping only."""
        try:
            if inner.cancelled():
                self.metrics.cancelled.labels(entry.name, "queue").inc()
                outer.cancel()
                return
            error = inner.exception()
            if isinstance(error, CancelledError):
                self.metrics.cancelled.labels(entry.name, "cascade").inc()
                outer.cancel()
                return
            if error is not None:
                if isinstance(error, (OverloadedError, DeadlineExceededError)) and entry.adaptive is not None:
                    entry.adaptive.observe_shed()
                _settle(outer, error=error)
                return
            result = inner.result()
            self.metrics.queued(entry.name, result.timing.queue_seconds)
            for index, image in enumerate(result.images):
                if not math.isfinite(image.confidence):
                    _settle(
                        outer,
                        error=InvalidInputError(
                            f"image {index}: the model produced non-finite scores "
                            "(input values out of range?)",
                            image=index,
                        ),
                    )
                    return
            limited = sum(image.deadline_limited for image in result.images)
            if limited:
                self.metrics.deadline_limited.labels(entry.name).inc(limited)
            if entry.adaptive is not None:
                entry.adaptive.observe(time.monotonic() - request.received)
            _settle(
                outer,
                result=EngineResult(
                    model=entry.name,
                    version=entry.version,
                    operating_point=result.operating_point or "",
                    images=result.images,
                    queue_seconds=result.timing.queue_seconds,
                    inference_seconds=result.timing.inference_seconds,
                ),
            )
        except CancelledError:
            outer.cancel()
        finally:
            self.store.release(entry)


def _exit_sink(on_exit: Callable[[ExitEvent], None]) -> Callable[[int, ImageResult, bool], None]:
    """The scheduler's (index, result, final) callback in terms of the engine's `ExitEvent`."""
    return lambda index, result, final: on_exit(ExitEvent(index, result, final))


def _settle(
    future: Future[EngineResult], result: EngineResult | None = None, error: BaseException | None = None
) -> None:
    """Complete `future` unless its caller cancelled it meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass
