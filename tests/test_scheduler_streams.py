"""The scheduler's per-exit reporting, withdrawal mid-cascade, best-effort deadlines and EDF order."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ranet_serve.cascade.executor import CascadeExecutor
from ranet_serve.cascade.results import ImageResult
from ranet_serve.cascade.runtimes import OnnxRuntime, StageRuntime
from ranet_serve.engine.parking import SurvivorParking
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.errors import DeadlineExceededError
from ranet_serve.export.bundle import Bundle, load_bundle

EXITS = 6


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path) -> Bundle:
    """The session's tiny bundle (exported once), loaded afresh for this module: its tests only read it."""
    return load_bundle(tiny_bundle_dir)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(11))


def never_confident(n: int) -> np.ndarray:
    return np.full((n, EXITS), 1.0, dtype=np.float32)


def last_exit(n: int) -> np.ndarray:
    return np.full(n, EXITS - 1, dtype=np.int64)


class StageGate(StageRuntime):
    """Wraps a runtime: records (stage, batch size) of every call and holds `hold_stage` until released
    (or, with `until`, until that monotonic time has passed)."""

    backend = "stage-gate"

    def __init__(self, inner: StageRuntime, hold_stage: int | None = None):
        super().__init__(inner.bundle)
        self.inner, self.device, self.arrays = inner, inner.device, inner.arrays
        self.hold_stage = hold_stage
        self.entered = threading.Event()
        self.release = threading.Event()
        self.until: float | None = None
        self.calls: list[tuple[int, int]] = []

    def run(self, stage: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append((stage, next(iter(inputs.values())).shape[0]))
        if stage == self.hold_stage:
            self.entered.set()
            if self.until is not None:
                while time.monotonic() <= self.until:  # the condition the test waits for: the deadline
                    self.release.wait(0.005)
            else:
                assert self.release.wait(10)
        return self.inner.run(stage, inputs)


def test_a_streamed_request_hears_every_exit_in_order_then_its_final_one(bundle, images) -> None:
    runtime = OnnxRuntime(bundle, threads=1)
    thresholds = never_confident(3)
    thresholds[0, 1] = 0.0  # image 0 leaves at exit 1; the others run to the last exit
    events: list[tuple[int, ImageResult, bool]] = []
    batcher = Batcher(CascadeExecutor(runtime), max_batch_size=8, max_queue_delay=0.0)
    try:
        result = batcher.submit(
            images[:3], thresholds, last_exit(3), on_exit=lambda i, r, final: events.append((i, r, final))
        ).result(10)
    finally:
        batcher.close()
    for image, expected_exits in ((0, [0, 1]), (1, list(range(EXITS))), (2, list(range(EXITS)))):
        mine = [(r.exit, final) for i, r, final in events if i == image]
        assert mine == [(k, k == expected_exits[-1]) for k in expected_exits]
    # The final event is the answer; every passed exit is what that exit computes for the image.
    finals = {i: r for i, r, final in events if final}
    assert [finals[i] for i in range(3)] == list(result.images)
    direct = CascadeExecutor(runtime)
    for image, r, _ in events:
        caps = np.full(1, r.exit, dtype=np.int64)
        alone = direct.run(images[image : image + 1], never_confident(1), caps).images[0]
        assert (alone.exit, alone.class_index) == (r.exit, r.class_index)
        assert alone.confidence == pytest.approx(r.confidence, abs=1e-6)


def test_a_request_withdrawn_mid_cascade_stops_at_the_next_stage_boundary(bundle, images) -> None:
    gate = StageGate(OnnxRuntime(bundle, threads=1), hold_stage=2)
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=8, max_queue_delay=0.0, rebatch_delay=None)
    try:
        withdrawn = batcher.submit(images[:4], never_confident(4), last_exit(4))
        assert gate.entered.wait(10)
        assert not withdrawn.cancel()  # running: not cancellable, but withdrawn
        gate.release.set()
        with pytest.raises(CancelledError):
            withdrawn.result(10)
        after = batcher.submit(images[4:6], never_confident(2), last_exit(2)).result(10)
    finally:
        batcher.close()
    assert [r.exit for r in after.images] == [EXITS - 1] * 2
    # The withdrawn request ran stages 0-2 (2 was running when it left) and nothing after; the
    # next request ran every stage on its own 2 images.
    assert gate.calls == [(0, 4), (1, 4), (2, 4)] + [(k, 2) for k in range(EXITS)]
    assert batcher.in_flight_images == 0


def test_best_effort_answers_the_deepest_exit_reached_when_the_deadline_passes(bundle, images) -> None:
    gate = StageGate(OnnxRuntime(bundle, threads=1), hold_stage=2)
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=8, max_queue_delay=0.0, rebatch_delay=None)
    deadline = time.monotonic() + 1.0
    gate.until = deadline  # stage 2 runs past the deadline
    try:
        best = batcher.submit(
            images[:3], never_confident(3), last_exit(3), deadline=deadline, best_effort=True
        )
        answer = best.result(10)
    finally:
        batcher.close()
    assert [(r.exit, r.deadline_limited, r.budget_limited) for r in answer.images] == [(2, True, False)] * 3
    assert [stage for stage, _ in gate.calls] == [0, 1, 2]  # stages 3-5 never ran
    direct = CascadeExecutor(gate.inner).run(images[:3], never_confident(3), np.full(3, 2, dtype=np.int64))
    assert [r.class_index for r in answer.images] == [r.class_index for r in direct.images]


def test_best_effort_that_reached_no_exit_before_its_deadline_is_an_error(bundle, images) -> None:
    gate = StageGate(OnnxRuntime(bundle, threads=1), hold_stage=0)
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=1, max_queue_delay=0.0)
    try:
        deadline = time.monotonic() + 0.2
        gate.until = deadline  # the request ahead holds the worker until the deadline has passed
        ahead = batcher.submit(images[:1], never_confident(1), last_exit(1))
        assert gate.entered.wait(10)
        late = batcher.submit(
            images[1:2], never_confident(1), last_exit(1), deadline=deadline, best_effort=True
        )
        with pytest.raises(DeadlineExceededError, match="in the queue"):
            late.result(10)
        assert ahead.result(10).images[0].exit == EXITS - 1
    finally:
        batcher.close()


def test_the_queue_serves_the_earliest_deadline_first(bundle, images) -> None:
    gate = StageGate(OnnxRuntime(bundle, threads=1), hold_stage=0)
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=1, max_queue_delay=0.0)
    order: list[str] = []
    try:
        blocker = batcher.submit(images[:1], never_confident(1), np.zeros(1, dtype=np.int64))
        assert gate.entered.wait(10)
        now = time.monotonic()
        futures: dict[str, Future] = {
            "none-1": batcher.submit(images[1:2], never_confident(1), np.zeros(1, dtype=np.int64)),
            "late": batcher.submit(
                images[2:3], never_confident(1), np.zeros(1, dtype=np.int64), deadline=now + 60
            ),
            "none-2": batcher.submit(images[3:4], never_confident(1), np.zeros(1, dtype=np.int64)),
            "soon": batcher.submit(
                images[4:5], never_confident(1), np.zeros(1, dtype=np.int64), deadline=now + 30
            ),
        }
        for name, future in futures.items():
            future.add_done_callback(lambda _, name=name: order.append(name))
        gate.hold_stage = None
        gate.release.set()
        blocker.result(10)
        for future in futures.values():
            future.result(10)
    finally:
        batcher.close()
    assert order == ["soon", "late", "none-1", "none-2"]


def test_parked_survivors_run_earliest_deadline_first_across_stages(bundle, images) -> None:
    executor = CascadeExecutor(OnnxRuntime(bundle, threads=1))
    arrays = executor.runtime.arrays

    def cohort(stage: int, deadline: float, tag: int):
        start = executor.start(
            images[:1], never_confident(1), last_exit(1), np.array([tag]), deadlines=np.array([deadline])
        )
        return replace(start, stage=stage)

    parking = SurvivorParking(EXITS, max_batch_size=1, rebatch_delay=None, arrays=arrays)
    parking.park(cohort(4, math.inf, 0))
    parking.park(cohort(2, 50.0, 1))
    parking.park(cohort(2, 20.0, 2))
    parking.park(cohort(3, 20.0, 3))
    live = lambda tag: True  # noqa: E731
    order = []
    while (stage := parking.ready_stage(idle=False)) is not None:
        taken = parking.unpark(stage, live)
        assert taken is not None
        order.append((stage, int(taken.tags[0])))
    # Deadline 20 first (the deeper of the two stages holding one on a tie), then 50, then none.
    assert order == [(3, 3), (2, 2), (2, 1), (4, 0)]


def test_streamed_and_plain_requests_ride_the_same_batches(bundle, images) -> None:
    gate = StageGate(OnnxRuntime(bundle, threads=1), hold_stage=0)
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=8, max_queue_delay=0.0, rebatch_delay=10.0)
    heard: list[tuple[int, int, bool]] = []
    try:
        blocker = batcher.submit(images[:1], never_confident(1), np.zeros(1, dtype=np.int64))
        assert gate.entered.wait(10)
        streamed = batcher.submit(
            images[1:3],
            never_confident(2),
            last_exit(2),
            on_exit=lambda i, r, f: heard.append((i, r.exit, f)),
        )
        plain = batcher.submit(images[3:5], never_confident(2), last_exit(2))
        gate.hold_stage = None
        gate.release.set()
        blocker.result(10)
        assert [r.exit for r in streamed.result(10).images + plain.result(10).images] == [EXITS - 1] * 4
    finally:
        batcher.close()
    # After the blocker's one stage, every stage ran once on the four images of both requests.
    assert gate.calls[1:] == [(k, 4) for k in range(EXITS)]
    assert len(heard) == 2 * EXITS and sum(final for _, _, final in heard) == 2
