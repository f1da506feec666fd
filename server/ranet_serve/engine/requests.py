"""A request inside the scheduler: what was asked, and what it gets back.

`QueuedRequest` is the scheduler's record of one submitted request from the moment it is queued to
the moment its future is answered. It never touches a runtime; the parts of the scheduler pass it
along: the intake queues it, batch forming groups it, admission claims it (or answers it at once,
when its caller left or its deadline passed), the slot table collects its per-image results.

Two kinds of request want more than their final answer. A streamed one hears every exit each of its
images passes, as it happens (`on_exit`). One that asked for `on_deadline=best` keeps the deepest
exit each image has reached, so that when its deadline passes inside the cascade it is answered at
once with those (`expire`) instead of failing. Their images are "watched" in the cascade.
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

# Hears (image index, result, final) for every exit an image of a streamed request passes; called on
# the worker thread, so it must only hand the event over (to a loop or a socket writer).
ExitSink = Callable[[int, ImageResult, bool], None]


class RequestFuture(Future[RequestResult]):
    """A request's future whose `cancel` also withdraws a request that is already in the cascade.

    A plain future cannot be cancelled once running; this one then calls `on_withdraw`, and the
    worker drops the request's images at their next stage boundary (a client that closed its stream
    frees the compute its images would still have used). `cancel` still returns False then: the
    future completes when the worker has let go of the request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_withdraw: Callable[[], None] | None = None

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if not self.done() and self.on_withdraw is not None:
            self.on_withdraw()
        return False


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
    on_exit: ExitSink | None = None  # streamed: every exit of every image, as it happens
    best_effort: bool = False  # on_deadline=best: answered with the deepest exits when the deadline passes
    # Filled at admission (worker thread only):
    results: list[ImageResult | None] = field(default_factory=list)
    deepest: list[ImageResult | None] = field(default_factory=list)  # watched: the last exit passed
    remaining: int = 0  # images still in the cascade
    started: float = 0.0  # time.monotonic() when its batch was admitted
    batch_images: int = 0  # images in the batch it was admitted with
    first_tag: int = 0  # its images' slot tags are first_tag .. first_tag + size - 1

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    @property
    def watched(self) -> bool:
        """Whether the cascade reports every exit of its images, not only the last."""
        return self.on_exit is not None or self.best_effort

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
        self.deepest = [None] * self.size if self.best_effort else []
        self.remaining = self.size
        self.started = started
        self.batch_images = batch_images

    def record(self, index: int, result: ImageResult) -> bool:
        """Store image `index`'s result; True once every image of the request has one."""
        self.results[index] = result
        self.remaining -= 1
        if self.on_exit is not None:
            self._tell(index, result, final=True)
        return self.remaining == 0

    def passed(self, index: int, result: ImageResult) -> None:
        """Image `index` passed an exit without leaving (watched requests only)."""
        if self.best_effort:
            self.deepest[index] = result
        if self.on_exit is not None:
            self._tell(index, result, final=False)

    def expire(self, now: float) -> None:
        """The deadline passed with images still in the cascade: answer now.

        With `best_effort` and every unfinished image past at least one exit, the answer is each
        image's deepest exit so far, marked `deadline_limited`; otherwise `DeadlineExceededError`.
        """
        if self.future.done():
            return
        late = now - self.started
        unfinished = [i for i, r in enumerate(self.results) if r is None]
        if not self.best_effort or any(self.deepest[i] is None for i in unfinished):
            self.future.set_exception(
                DeadlineExceededError(
                    f"deadline passed {1000 * late:.1f} ms into inference with "
                    f"{len(unfinished)} of {self.size} images unfinished",
                    waited_seconds=self.started - self.enqueued,
                )
            )
            return
        for index in unfinished:
            deepest = self.deepest[index]
            assert deepest is not None
            self.results[index] = replace(deepest, deadline_limited=True)
            if self.on_exit is not None:
                self._tell(index, self.results[index], final=True)  # type: ignore[arg-type]
        self.remaining = 0
        self.answer(now)

    def _tell(self, index: int, result: ImageResult, final: bool) -> None:
        assert self.on_exit is not None
        try:
            self.on_exit(index, _trim_top_k(result, self.top_k), final)
        except Exception:  # a listener must never take the worker down
            logger.exception("an exit listener failed")

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
