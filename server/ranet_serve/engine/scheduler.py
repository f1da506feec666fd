"""Dynamic batching: requests from many handlers become batches on one worker thread per bundle.

The worker thread owns the runtime sessions (nothing else calls them). Requests wait in a bounded
queue: a full queue fails fast with `OverloadedError` instead of growing without limit. A batch
closes when it holds `max_batch_size` images or its first request has waited `max_queue_delay`.
A request whose deadline passes while queued is answered with `DeadlineExceededError`, not run;
a request whose caller went away (cancelled future) is skipped. An exception inside a stage fails
only the requests with images in that stage's batch.

Survivor re-batching: after each exit a batch shrinks, so on its own a batch would run its late
stages at a handful of images, paying each stage's fixed cost per call for very little work. With
`rebatch_delay` set, the survivors of a stage are parked at the next stage instead, and the parked
survivors of several batches run that stage together once they fill a batch, once the oldest has
waited `rebatch_delay`, or as soon as the worker has nothing else to do (so at low load nobody
waits). The deepest ready stage runs first, which finishes requests soonest. With `rebatch_delay`
None every batch runs through all its stages before the next batch starts.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.executor import (
    BatchResult,
    CascadeExecutor,
    Cohort,
    ImageResult,
    StepResult,
    merge_cohorts,
)
from ranet_serve.cascade.policy import ExitPlan
from ranet_serve.engine.agreement import AgreementMonitor
from ranet_serve.errors import (
    OVERLOAD_REASONS,
    DeadlineExceededError,
    OverloadedError,
    RanetServeError,
    StageExecutionError,
)

logger = logging.getLogger(__name__)
QUEUE_FULL, _, SHUTDOWN = OVERLOAD_REASONS


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
class _Pending:
    images: Tensor
    thresholds: np.ndarray
    max_exit: np.ndarray
    top_k: int
    deadline: float | None  # time.monotonic() value
    future: Future[RequestResult]
    enqueued: float = field(default_factory=time.monotonic)
    results: list[ImageResult | None] = field(default_factory=list)
    remaining: int = 0
    started: float = 0.0
    batch_images: int = 0
    replan: Replan | None = None
    operating_point: str | None = None


class _Wake:
    """Queue token: the last announced request arrived or gave up; an open batch re-checks."""


_WAKE = _Wake()


@dataclass
class _Parked:
    cohort: Cohort
    since: float  # time.monotonic() when parked


BatchObserver = Callable[[BatchResult], None]


class Batcher:
    """Owns one executor and its worker thread."""

    def __init__(
        self,
        executor: CascadeExecutor,
        *,
        max_batch_size: int = 64,
        max_queue_delay: float = 0.002,
        max_queue_size: int = 256,
        rebatch_delay: float | None = None,
        close_when_idle: bool = False,
        observer: BatchObserver | None = None,
        name: str = "ranet",
        agreement: AgreementMonitor | None = None,
    ):
        if rebatch_delay is not None and rebatch_delay < 0:
            raise ValueError(f"rebatch_delay must be >= 0 seconds or None, got {rebatch_delay}")
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.rebatch_delay = rebatch_delay
        self.close_when_idle = close_when_idle
        self._arriving = 0  # requests announced with `arriving()` and not submitted yet
        self._wake_tokens = 0  # _WAKE tokens in the queue (not requests: `queued` leaves them out)
        self.observer = observer
        self.agreement = agreement  # idle-time checks of early exits against the last exit
        self._queue: queue.Queue[_Pending | _Wake | None] = queue.Queue()
        self._closing = threading.Event()
        # Check-then-put and close-then-sentinel happen under one lock, so the bound is exact and no
        # request can land behind the stop marker.
        self._lock = threading.Lock()
        self._carry: _Pending | None = None  # a request that did not fit the previous batch
        # Worker-thread state: survivors parked per stage, and which request each image tag is.
        self._parked: list[list[_Parked]] = [[] for _ in range(executor.num_exits)]
        self._slots: dict[int, tuple[_Pending, int]] = {}
        self._next_tag = 0
        self._busy_seconds = 0.0
        self._admitted_images = 0  # images that reached stage 0 (worker thread)
        self._queued_images = 0  # images of requests waiting to be admitted (under the lock)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- submission (any thread) ---------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting in the queue."""
        return max(0, self._queue.qsize() - self._wake_tokens)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that is on its way (being decoded) and will be submitted in this block.

        With `close_when_idle`, an open batch stops waiting for company as soon as the queue is empty
        and no request is announced: waiting out `max_queue_delay` for requests that do not exist
        only adds latency (at one client, the whole delay on every request).
        """
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1
                if self._arriving == 0 and self.close_when_idle:
                    self._wake_tokens += 1
                    self._queue.put(_WAKE)

    @property
    def busy_seconds(self) -> float:
        """Seconds the worker has spent running stages for requests (idle-time checks not counted).

        Differences over time give the worker's utilisation: what the load-adaptive operating point
        reads before moving to a dearer point. A float written by the worker thread only.
        """
        return self._busy_seconds

    @property
    def admitted_images(self) -> int:
        """Images that reached stage 0 so far: with `busy_seconds`, the worker's cost per image."""
        return self._admitted_images

    @property
    def backlog_images(self) -> int:
        """Images waiting in the queue plus images in the cascade: the work ahead of a new request."""
        with self._lock:
            queued = self._queued_images
        return queued + len(self._slots)

    @property
    def backlog_seconds(self) -> float:
        """`backlog_images` at the worker's average cost per image so far: the wait a new request faces."""
        admitted = self._admitted_images
        if admitted == 0:
            return 0.0
        return self.backlog_images * self._busy_seconds / admitted

    @property
    def in_flight_images(self) -> int:
        """Images admitted to the cascade and not answered yet (parked survivors included)."""
        return len(self._slots)

    def submit(
        self,
        images: Tensor,
        thresholds: np.ndarray,
        max_exit: np.ndarray,
        top_k: int = 1,
        deadline: float | None = None,
        replan: Replan | None = None,
        operating_point: str | None = None,
    ) -> Future[RequestResult]:
        """Queue one request; fail fast when the queue is full or the batcher is closing.

        `replan`, if given, is called when the request's batch forms, and its plan replaces
        `thresholds` and `max_exit`: a request that asked for the server's default operating point
        gets the point that is the default when it runs. Under a sudden overload the load-adaptive
        default moves down within a fraction of a second, and the requests queued before the move
        would otherwise drain at the old, dearer point, which is what keeps latency high.
        `operating_point` names the plan it was queued with (the answer reports it unless replanned).
        """
        future: Future[RequestResult] = Future()
        with self._lock:
            if self._closing.is_set():
                raise OverloadedError("server is shutting down", retry_after_seconds=1.0, reason=SHUTDOWN)
            if self.queued >= self.max_queue_size:
                raise OverloadedError(
                    f"queue full ({self.max_queue_size} requests waiting)",
                    retry_after_seconds=max(0.1, self.max_queue_delay * 10),
                    reason=QUEUE_FULL,
                )
            self._queue.put(
                _Pending(
                    images,
                    thresholds,
                    max_exit,
                    top_k,
                    deadline,
                    future,
                    replan=replan,
                    operating_point=operating_point,
                )
            )
            self._queued_images += images.shape[0]
        return future

    async def infer(
        self,
        images: Tensor,
        thresholds: np.ndarray,
        max_exit: np.ndarray,
        top_k: int = 1,
        deadline: float | None = None,
    ) -> RequestResult:
        """Async front door: if the awaiting task is cancelled, the queued request is skipped."""
        future = self.submit(images, thresholds, max_exit, top_k, deadline)
        return await asyncio.wrap_future(future)

    def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting work; with `drain`, finish what is queued first (parked work always finishes)."""
        with self._lock:
            self._closing.set()
        if not drain:
            while True:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(pending, _Wake):
                    self._consumed_wake()
                elif pending is not None:
                    self._left_queue([pending])
                    if pending.future.set_running_or_notify_cancel():
                        pending.future.set_exception(
                            OverloadedError("server is shutting down", reason=SHUTDOWN)
                        )
        self._queue.put(None)
        self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while True:
            idle = self._carry is None and self._queue.empty()
            stage = self._ready_stage(idle or stopping)
            if stage is not None:
                self._run_parked(stage)
                continue
            if stopping:
                if self._carry is not None:
                    self._admit([self._carry])
                    self._carry = None
                    continue
                return
            parked = any(self._parked)
            batch, stopping = self._collect(wait=not parked)
            if batch:
                self._admit(batch)

    def _collect(self, wait: bool) -> tuple[list[_Pending], bool]:
        """The next batch of requests, and whether the stop marker was met.

        With `wait` (nothing parked) this blocks for the first request and then gives the batch
        `max_queue_delay` to fill; otherwise it takes only what is queued now, so parked survivors
        are never held up by an empty queue.
        """
        first: _Pending | _Wake | None = self._carry
        self._carry = None
        if first is None:
            if not wait:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return [], False
            elif self.agreement is not None and self.agreement.pending:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    self._check_agreement()  # spare capacity: nobody is waiting
                    return [], False
            else:
                first = self._queue.get()
        if first is None:
            return [], True
        if isinstance(first, _Wake):
            self._consumed_wake()
            return [], False
        batch = [first]
        size = first.images.shape[0]
        closes_at = first.enqueued + self.max_queue_delay if wait else 0.0
        while size < self.max_batch_size:
            remaining = closes_at - time.monotonic()
            if self.close_when_idle and self._arriving == 0 and self._queue.empty():
                break  # nobody else is coming: close now rather than wait for no one
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if isinstance(item, _Wake):
                self._consumed_wake()
                continue  # re-check: is anybody still on the way?
            if size + item.images.shape[0] > self.max_batch_size:
                self._carry = item  # starts the next batch instead of overfilling this one
                break
            batch.append(item)
            size += item.images.shape[0]
        return batch, False

    def _consumed_wake(self) -> None:
        with self._lock:
            self._wake_tokens -= 1

    def _left_queue(self, batch: list[_Pending]) -> None:
        with self._lock:
            self._queued_images -= sum(p.images.shape[0] for p in batch)

    def _admit(self, batch: list[_Pending]) -> None:
        """Turn a batch of requests into a cohort at stage 0 and run that stage."""
        self._left_queue(batch)
        now = time.monotonic()
        runnable: list[_Pending] = []
        for pending in batch:
            if not pending.future.set_running_or_notify_cancel():
                continue  # the caller went away
            if pending.deadline is not None and now > pending.deadline:
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"deadline passed after {1000 * (now - pending.enqueued):.1f} ms in the queue",
                        waited_seconds=now - pending.enqueued,
                    )
                )
                continue
            runnable.append(pending)
        if not runnable:
            return
        total = sum(p.images.shape[0] for p in runnable)
        self._admitted_images += total
        tags = np.arange(self._next_tag, self._next_tag + total, dtype=np.int64)
        self._next_tag += total
        offset = 0
        for pending in runnable:
            count = pending.images.shape[0]
            if pending.replan is not None:
                try:
                    plan = pending.replan()
                except Exception:  # keep the plan it was queued with; never take the worker down
                    logger.exception("re-planning a queued request failed")
                else:
                    pending.thresholds = np.tile(plan.thresholds, (count, 1))
                    pending.max_exit = np.full(count, plan.max_exit, dtype=np.int64)
                    pending.operating_point = plan.operating_point
            pending.results = [None] * count
            pending.remaining = count
            pending.started = now
            pending.batch_images = total
            for i in range(count):
                self._slots[int(tags[offset + i])] = (pending, i)
            offset += count
        images = torch.cat([p.images for p in runnable]) if len(runnable) > 1 else runnable[0].images
        try:
            cohort = self.executor.start(
                images,
                np.concatenate([p.thresholds for p in runnable]),
                np.concatenate([p.max_exit for p in runnable]),
                tags,
                top_k=max(p.top_k for p in runnable),
            )
        except Exception as exc:
            self._fail(tags, exc)
            return
        self._step(cohort)

    def _ready_stage(self, idle: bool) -> int | None:
        """The deepest stage whose parked survivors should run now, if any."""
        now = time.monotonic()
        for stage in range(len(self._parked) - 1, 0, -1):
            parked = self._parked[stage]
            if not parked:
                continue
            if (
                idle
                or self.rebatch_delay is None
                or sum(p.cohort.size for p in parked) >= self.max_batch_size
                or now - parked[0].since >= self.rebatch_delay
            ):
                return stage
        return None

    def _run_parked(self, stage: int) -> None:
        """Merge up to `max_batch_size` parked survivors of `stage` and run that stage on them."""
        parked = self._parked[stage]
        taken: list[Cohort] = []
        size = 0
        while parked and (not taken or size + parked[0].cohort.size <= self.max_batch_size):
            cohort = self._live_rows(parked.pop(0).cohort)
            if cohort is not None:
                taken.append(cohort)
                size += cohort.size
        if taken:
            self._step(merge_cohorts(taken, self.executor.runtime.arrays))

    def _live_rows(self, cohort: Cohort) -> Cohort | None:
        """Drop rows whose request already failed: their work is no longer wanted."""
        live = np.fromiter((int(t) in self._slots for t in cohort.tags), dtype=bool, count=cohort.size)
        if live.all():
            return cohort
        if not live.any():
            return None
        return cohort.rows(np.nonzero(live)[0], self.executor.runtime.arrays)

    def _step(self, cohort: Cohort) -> None:
        try:
            step = self.executor.step(cohort)
        except Exception as exc:
            self._fail(cohort.tags, exc)
            return
        self._busy_seconds += step.seconds
        if step.survivors is not None:
            self._parked[step.survivors.stage].append(_Parked(step.survivors, time.monotonic()))
        if self.observer is not None:
            self._observe(step)
        finished = time.monotonic()
        for tag, result in step.finished:
            slot = self._slots.pop(tag, None)
            if slot is None:
                continue  # its request already failed
            pending, index = slot
            pending.results[index] = result
            pending.remaining -= 1
            if pending.remaining == 0:
                self._answer(pending, finished)

    def _answer(self, pending: _Pending, finished: float) -> None:
        results = tuple(r for r in pending.results if r is not None)
        if self.agreement is not None:
            self.agreement.offer(pending.images, results, last_exit=self.executor.num_exits - 1)
        pending.future.set_result(
            RequestResult(
                images=tuple(_trim_top_k(r, pending.top_k) for r in results),
                timing=RequestTiming(
                    pending.started - pending.enqueued, finished - pending.started, pending.batch_images
                ),
                operating_point=pending.operating_point,
            )
        )

    def _fail(self, tags: np.ndarray, exc: Exception) -> None:
        """Fail every request with an image among `tags`; their other images are dropped when met."""
        error = exc if isinstance(exc, RanetServeError) else StageExecutionError(f"inference failed: {exc}")
        failed: dict[int, _Pending] = {}
        for tag in tags.tolist():
            slot = self._slots.get(tag)
            if slot is not None:
                failed[id(slot[0])] = slot[0]
        logger.exception("a stage failed on %d images of %d requests", tags.size, len(failed))
        for pending in failed.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._slots = {t: s for t, s in self._slots.items() if id(s[0]) not in failed}

    def _observe(self, step: StepResult) -> None:
        assert self.observer is not None
        seconds = [0.0] * self.executor.num_exits
        sizes = [0] * self.executor.num_exits
        seconds[step.stage] = step.seconds
        sizes[step.stage] = step.batch_size
        try:
            self.observer(
                BatchResult(
                    images=tuple(result for _, result in step.finished),
                    stage_seconds=tuple(seconds),
                    stage_batch_sizes=tuple(sizes),
                )
            )
        except Exception:  # metrics must never fail a request
            logger.exception("batch observer failed")

    def _check_agreement(self) -> None:
        assert self.agreement is not None
        try:
            self.agreement.run_pending(self.executor)
        except Exception:  # monitoring must never take the worker down
            logger.exception("exit-agreement check failed")


def _trim_top_k(result: ImageResult, top_k: int) -> ImageResult:
    if len(result.top_k) <= top_k:
        return result
    return replace(result, top_k=result.top_k[:top_k])
