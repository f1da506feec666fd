"""What the worker did for requests: utilisation counters and the per-step metrics report.

`busy_seconds` and `admitted_images` give the worker's utilisation and its cost per image, which the
load-adaptive operating point reads before moving to a dearer point. `recent_seconds_per_image` is the
same cost over the last second or so (both sums decay with `RECENT_SECONDS`): what a request arriving
now will pay per image ahead of it, after the operating point or the batch sizes moved. Each stage
step is also handed to the metrics observer as a `BatchResult`. Idle-time audit work is not metered
here: it is spare capacity, not load.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from ranet_serve.cascade.executor import BatchResult, StepResult

logger = logging.getLogger(__name__)

BatchObserver = Callable[[BatchResult], None]

# The time constant of the recent cost per image: long enough to span many batches at any load,
# short enough that a move of the operating point shows within a second.
RECENT_SECONDS = 1.0


class WorkerMeter:
    """Written by the worker thread only; the counters are plain numbers read from any thread."""

    def __init__(
        self,
        num_exits: int,
        observer: BatchObserver | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.num_exits = num_exits
        self.observer = observer
        self.clock = clock
        self.busy_seconds = 0.0  # stage time spent on requests
        self.admitted_images = 0  # images that reached stage 0
        self._recent_busy = 0.0  # both decay with RECENT_SECONDS from `_recent_at`
        self._recent_images = 0.0
        self._recent_at = clock()

    @property
    def recent_seconds_per_image(self) -> float:
        """Busy seconds per admitted image lately (0.0 before any request ran).

        Read from any thread: two floats written by the worker, so a reader may pair an old sum with
        a new one; it is an estimate either way.
        """
        images = self._recent_images
        return self._recent_busy / images if images > 0 else 0.0

    def admitted(self, images: int) -> None:
        self.admitted_images += images
        self._decay()
        self._recent_images += images

    def stepped(self, step: StepResult) -> None:
        """Count one stage run on requests' images and report it to the observer."""
        self.busy_seconds += step.seconds
        self._decay()
        self._recent_busy += step.seconds
        if self.observer is not None:
            self._report(step)

    def _decay(self) -> None:
        now = self.clock()
        keep = math.exp((self._recent_at - now) / RECENT_SECONDS)
        self._recent_at = now
        self._recent_busy *= keep
        self._recent_images *= keep

    def _report(self, step: StepResult) -> None:
        assert self.observer is not None
        seconds = [0.0] * self.num_exits
        sizes = [0] * self.num_exits
        for stage, stage_seconds in step.stage_seconds:
            seconds[stage] = stage_seconds
            sizes[stage] = step.batch_size
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
