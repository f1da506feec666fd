"""A request inside the scheduler: what was asked, and what it gets back.

`QueuedRequest` is the scheduler's record of one submitted request from the moment it is queued to
the moment its future is answered. It never touches a runtime; the parts of the scheduler pass it
along: the intake queues it, batch forming groups it, admission claims it (or answers it at once,
when its caller left or its deadline passed), the slot table collects its per-image results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np
from torch import Tensor

from ranet_serve.cascade.executor import ImageResult
from ranet_serve.cascade.policy import ExitPlan
from ranet_serve.errors import DeadlineExceededError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestTiming:
    queue_seconds: float
    inference_seconds: float
    batch_images: int


@dataclass(frozen=True)
class RequestResult:
    images: tuple[ImageResult, ...]
    timing: RequestTiming
    operating_point: str | None = None  # the point that ran: the queued plan's, or the `replan` one


# Resolves a request's plan when its batch forms instead of when it was queued (see `Batcher.submit`).
Replan = Callable[[], ExitPlan]


@dataclass
class QueuedRequest:
    """One request from `Batcher.submit` until its future is answered."""

    images: Tensor  # [N, C, H, W]
    thresholds: np.ndarray  # [N, exits]
    max_exit: np.ndarray  # [N]
    top_k: int
    deadline: float | None  # time.monotonic() value
    future: Future[RequestResult]
    enqueued: float = field(default_factory=time.monotonic)
    replan: Replan | None = None
    operating_point: str | None = None
    # Filled at admission (worker thread only):
    results: list[ImageResult | None] = field(default_factory=list)
    remaining: int = 0  # images still in the cascade
    started: float = 0.0  # time.monotonic() when its batch was admitted
    batch_images: int = 0  # images in the batch it was admitted with

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def claim(self, now: float) -> bool:
        """Whether this request should run: False (and answered, if anyone is listening) when its
        caller went away or its deadline passed while it was queued."""
        if not self.future.set_running_or_notify_cancel():
            return False  # the caller went away
        if self.deadline is not None and now > self.deadline:
            waited = now - self.enqueued
            self.future.set_exception(
                DeadlineExceededError(
                    f"deadline passed after {1000 * waited:.1f} ms in the queue", waited_seconds=waited
                )
            )
            return False
        return True

    def apply_replan(self) -> None:
        """Take the plan of the moment (see `Batcher.submit`); a failing `replan` keeps the queued plan,
        since one broken policy call must not take the worker, or the request, down."""
        if self.replan is None:
            return
        try:
            plan = self.replan()
        except Exception:
            logger.exception("re-planning a queued request failed")
            return
        self.thresholds = np.tile(plan.thresholds, (self.size, 1))
        self.max_exit = np.full(self.size, plan.max_exit, dtype=np.int64)
        self.operating_point = plan.operating_point

    def begin(self, started: float, batch_images: int) -> None:
        """Admitted: its images enter the cascade now, in a batch of `batch_images`."""
        self.results = [None] * self.size
        self.remaining = self.size
        self.started = started
        self.batch_images = batch_images

    def record(self, index: int, result: ImageResult) -> bool:
        """Store image `index`'s result; True once every image of the request has one."""
        self.results[index] = result
        self.remaining -= 1
        return self.remaining == 0

    def finished_results(self) -> tuple[ImageResult, ...]:
        """Every image's result in input order, with all the top-k the cascade computed."""
        return tuple(r for r in self.results if r is not None)

    def answer(self, finished: float) -> None:
        """Resolve the future with the results, each cut to the top-k this request asked for."""
        self.future.set_result(
            RequestResult(
                images=tuple(_trim_top_k(r, self.top_k) for r in self.finished_results()),
                timing=RequestTiming(
                    self.started - self.enqueued, finished - self.started, self.batch_images
                ),
                operating_point=self.operating_point,
            )
        )


def _trim_top_k(result: ImageResult, top_k: int) -> ImageResult:
    # A merged batch computes the largest top-k any of its requests asked for.
    if len(result.top_k) <= top_k:
        return result
    return replace(result, top_k=result.top_k[:top_k])
