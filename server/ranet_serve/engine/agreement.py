"""Live exit-quality monitoring: how often an early exit agrees with the last exit, on real traffic.

A configurable fraction of the images that left early is kept (bounded) and, only when the worker
has nothing else to do, re-run to the last exit; the early and the final predictions are compared
per exit. An operator then sees when early exits drift away from what the calibration promised.

The re-runs must not delay requests, and the worker cannot pre-empt a stage once it has started, so
the audit runs in slices: one slice is one stage on at most `slice_images` samples (the same cohort
is carried from slice to slice until it reaches the last exit). The worker looks at its queue between
slices, so a request that arrives during the audit waits for at most one slice, never for a whole
batch of samples through every stage. `longest_slice_seconds` is that worst wait, as measured.

Only the batcher's worker thread calls `offer` and `run_slice`, so no locking is needed there;
`pending` and the counts are read (as a snapshot) from other threads.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.executor import CascadeExecutor, Cohort, ImageResult

AgreementObserver = Callable[[int, bool], None]  # (exit, agreed with the last exit)


@dataclass
class _Sample:
    image: Tensor  # [C, H, W]
    exit: int
    class_index: int


class AgreementMonitor:
    """Samples early-exited images and checks them against the last exit in idle-time slices."""

    def __init__(
        self,
        fraction: float,
        *,
        max_pending: int = 256,
        slice_images: int = 4,
        observer: AgreementObserver | None = None,
        seed: int = 0,
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"agreement sample fraction must be in [0, 1], got {fraction}")
        if slice_images < 1:
            raise ValueError(f"slice_images must be at least 1, got {slice_images}")
        self.fraction = fraction
        # Small on purpose: a slice is the longest an arriving request can be held up by the audit.
        self.slice_images = slice_images
        self.observer = observer
        self._pending: deque[_Sample] = deque(maxlen=max_pending)  # oldest samples fall off under load
        self._random = random.Random(seed)
        self._auditing: list[_Sample] = []  # the samples in `_cohort`, indexed by the cohort's tags
        self._cohort: Cohort | None = None  # the audit cohort part-way to the last exit
        self.checked = np.zeros(0, dtype=np.int64)
        self.agreed = np.zeros(0, dtype=np.int64)
        self.slices = 0
        self.longest_slice_seconds = 0.0

    @property
    def pending(self) -> int:
        """Samples not checked yet: waiting, or part-way through the cascade."""
        return len(self._pending) + len(self._auditing)

    @property
    def has_work(self) -> bool:
        """Whether `run_slice` would run a stage."""
        return self._cohort is not None or bool(self._pending)

    def offer(self, images: Tensor, results: Sequence[ImageResult], last_exit: int) -> None:
        """Keep a random `fraction` of the `images` whose `results` left before `last_exit`."""
        if self.fraction <= 0.0:
            return
        for index, image_result in enumerate(results):
            if image_result.exit < last_exit and self._random.random() < self.fraction:
                self._pending.append(
                    _Sample(images[index].detach().clone(), image_result.exit, image_result.class_index)
                )

    def run_slice(self, executor: CascadeExecutor) -> int:
        """Run one audit slice: the next stage of the audit cohort, starting a cohort of at most
        `slice_images` samples when none is under way. Returns how many samples were checked (reached
        the last exit) in this slice. If the stage raises, its samples are dropped unchecked and the
        error propagates."""
        if not self.has_work:
            return 0
        started = time.perf_counter()
        try:
            cohort = self._cohort if self._cohort is not None else self._start(executor)
            step = executor.step(cohort)
        except Exception:
            self._cohort, self._auditing = None, []
            raise
        finally:
            self.slices += 1
            self.longest_slice_seconds = max(self.longest_slice_seconds, time.perf_counter() - started)
        self._cohort = step.survivors
        outcomes = [
            (self._auditing[tag], final.class_index == self._auditing[tag].class_index)
            for tag, final in step.finished
        ]
        self._count(outcomes, executor.num_exits)
        if self._cohort is None:
            self._auditing = []  # after counting, so `pending` reaches 0 only once the counts are in
        if self.observer is not None:
            for sample, agreed in outcomes:
                self.observer(sample.exit, agreed)
        return len(outcomes)

    def _start(self, executor: CascadeExecutor) -> Cohort:
        n = min(self.slice_images, len(self._pending))
        # Listed as auditing before they leave the queue, so `pending` never dips below the truth.
        self._auditing = list(itertools.islice(self._pending, n))
        for _ in range(n):
            self._pending.popleft()
        exits = executor.num_exits
        return executor.start(
            torch.stack([s.image for s in self._auditing]),
            np.ones((n, exits), dtype=np.float32),  # 1.0: never leave early
            np.full(n, exits - 1, dtype=np.int64),
            np.arange(n),
        )

    def _count(self, outcomes: list[tuple[_Sample, bool]], exits: int) -> None:
        if self.checked.size < exits:
            self.checked = np.zeros(exits, dtype=np.int64)
            self.agreed = np.zeros(exits, dtype=np.int64)
        for sample, agreed in outcomes:
            self.checked[sample.exit] += 1
            self.agreed[sample.exit] += int(agreed)

    def ratios(self) -> dict[int, float]:
        """Agreement with the last exit per early exit, for exits checked at least once."""
        return {k: float(self.agreed[k] / c) for k, c in enumerate(self.checked.tolist()) if c}
