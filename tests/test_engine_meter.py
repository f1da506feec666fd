"""The worker's recent cost per image and the queue's earliest-deadline-first count of work ahead."""

from __future__ import annotations

import math
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from ranet_serve.cascade.executor import StepResult
from ranet_serve.engine.intake import Intake
from ranet_serve.engine.meter import RECENT_SECONDS, WorkerMeter
from ranet_serve.engine.requests import QueuedRequest


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def step(seconds: float) -> StepResult:
    return StepResult(finished=(), passed=(), survivors=None, stage=0, batch_size=1, seconds=seconds)


def test_recent_cost_per_image_follows_the_latest_second() -> None:
    clock = Clock()
    meter = WorkerMeter(num_exits=2, observer=None, clock=clock)
    assert meter.recent_seconds_per_image == 0.0  # nothing ran: no estimate
    meter.admitted(10)
    meter.stepped(step(0.010))
    assert meter.recent_seconds_per_image == pytest.approx(0.001)
    # Five time constants later the old work has nearly faded: a dearer point's cost takes over.
    clock.now += 5 * RECENT_SECONDS
    meter.admitted(10)
    meter.stepped(step(0.050))
    expected = (0.010 * math.exp(-5) + 0.050) / (10 * math.exp(-5) + 10)
    assert meter.recent_seconds_per_image == pytest.approx(expected)
    assert 0.0049 < meter.recent_seconds_per_image < 0.005
    assert meter.busy_seconds == pytest.approx(0.060) and meter.admitted_images == 20  # totals stay


def request(size: int, deadline: float | None) -> QueuedRequest:
    return QueuedRequest(
        torch.zeros(size, 1, 4, 4),
        np.zeros((size, 2), dtype=np.float32),
        np.ones(size, dtype=np.int64),
        1,
        deadline,
        Future(),
    )


def test_work_ahead_counts_only_requests_due_first_and_still_wanted() -> None:
    intake = Intake(max_queue_size=16, retry_after_seconds=0.1)
    now = 50.0
    early, later, no_deadline, expired, left = (
        request(2, 51.0),
        request(3, 60.0),
        request(4, None),
        request(5, 49.0),
        request(6, 52.0),
    )
    for queued in (early, later, no_deadline, expired, left):
        intake.put(queued)
    left.future.cancel()
    assert intake.images_due_by(55.0, now) == 2  # `later` and the undated one run after it
    assert intake.images_due_by(60.0, now) == 5
    assert intake.images_due_by(math.inf, now) == 9  # an undated request is behind all the others
    assert intake.images_due_by(50.5, now) == 0
