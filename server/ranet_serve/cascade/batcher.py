"""Dynamic batching: requests from many handlers become batches on one worker thread per bundle.

The worker thread owns the runtime sessions (nothing else calls them). Requests wait in a bounded
queue: a full queue fails fast with `OverloadedError` instead of growing without limit. A batch
closes when it holds `max_batch_size` images or its first request has waited `max_queue_delay`.
A request whose deadline passes while queued is answered with `DeadlineExceededError`, not run;
a request whose caller went away (cancelled future) is skipped. An exception inside a stage fails
only the requests of that batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.agreement import AgreementMonitor
from ranet_serve.cascade.executor import BatchResult, CascadeExecutor, ImageResult
from ranet_serve.errors import DeadlineExceededError, OverloadedError, RanetServeError, StageExecutionError

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


@dataclass
class _Pending:
    images: Tensor
    thresholds: np.ndarray
    max_exit: np.ndarray
    top_k: int
    deadline: float | None  # time.monotonic() value
    future: Future[RequestResult]
    enqueued: float = field(default_factory=time.monotonic)


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
        observer: BatchObserver | None = None,
        name: str = "ranet",
        agreement: AgreementMonitor | None = None,
    ):
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.observer = observer
        self.agreement = agreement  # idle-time checks of early exits against the last exit
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._closing = threading.Event()
        # Check-then-put and close-then-sentinel happen under one lock, so the bound is exact and no
        # request can land behind the stop marker.
        self._lock = threading.Lock()
        self._carry: _Pending | None = None  # a request that did not fit the previous batch
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- submission (any thread) ---------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(
        self,
        images: Tensor,
        thresholds: np.ndarray,
        max_exit: np.ndarray,
        top_k: int = 1,
        deadline: float | None = None,
    ) -> Future[RequestResult]:
        """Queue one request; fail fast when the queue is full or the batcher is closing."""
        future: Future[RequestResult] = Future()
        with self._lock:
            if self._closing.is_set():
                raise OverloadedError("server is shutting down", retry_after_seconds=1.0, reason="shutdown")
            if self._queue.qsize() >= self.max_queue_size:
                raise OverloadedError(
                    f"queue full ({self.max_queue_size} requests waiting)",
                    retry_after_seconds=max(0.1, self.max_queue_delay * 10),
                    reason="queue_full",
                )
            self._queue.put(_Pending(images, thresholds, max_exit, top_k, deadline, future))
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
        """Stop accepting work; with `drain`, finish what is queued first."""
        with self._lock:
            self._closing.set()
        if not drain:
            while True:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is not None and pending.future.set_running_or_notify_cancel():
                    pending.future.set_exception(
                        OverloadedError("server is shutting down", reason="shutdown")
                    )
        self._queue.put(None)
        self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first, self._carry = self._carry, None
            if first is None:
                if self.agreement is not None and self.agreement.pending:
                    try:
                        first = self._queue.get_nowait()
                    except queue.Empty:
                        self._check_agreement()  # spare capacity: nobody is waiting
                        continue
                else:
                    first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = first.images.shape[0]
            closes_at = first.enqueued + self.max_queue_delay
            stop = False
            while size < self.max_batch_size:
                remaining = closes_at - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if size + item.images.shape[0] > self.max_batch_size:
                    self._carry = item  # starts the next batch instead of overfilling this one
                    break
                batch.append(item)
                size += item.images.shape[0]
            self._run(batch)
            if stop:
                if self._carry is not None:
                    self._run([self._carry])
                return

    def _run(self, batch: list[_Pending]) -> None:
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
        started = time.monotonic()
        images = torch.cat([p.images for p in runnable]) if len(runnable) > 1 else runnable[0].images
        try:
            result = self.executor.run(
                images,
                np.concatenate([p.thresholds for p in runnable]),
                np.concatenate([p.max_exit for p in runnable]),
                top_k=max(p.top_k for p in runnable),
            )
        except Exception as exc:
            error = (
                exc if isinstance(exc, RanetServeError) else StageExecutionError(f"inference failed: {exc}")
            )
            logger.exception("batch of %d requests failed", len(runnable))
            for pending in runnable:
                pending.future.set_exception(error)
            return
        finished = time.monotonic()
        if self.agreement is not None:
            self.agreement.offer(images, result, last_exit=self.executor.num_exits - 1)
        if self.observer is not None:
            try:
                self.observer(result)
            except Exception:  # metrics must never fail a request
                logger.exception("batch observer failed")
        offset = 0
        total = sum(p.images.shape[0] for p in runnable)
        for pending in runnable:
            count = pending.images.shape[0]
            mine = tuple(_trim_top_k(r, pending.top_k) for r in result.images[offset : offset + count])
            offset += count
            pending.future.set_result(
                RequestResult(
                    images=mine,
                    timing=RequestTiming(started - pending.enqueued, finished - started, total),
                )
            )

    def _check_agreement(self) -> None:
        assert self.agreement is not None
        try:
            self.agreement.run_pending(self.executor)
        except Exception:  # monitoring must never take the worker down
            logger.exception("exit-agreement check failed")


def _trim_top_k(result: ImageResult, top_k: int) -> ImageResult:
    if len(result.top_k) <= top_k:
        return result
    from dataclasses import replace

    return replace(result, top_k=result.top_k[:top_k])
