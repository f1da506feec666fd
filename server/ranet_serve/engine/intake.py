"""The bounded queue between the threads that submit requests and the scheduler's worker thread.

A full queue fails fast with `OverloadedError` instead of growing without limit. Besides requests,
the queue carries two kinds of marker: a wake token (the last announced request arrived or gave up,
so an open batch should re-check whether anybody is still coming) and the stop marker (put once by
`close`; nothing is accepted behind it). Check-then-put and close-then-stop happen under one lock,
so the bound is exact and no request can land behind the stop marker.

The queue serves earliest deadline first: a request without a deadline sorts after every request
with one, and equal deadlines (none, usually) keep their arrival order. A wake token sorts before
everything (it only makes an open batch look again); the stop marker after everything.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from ranet_serve.engine.requests import QueuedRequest
from ranet_serve.errors import OVERLOAD_REASONS, OverloadedError

QUEUE_FULL, _, SHUTDOWN, _ = OVERLOAD_REASONS


class Wake:
    """Queue token: the last announced request arrived or gave up; an open batch re-checks."""


class Stop:
    """Queue marker: the batcher is closing; nothing follows it."""


WAKE: Final = Wake()
STOP: Final = Stop()

QueueItem = QueuedRequest | Wake | Stop
_Entry = tuple[float, int, QueueItem]  # (deadline, arrival order, item): the priority queue's order


def _wake_entry(order: int) -> _Entry:
    return (-math.inf, order, WAKE)


_STOP_ENTRY: Final[_Entry] = (math.inf, 2**62, STOP)


class Intake:
    """Bounded request queue with arrival announcements; `take` is for the worker thread only."""

    def __init__(self, max_queue_size: int, retry_after_seconds: float):
        self.max_queue_size = max_queue_size
        self.retry_after_seconds = retry_after_seconds
        self._queue: queue.PriorityQueue[_Entry] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._closing = False
        self._arriving = 0  # requests announced with `arriving()` and not submitted yet
        self._wake_tokens = 0  # WAKE tokens in the queue (not requests: `queued` leaves them out)
        self._queued_images = 0  # images of queued requests (under the lock)

    # -- any thread ----------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting in the queue."""
        return max(0, self._queue.qsize() - self._wake_tokens)

    @property
    def queued_images(self) -> int:
        """Images of the requests waiting in the queue."""
        with self._lock:
            return self._queued_images

    def images_due_by(self, deadline: float, now: float) -> int:
        """Images of the queued requests that run before a request due at `deadline` would.

        The queue is earliest deadline first, so those are the requests due no later; ones already
        past their deadline (`now`) or whose caller left are skipped by the worker at no cost and are
        not counted. A scan of the queue under its own lock: called only for requests that carry a
        deadline, and the queue is bounded by `max_queue_size`.
        """
        with self._queue.mutex:
            return sum(
                item.size
                for due, _, item in self._queue.queue
                if now <= due <= deadline and isinstance(item, QueuedRequest) and not item.future.done()
            )

    @property
    def announced(self) -> int:
        """Requests announced with `arriving` and not submitted yet."""
        return self._arriving

    @contextmanager
    def arriving(self, wake_when_all_arrived: bool) -> Iterator[None]:
        """Announce a request that will be submitted in this block (see `Batcher.arriving`).

        With `wake_when_all_arrived`, the last announcement to end puts a wake token, so a batch that
        is waiting for company learns at once that nobody else is on the way.
        """
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1
                if self._arriving == 0 and wake_when_all_arrived:
                    self._wake_tokens += 1
                    self._queue.put(_wake_entry(next(self._order)))

    def put(self, request: QueuedRequest) -> None:
        """Queue `request`; raises `OverloadedError` when the queue is full or closing."""
        with self._lock:
            if self._closing:
                raise OverloadedError("server is shutting down", retry_after_seconds=1.0, reason=SHUTDOWN)
            if self.queued >= self.max_queue_size:
                raise OverloadedError(
                    f"queue full ({self.max_queue_size} requests waiting)",
                    retry_after_seconds=self.retry_after_seconds,
                    reason=QUEUE_FULL,
                )
            deadline = math.inf if request.deadline is None else request.deadline
            self._queue.put((deadline, next(self._order), request))
            self._queued_images += request.size

    def close(self, reject_waiting: bool) -> None:
        """Accept nothing more and put the stop marker; with `reject_waiting`, every request still
        queued is answered with a shutdown `OverloadedError` instead of being run."""
        with self._lock:
            self._closing = True
        if reject_waiting:
            while True:
                try:
                    _, _, item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Wake):
                    self._consumed_wake()
                elif isinstance(item, QueuedRequest):
                    self.left([item])
                    if item.future.set_running_or_notify_cancel():
                        item.future.set_exception(OverloadedError("server is shutting down", reason=SHUTDOWN))
        self._queue.put(_STOP_ENTRY)

    # -- worker thread -------------------------------------------------------------------------

    def empty(self) -> bool:
        return self._queue.empty()

    def take(self, timeout: float | None = None, *, block: bool = True) -> QueueItem | None:
        """The next item: waits up to `timeout` (forever when None) unless `block` is False; None
        when nothing came. A wake token is consumed here, but still returned."""
        try:
            _, _, item = self._queue.get(timeout=timeout) if block else self._queue.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, Wake):
            self._consumed_wake()
        return item

    def left(self, requests: list[QueuedRequest]) -> None:
        """`requests` were taken off the queue for good (admitted or answered)."""
        with self._lock:
            self._queued_images -= sum(r.size for r in requests)

    def _consumed_wake(self) -> None:
        with self._lock:
            self._wake_tokens -= 1
