"""Live exit-quality monitoring: how often an early exit agrees with the last exit, on real traffic.

A configurable fraction of the images that left early is kept (bounded) and, only when the worker
has nothing else to do, re-run to the last exit; the early and the final predictions are compared
per exit. An operator then sees when early exits drift away from what the calibration promised,
without adding latency to any request: the re-runs happen off the critical path, in idle time.

Only the batcher's worker thread calls `offer` and `run_pending`, so no locking is needed there;
the counts are read (as a snapshot) from other threads.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.executor import CascadeExecutor, ImageResult

AgreementObserver = Callable[[int, bool], None]  # (exit, agreed with the last exit)


@dataclass
class _Sample:
    image: Tensor  # [C, H, W]
    exit: int
    class_index: int


class AgreementMonitor:
    """Samples early-exited images and checks them against the last exit in idle time."""

    def __init__(
        self,
        fraction: float,
        *,
        max_pending: int = 256,
        batch_size: int = 32,
        observer: AgreementObserver | None = None,
        seed: int = 0,
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"agreement sample fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.batch_size = batch_size
        self.observer = observer
        self._pending: deque[_Sample] = deque(maxlen=max_pending)  # oldest samples fall off under load
        self._random = random.Random(seed)
        self.checked = np.zeros(0, dtype=np.int64)
        self.agreed = np.zeros(0, dtype=np.int64)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, images: Tensor, results: Sequence[ImageResult], last_exit: int) -> None:
        """Keep a random `fraction` of the `images` whose `results` left before `last_exit`."""
        if self.fraction <= 0.0:
            return
        for index, image_result in enumerate(results):
            if image_result.exit < last_exit and self._random.random() < self.fraction:
                self._pending.append(
                    _Sample(images[index].detach().clone(), image_result.exit, image_result.class_index)
                )

    def run_pending(self, executor: CascadeExecutor) -> int:
        """Re-run up to one batch of samples to the last exit; returns how many were checked."""
        if not self._pending:
            return 0
        batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        n = len(batch)
        exits = executor.num_exits
        full = executor.run(
            torch.stack([s.image for s in batch]),
            np.ones((n, exits), dtype=np.float32),  # 1.0: never leave early
            np.full(n, exits - 1, dtype=np.int64),
        )
        if self.checked.size < exits:
            self.checked = np.zeros(exits, dtype=np.int64)
            self.agreed = np.zeros(exits, dtype=np.int64)
        for sample, final in zip(batch, full.images, strict=True):
            agreed = sample.class_index == final.class_index
            self.checked[sample.exit] += 1
            self.agreed[sample.exit] += int(agreed)
            if self.observer is not None:
                self.observer(sample.exit, agreed)
        return n

    def ratios(self) -> dict[int, float]:
        """Agreement with the last exit per early exit, for exits checked at least once."""
        return {k: float(self.agreed[k] / c) for k, c in enumerate(self.checked.tolist()) if c}
