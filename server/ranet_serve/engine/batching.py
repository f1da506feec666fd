"""Batch forming: which queued requests start the cascade together.

A batch closes when it holds `max_batch_size` images, when its first request has waited
`max_queue_delay`, or, with `close_when_idle`, as soon as the queue is empty and no request is
announced (waiting out the delay for requests that do not exist only adds latency: at one client,
the whole delay on every request). A request that would overfill a batch is carried over and starts
the next one, so batches never exceed `max_batch_size` unless a single request does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ranet_serve.engine.intake import Intake, Stop, Wake
from ranet_serve.engine.requests import QueuedRequest


@dataclass
class Collected:
    """What one `BatchFormer.collect` call found."""

    requests: list[QueuedRequest] = field(default_factory=list)
    stopping: bool = False  # the stop marker was met: nothing more will be queued


class BatchFormer:
    """Forms batches from an `Intake`; worker thread only."""

    def __init__(self, intake: Intake, max_batch_size: int, max_queue_delay: float, close_when_idle: bool):
        self.intake = intake
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.close_when_idle = close_when_idle
        self._carried: QueuedRequest | None = None  # did not fit the previous batch

    @property
    def idle(self) -> bool:
        """Nothing carried over and nothing queued: no request is waiting for the worker."""
        return self._carried is None and self.intake.empty()

    def take_carried(self) -> list[QueuedRequest]:
        """The carried-over request as a batch of its own (used while stopping), or no batch."""
        carried, self._carried = self._carried, None
        return [] if carried is None else [carried]

    def collect(self, wait: bool) -> Collected:
        """The next batch of requests.

        With `wait` (the worker has nothing else to do) this blocks for the first request and then
        gives the batch `max_queue_delay` to fill; without it, it takes only what is queued now, so
        work the worker could be doing instead (parked survivors) is never held up by an empty queue.
        """
        first = self._carried
        self._carried = None
        if first is None:
            item = self.intake.take(block=wait)
            if item is None or isinstance(item, Wake):
                return Collected()
            if isinstance(item, Stop):
                return Collected(stopping=True)
            first = item
        batch = [first]
        size = first.size
        closes_at = first.enqueued + self.max_queue_delay if wait else 0.0
        while size < self.max_batch_size:
            if self.close_when_idle and self.intake.announced == 0 and self.intake.empty():
                break  # nobody else is coming: close now rather than wait for no one
            remaining = closes_at - time.monotonic()
            item = self.intake.take(remaining, block=remaining > 0)
            if item is None:
                break
            if isinstance(item, Stop):
                return Collected(batch, stopping=True)
            if isinstance(item, Wake):
                continue  # re-check: is anybody still on the way?
            if size + item.size > self.max_batch_size:
                self._carried = item  # starts the next batch instead of overfilling this one
                break
            batch.append(item)
            size += item.size
        return Collected(batch)
