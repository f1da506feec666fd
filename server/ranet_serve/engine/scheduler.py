"""Dynamic batching: requests from many handlers become batches on one worker thread per bundle.

The worker thread owns the runtime sessions (nothing else calls them). Each turn of its loop reads
as intent: run parked survivors that are ready; otherwise, when nobody is waiting, run one slice of
idle-time audit work; otherwise collect a batch, admit it and run its first stage. Every stage run
ends the same way: its survivors are parked for their next stage and its finished images are filed,
which answers the requests that are complete.

The parts, one job each:
- `Intake` (intake.py): the bounded queue; a full queue fails fast with `OverloadedError`.
- `BatchFormer` (batching.py): max batch size, max queue delay, close-when-idle, carry-over.
- `QueuedRequest.claim` (requests.py): a request whose caller went away (cancelled future) is
  skipped; one whose deadline passed while queued is answered with `DeadlineExceededError`, not run.
  One whose caller goes away while its images are in the cascade is withdrawn: at the top of the
  next turn its slots are freed and its images are dropped at their next stage boundary.
- `ExpiryQueue` (below): requests with `on_deadline=best` whose deadline passes in the cascade are
  answered at the next stage boundary with the deepest exit each image reached.
- `SurvivorParking` (parking.py): survivor re-batching across batches (`rebatch_delay`).
- `SlotTable` (slots.py): which request each image is; answers complete requests; an exception in a
  stage fails only the requests with images in that stage's batch.
- `WorkerMeter` (meter.py): utilisation (`busy_seconds`, `admitted_images`) and the metrics observer.
- `AgreementMonitor` (agreement.py): the exit-agreement audit, in slices of one stage each.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.executor import CascadeExecutor, Cohort
from ranet_serve.engine.agreement import AgreementMonitor
from ranet_serve.engine.batching import BatchFormer
from ranet_serve.engine.intake import Intake
from ranet_serve.engine.meter import BatchObserver, WorkerMeter
from ranet_serve.engine.parking import SurvivorParking
from ranet_serve.engine.requests import (
    ExitSink,
    QueuedRequest,
    Replan,
    RequestFuture,
    RequestResult,
    RequestTiming,
)
from ranet_serve.engine.slots import SlotTable
from ranet_serve.errors import OVERLOAD_REASONS, OverloadedError

__all__ = ["BatchObserver", "Batcher", "ExitSink", "Replan", "RequestResult", "RequestTiming"]

logger = logging.getLogger(__name__)

*_, DEADLINE_UNMEETABLE = OVERLOAD_REASONS


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
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.rebatch_delay = rebatch_delay
        self.close_when_idle = close_when_idle
        self.agreement = agreement  # idle-time checks of early exits against the last exit
        self._parking = SurvivorParking(
            executor.num_exits, max_batch_size, rebatch_delay, executor.runtime.arrays
        )
        self._intake = Intake(max_queue_size, retry_after_seconds=max(0.1, max_queue_delay * 10))
        self._batches = BatchFormer(self._intake, max_batch_size, max_queue_delay, close_when_idle)
        self._slots = SlotTable()
        self._meter = WorkerMeter(executor.num_exits, observer)
        self._withdrawn: deque[QueuedRequest] = deque()  # appended by any thread, taken by the worker
        self._expiring = ExpiryQueue()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- submission and state (any thread) -----------------------------------------------------

    @property
    def observer(self) -> BatchObserver | None:
        """Called with every stage run on requests' images (the metrics)."""
        return self._meter.observer

    @observer.setter
    def observer(self, observer: BatchObserver | None) -> None:
        self._meter.observer = observer

    @property
    def queued(self) -> int:
        """Requests waiting in the queue."""
        return self._intake.queued

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that is on its way (being decoded) and will be submitted in this block.

        With `close_when_idle`, an open batch stops waiting for company as soon as the queue is empty
        and no request is announced: waiting out `max_queue_delay` for requests that do not exist
        only adds latency (at one client, the whole delay on every request).
        """
        with self._intake.arriving(wake_when_all_arrived=self.close_when_idle):
            yield

    @property
    def busy_seconds(self) -> float:
        """Seconds the worker has spent running stages for requests (idle-time checks not counted).

        Differences over time give the worker's utilisation: what the load-adaptive operating point
        reads before moving to a dearer point. A float written by the worker thread only.
        """
        return self._meter.busy_seconds

    @property
    def admitted_images(self) -> int:
        """Images that reached stage 0 so far: with `busy_seconds`, the worker's cost per image."""
        return self._meter.admitted_images

    @property
    def backlog_images(self) -> int:
        """Images waiting in the queue plus images in the cascade: the work ahead of a new request."""
        return self._intake.queued_images + len(self._slots)

    @property
    def backlog_seconds(self) -> float:
        """`backlog_images` at the worker's average cost per image so far: the wait a new request faces."""
        admitted = self._meter.admitted_images
        if admitted == 0:
            return 0.0
        return self.backlog_images * self._meter.busy_seconds / admitted

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
        on_exit: ExitSink | None = None,
        best_effort: bool = False,
    ) -> Future[RequestResult]:
        """Queue one request; fail fast when the queue is full or the batcher is closing.

        `replan`, if given, is called when the request's batch forms, and its plan replaces
        `thresholds` and `max_exit`: a request that asked for the server's default operating point
        gets the point that is the default when it runs. Under a sudden overload the load-adaptive
        default moves down within a fraction of a second, and the requests queued before the move
        would otherwise drain at the old, dearer point, which is what keeps latency high.
        `operating_point` names the plan it was queued with (the answer reports it unless replanned).
        `on_exit` hears every exit the request's images pass (see `ExitSink`); with `best_effort` a
        deadline that passes in the cascade is answered with the deepest exits reached.

        Cancelling the returned future withdraws the request, even once its images are in the cascade.
        """
        future = RequestFuture()
        request = QueuedRequest(
            images,
            thresholds,
            max_exit,
            top_k,
            deadline,
            future,
            replan=replan,
            operating_point=operating_point,
            on_exit=on_exit,
            best_effort=best_effort and deadline is not None,
        )
        future.on_withdraw = lambda: self._withdrawn.append(request)
        if deadline is not None and not request.best_effort:
            self._refuse_if_late(request, deadline)
        self._intake.put(request)
        return future

    def _refuse_if_late(self, request: QueuedRequest, deadline: float) -> None:
        """Shed at once a request whose deadline the work ahead of it already rules out.

        With `on_deadline=error` an answer after the deadline is a 504, so queueing a request that
        cannot finish in time costs its client the whole deadline for nothing and holds a place in
        the queue (measured at 2x overload with a 7.3 ms deadline: every such request waited and
        none was answered in time). The estimate: the images due before it (earliest deadline first)
        plus those in the cascade, then its own, at the worker's recent cost per image. Nothing is
        refused before the worker has a cost to go on, and best-effort requests are always queued:
        they asked for whatever exit the deadline allows.
        """
        per_image = self._meter.recent_seconds_per_image
        if per_image <= 0.0:
            return
        now = time.monotonic()
        running = len(self._slots)
        if now + (self._intake.queued_images + running + request.size) * per_image <= deadline:
            return  # in time even behind the whole queue: no need to look for who goes first
        ahead = self._intake.images_due_by(deadline, now) + running
        finish = now + (ahead + request.size) * per_image
        if finish > deadline:
            raise OverloadedError(
                f"the deadline cannot be met: {ahead} images are due before this request, about "
                f"{1000 * (finish - now):.1f} ms of work with it, "
                f"against {1000 * (deadline - now):.1f} ms left",
                retry_after_seconds=self._intake.retry_after_seconds,
                reason=DEADLINE_UNMEETABLE,
                images_ahead=ahead,
                expected_ms=round(1000 * (finish - now), 1),
            )

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
        self._intake.close(reject_waiting=not drain)
        self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while True:
            if self._withdrawn:
                self._drop_withdrawn()
            if self._expiring:
                self._expire(time.monotonic())
            idle = self._batches.idle  # no request is waiting for the worker
            stage = self._parking.ready_stage(idle or stopping)
            if stage is not None:
                self._run_parked(stage)
            elif stopping:
                carried = self._batches.take_carried()
                if not carried:
                    return
                self._admit(carried)
            elif idle and not self._parking and self._audit_has_work():
                self._audit_slice()  # spare capacity: one slice, then look at the queue again
            else:
                collected = self._batches.collect(wait=not self._parking)
                stopping = collected.stopping
                if collected.requests:
                    self._admit(collected.requests)

    def _admit(self, batch: list[QueuedRequest]) -> None:
        """Turn a batch of requests into a cohort at stage 0 and run that stage."""
        self._intake.left(batch)
        now = time.monotonic()
        runnable = [request for request in batch if request.claim(now)]
        if not runnable:
            return
        total = sum(r.size for r in runnable)
        self._meter.admitted(total)
        for request in runnable:
            request.apply_replan()
            request.begin(now, total)
        tags = self._slots.assign(runnable)
        images = torch.cat([r.images for r in runnable]) if len(runnable) > 1 else runnable[0].images
        watched = deadlines = None
        if any(r.watched or r.deadline is not None for r in runnable):  # every HTTP request has a deadline
            # Per-image rows from per-request values: one repeat each, not an array per request.
            sizes = [r.size for r in runnable]
            watched = np.repeat([r.watched for r in runnable], sizes)
            deadlines = np.repeat([math.inf if r.deadline is None else r.deadline for r in runnable], sizes)
        for request in runnable:
            if request.best_effort:
                self._expiring.push(request)
        try:
            cohort = self.executor.start(
                images,
                np.concatenate([r.thresholds for r in runnable]),
                np.concatenate([r.max_exit for r in runnable]),
                tags,
                top_k=max(r.top_k for r in runnable),
                watched=watched,
                deadlines=deadlines,
            )
        except Exception as exc:
            self._slots.fail(tags, exc)
            return
        self._step(cohort)

    def _run_parked(self, stage: int) -> None:
        cohort = self._parking.unpark(stage, self._slots.is_live)
        if cohort is not None:
            self._step(cohort)

    def _step(self, cohort: Cohort) -> None:
        """Run the cohort's next stage: park its survivors, answer the requests it completes."""
        try:
            step = self.executor.step(cohort)
        except Exception as exc:
            self._slots.fail(cohort.tags, exc)
            return
        self._meter.stepped(step)
        if step.passed:
            self._slots.passed(step.passed)
        if step.survivors is not None:
            self._parking.park(step.survivors)
        finished = time.monotonic()
        for request in self._slots.file(step.finished):
            self._answer(request, finished)

    def _answer(self, request: QueuedRequest, finished: float) -> None:
        if self.agreement is not None:
            last_exit = self.executor.num_exits - 1
            self.agreement.offer(request.images, request.finished_results(), last_exit=last_exit)
        request.answer(finished)

    def _drop_withdrawn(self) -> None:
        """Let go of the requests whose callers withdrew them: their slots are freed (their images are
        dropped when next met) and their futures end cancelled."""
        while self._withdrawn:
            request = self._withdrawn.popleft()
            if request.future.done():
                continue
            self._slots.drop(request)
            request.future.set_exception(CancelledError("withdrawn by its caller"))

    def _expire(self, now: float) -> None:
        """Answer the best-effort requests whose deadline passed (see `QueuedRequest.expire`)."""
        for request in self._expiring.due(now):
            request.expire(now)
            self._slots.drop(request)

    def _audit_has_work(self) -> bool:
        return self.agreement is not None and self.agreement.has_work

    def _audit_slice(self) -> None:
        assert self.agreement is not None
        try:
            self.agreement.run_slice(self.executor)
        except Exception:  # monitoring must never take the worker down
            logger.exception("exit-agreement check failed")


class ExpiryQueue:
    """Admitted best-effort requests by deadline; worker thread only.

    Answered requests are not removed when answered but skipped when they reach the top, so the
    queue costs one push per best-effort request and nothing per answer."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, QueuedRequest]] = []
        self._order = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, request: QueuedRequest) -> None:
        assert request.deadline is not None
        heapq.heappush(self._heap, (request.deadline, next(self._order), request))

    def due(self, now: float) -> list[QueuedRequest]:
        """The unanswered requests whose deadline is past, earliest first (answered ones are dropped)."""
        due: list[QueuedRequest] = []
        heap = self._heap
        while heap and (heap[0][2].future.done() or heap[0][0] <= now):
            _, _, request = heapq.heappop(heap)
            if not request.future.done():
                due.append(request)
        return due
