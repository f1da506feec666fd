"""What the worker did for requests: utilisation counters and the per-step metrics report.

`busy_seconds` and `admitted_images` give the worker's utilisation and its cost per image, which the
load-adaptive operating point reads before moving to a dearer point. Each stage step is also handed
to the metrics observer as a `BatchResult`. Idle-time audit work is not metered here: it is spare
capacity, not load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ranet_serve.cascade.executor import BatchResult, StepResult

logger = logging.getLogger(__name__)

BatchObserver = Callable[[BatchResult], None]


class WorkerMeter:
    """Written by the worker thread only; the counters are plain numbers read from any thread."""

    def __init__(self, num_exits: int, observer: BatchObserver | None):
        self.num_exits = num_exits
        self.observer = observer
        self.busy_seconds = 0.0  # stage time spent on requests
        self.admitted_images = 0  # images that reached stage 0

    def admitted(self, images: int) -> None:
        self.admitted_images += images

    def stepped(self, step: StepResult) -> None:
        """Count one stage run on requests' images and report it to the observer."""
        self.busy_seconds += step.seconds
        if self.observer is not None:
            self._report(step)

    def _report(self, step: StepResult) -> None:
        assert self.observer is not None
        seconds = [0.0] * self.num_exits
        sizes = [0] * self.num_exits
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
