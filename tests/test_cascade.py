"""The cascade executor, the budget policy and the batcher, on a real exported bundle."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.bundles import tiny_model
from ranet_serve.cascade.executor import CascadeExecutor
from ranet_serve.cascade.policy import Budget, ExitPlan, ExitPolicy
from ranet_serve.cascade.runtimes import EagerRuntime, OnnxRuntime, StageRuntime, TorchScriptRuntime
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.errors import BudgetError, DeadlineExceededError, OverloadedError, StageExecutionError
from ranet_serve.export.bundle import Bundle, load_bundle

N = 24
EXITS = 6


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path) -> Bundle:
    """The session's tiny bundle (exported once), loaded afresh for this module: its tests only read it."""
    return load_bundle(tiny_bundle_dir)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def executor(bundle: Bundle) -> CascadeExecutor:
    return CascadeExecutor(OnnxRuntime(bundle, threads=1))


def full(value: float, n: int = N) -> np.ndarray:
    return np.full((n, EXITS), value, dtype=np.float32)


def caps(value: int, n: int = N) -> np.ndarray:
    return np.full(n, value, dtype=np.int64)


def test_thresholds_above_one_send_every_image_to_the_last_exit(executor, bundle, images) -> None:
    result = executor.run(images, full(1.5), caps(EXITS - 1), top_k=3)
    with torch.no_grad():
        last = torch.softmax(bundle.load_model()(images)[-1], dim=1)
    assert [r.exit for r in result.images] == [EXITS - 1] * N
    assert [r.class_index for r in result.images] == last.argmax(1).tolist()
    np.testing.assert_allclose([r.confidence for r in result.images], last.max(1).values.numpy(), atol=1e-5)
    assert result.stage_batch_sizes == (N,) * EXITS
    assert all(r.flops == bundle.manifest.exits[-1].cumulative_flops for r in result.images)
    assert not any(r.budget_limited for r in result.images)
    first = result.images[0]
    assert [c for c, _ in first.top_k] == torch.argsort(last[0], descending=True)[:3].tolist()


def test_thresholds_of_zero_send_every_image_out_at_exit_zero(executor, bundle, images) -> None:
    result = executor.run(images, full(0.0), caps(EXITS - 1))
    assert {r.exit for r in result.images} == {0}
    assert result.stage_batch_sizes == (N, 0, 0, 0, 0, 0)
    assert {r.flops for r in result.images} == {bundle.manifest.exits[0].cumulative_flops}


def test_each_image_leaves_at_its_first_confident_exit(executor, bundle, images) -> None:
    thresholds = 0.5
    result = executor.run(images, full(thresholds), caps(EXITS - 1))
    with torch.no_grad():
        confidences = torch.stack([torch.softmax(o, 1).max(1).values for o in bundle.load_model()(images)])
    for i, r in enumerate(result.images):
        confident = (confidences[:, i] >= thresholds).nonzero().flatten().tolist()
        expected = confident[0] if confident else EXITS - 1
        assert r.exit == expected
        assert r.flops == bundle.manifest.exits[expected].cumulative_flops
    sizes = result.stage_batch_sizes
    assert all(a >= b for a, b in itertools.pairwise(sizes))


def test_mixed_budgets_in_one_batch_equal_the_images_run_alone(executor, images) -> None:
    rng = np.random.default_rng(0)
    thresholds = rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], size=(N, EXITS)).astype(np.float32)
    max_exit = rng.integers(0, EXITS, N)
    together = executor.run(images, thresholds, max_exit, top_k=2)
    for i in range(N):
        alone = executor.run(images[i : i + 1], thresholds[i : i + 1], max_exit[i : i + 1], top_k=2).images[0]
        got = together.images[i]
        assert (got.exit, got.class_index, got.flops, got.budget_limited) == (
            alone.exit,
            alone.class_index,
            alone.flops,
            alone.budget_limited,
        )
        assert got.confidence == pytest.approx(alone.confidence, abs=1e-5)
        assert got.exit <= max_exit[i]


def test_budget_limited_is_set_exactly_when_the_cap_forced_the_exit(executor, images) -> None:
    result = executor.run(images, full(1.0), caps(2))  # never confident: the cap decides
    assert {r.exit for r in result.images} == {2}
    assert all(r.budget_limited for r in result.images)
    relaxed = executor.run(images, full(0.0), caps(2))  # confident at exit 0: the cap is irrelevant
    assert not any(r.budget_limited for r in relaxed.images)


def test_stages_get_exactly_their_inputs_and_drop_lists_follow_last_readers(bundle, images) -> None:
    seen: list[set[str]] = []

    class Recording(StageRuntime):
        backend = "recording"

        def __init__(self, inner: StageRuntime):
            super().__init__(inner.bundle)
            self.inner, self.device, self.arrays = inner, inner.device, inner.arrays

        def run(self, stage: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            seen.append(set(inputs))
            return self.inner.run(stage, inputs)

    executor = CascadeExecutor(Recording(OnnxRuntime(bundle, threads=1)))
    executor.run(images, full(1.0), caps(EXITS - 1))
    assert seen == [set(stage.inputs) for stage in bundle.manifest.stages]
    readers = {t.name: t.last_reader_stage for t in bundle.manifest.tensors}
    for stage, dropped in enumerate(executor._drop_after):
        assert all(readers[name] == stage for name in dropped)


def test_cpu_onnxruntime_hands_numpy_state_from_stage_to_stage(bundle, images) -> None:
    """No torch tensor between onnxruntime CPU stages: state, gathers and logits stay numpy."""
    executor = CascadeExecutor(OnnxRuntime(bundle, threads=1))
    cohort = executor.start(images, half_leave_at_exit_0(N), caps(EXITS - 1), np.arange(N))
    assert isinstance(cohort.env["image"], np.ndarray)
    step = executor.step(cohort)
    assert step.survivors is not None and step.survivors.size == N // 2  # rows were gathered
    assert step.survivors.env and all(isinstance(a, np.ndarray) for a in step.survivors.env.values())


def test_all_runtimes_agree(bundle, images) -> None:
    results = [
        CascadeExecutor(runtime).run(images, full(0.4), caps(EXITS - 1))
        for runtime in (OnnxRuntime(bundle, threads=1), TorchScriptRuntime(bundle), EagerRuntime(bundle))
    ]
    reference = results[0].images
    for other in results[1:]:
        assert [r.exit for r in other.images] == [r.exit for r in reference]
        assert [r.class_index for r in other.images] == [r.class_index for r in reference]
        np.testing.assert_allclose(
            [r.confidence for r in other.images], [r.confidence for r in reference], atol=1e-5
        )


def test_small_batches_run_on_single_threaded_sessions(bundle, images) -> None:
    runtime = OnnxRuntime(bundle, threads=2, single_thread_below=4)
    assert [runtime.threads_for(n) for n in (1, 3, 4, 64)] == [1, 1, 2, 2]
    small, large = runtime.sessions_for(3), runtime.sessions_for(4)
    assert large == runtime.sessions and not set(map(id, small)) & set(map(id, large))
    assert {s.get_session_options().intra_op_num_threads for s in small} == {1}
    assert {s.get_session_options().intra_op_num_threads for s in large} == {2}
    # Every stage call goes to the session set its batch size picks, including survivor batches that
    # shrink below the line part-way through the cascade.
    used: list[tuple[int, int]] = []
    for threads, sessions in ((1, small), (2, large)):
        for session in sessions:
            original = session.run

            def spy(names, feed, *rest, original=original, threads=threads):
                used.append((next(iter(feed.values())).shape[0], threads))
                return original(names, feed, *rest)

            session.run = spy
    thresholds = full(1.5, 8)
    thresholds[:5] = 0.0  # five images leave at exit 0, three go on to the end
    result = CascadeExecutor(runtime).run(images[:8], thresholds, caps(EXITS - 1, 8))
    assert result.stage_batch_sizes == (8,) + (3,) * (EXITS - 1)
    assert used == [(8, 2)] + [(3, 1)] * (EXITS - 1)
    # Same numbers either way: forcing the multi-threaded sessions changes nothing but speed.
    forced = OnnxRuntime(bundle, threads=2, single_thread_below=0)
    for n in (1, 3):
        staged = run_all_stages(runtime, images[:n])
        for got, want in zip(staged, run_all_stages(forced, images[:n]), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_single_thread_sessions_only_where_they_differ(bundle) -> None:
    for runtime in (
        OnnxRuntime(bundle, threads=1),  # already single-threaded: one set of sessions
        OnnxRuntime(bundle, threads=2, single_thread_below=0),  # turned off
    ):
        assert runtime.single_thread_below == 0
        assert runtime.sessions_for(1) == runtime.sessions_for(64) == runtime.sessions
        assert runtime.threads_for(1) == runtime.threads


# -- policy --------------------------------------------------------------------------------------


def test_max_flops_caps_the_exit_and_below_the_cheapest_is_an_error(bundle) -> None:
    policy = ExitPolicy(bundle.manifest)
    flops = bundle.manifest.cumulative_flops
    assert policy.resolve(Budget(max_flops=flops[1] + 1)).max_exit == 1
    assert policy.resolve(Budget(max_flops=flops[1])).max_exit == 1
    assert policy.resolve(Budget(max_flops=1e18)).max_exit == EXITS - 1
    with pytest.raises(BudgetError) as error:
        policy.resolve(Budget(max_flops=flops[0] - 1))
    assert error.value.details["cheapest_exit_flops"] == flops[0]


def test_target_flops_picks_the_most_accurate_point_within_the_target(bundle) -> None:
    policy = ExitPolicy(bundle.manifest)
    points = {p.name: p for p in bundle.manifest.calibration.points}  # type: ignore[union-attr]
    assert (
        policy.resolve(Budget(target_flops=points["balanced"].expected_flops)).operating_point == "balanced"
    )
    assert policy.resolve(Budget(target_flops=points["fast"].expected_flops)).operating_point == "fast"
    assert policy.resolve(Budget(target_flops=1e18)).operating_point == "full-depth"
    with pytest.raises(BudgetError, match="below the cheapest operating point"):
        policy.resolve(Budget(target_flops=1.0))


def test_explicit_thresholds_and_confidence_override_and_are_validated(bundle) -> None:
    policy = ExitPolicy(bundle.manifest)
    plan = policy.resolve(Budget(confidence=0.7, target_flops=1e18))
    assert (
        plan.thresholds.tolist() == pytest.approx([0.7] * EXITS) and plan.operating_point == "confidence=0.7"
    )
    assert policy.resolve(Budget(thresholds=(0.1,) * EXITS)).operating_point == "custom-thresholds"
    with pytest.raises(BudgetError, match="needs 6 values"):
        policy.resolve(Budget(thresholds=(0.5,) * 5))
    with pytest.raises(BudgetError, match=r"\[0, 1\]"):
        policy.resolve(Budget(thresholds=(0.5,) * 5 + (1.5,)))
    with pytest.raises(BudgetError, match="not both"):
        policy.resolve(Budget(thresholds=(0.5,) * EXITS, confidence=0.5))
    with pytest.raises(BudgetError, match="unknown operating point"):
        ExitPolicy(bundle.manifest, default_point="nope")


def test_default_point_when_no_knob_and_full_depth_when_uncalibrated(bundle) -> None:
    assert ExitPolicy(bundle.manifest).resolve(Budget()).operating_point == "balanced"
    bare = bundle.manifest.model_copy(update={"calibration": None})
    plan = ExitPolicy(bare).resolve(Budget())
    assert plan.operating_point == "full-depth" and plan.thresholds.tolist() == [1.0] * EXITS
    with pytest.raises(BudgetError, match="calibrated"):
        ExitPolicy(bare).resolve(Budget(target_flops=1e7))


# -- batcher -------------------------------------------------------------------------------------


class Gate(StageRuntime):
    """Wraps a runtime; blocks in stage 0 until released, or raises when told to."""

    backend = "gate"

    def __init__(self, inner: StageRuntime):
        super().__init__(inner.bundle)
        self.inner, self.device, self.arrays = inner, inner.device, inner.arrays
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail_next = False

    def run(self, stage: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if stage == 0:
            self.entered.set()
            self.release.wait(10)
            if self.fail_next:
                self.fail_next = False
                raise StageExecutionError("injected failure", stage=0)
        return self.inner.run(stage, inputs)


@pytest.fixture
def gate(bundle) -> Gate:
    return Gate(OnnxRuntime(bundle, threads=1))


def submit(batcher: Batcher, images: torch.Tensor, **kwargs: object) -> Future:
    n = images.shape[0]
    return batcher.submit(images, full(0.0, n), caps(EXITS - 1, n), **kwargs)  # type: ignore[arg-type]


def test_batches_form_up_to_the_max_size_and_results_return_in_order(gate, images) -> None:
    sizes: list[int] = []
    batcher = Batcher(
        CascadeExecutor(gate),
        max_batch_size=8,
        max_queue_delay=0.05,
        observer=lambda result: sizes.append(result.stage_batch_sizes[0]),
    )
    try:
        blocker = submit(batcher, images[:1])
        gate.entered.wait(5)
        futures = [submit(batcher, images[i : i + 3]) for i in range(1, 19, 3)]  # 6 requests of 3 images
        gate.release.set()
        results = [f.result(10) for f in [blocker, *futures]]
    finally:
        batcher.close()
    assert sizes[0] == 1 and max(sizes) <= 8 and sum(sizes) == 19
    direct = CascadeExecutor(gate.inner).run(images[1:19], full(0.0, 18), caps(EXITS - 1, 18))
    flat = [r.class_index for res in results[1:] for r in res.images]
    assert flat == [r.class_index for r in direct.images]


def test_busy_seconds_add_up_the_stage_time_of_requests(bundle, images) -> None:
    stage_seconds: list[float] = []
    batcher = Batcher(
        CascadeExecutor(OnnxRuntime(bundle, threads=1)),
        max_batch_size=8,
        max_queue_delay=0.0,
        observer=lambda result: stage_seconds.append(sum(result.stage_seconds)),
    )
    try:
        assert batcher.busy_seconds == 0.0
        started = time.perf_counter()
        for i in range(0, 16, 4):
            submit(batcher, images[i : i + 4]).result(10)
        elapsed = time.perf_counter() - started
        busy = batcher.busy_seconds
        time.sleep(0.05)  # idle time is not busy time
        assert batcher.busy_seconds == busy
    finally:
        batcher.close()
    assert 0 < busy < elapsed
    assert busy == pytest.approx(sum(stage_seconds))  # the same stage timings the metrics observe


def test_replanned_requests_run_at_the_plan_of_the_moment_their_batch_forms(gate, images) -> None:
    current = {"plan": ExitPlan(np.full(EXITS, 1.5, dtype=np.float32), EXITS - 1, "dear")}
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=4, max_queue_delay=0.0)
    try:
        blocker = submit(batcher, images[:1])
        gate.entered.wait(5)  # the worker is busy: what follows waits in the queue
        queued_plan = (full(1.5, 2), caps(EXITS - 1, 2))  # planned at submission: full depth
        follows = batcher.submit(images[1:3], *queued_plan, replan=lambda: current["plan"])
        keeps = batcher.submit(images[3:5], *queued_plan)
        current["plan"] = ExitPlan(np.zeros(EXITS, dtype=np.float32), EXITS - 1, "cheap")  # the move
        gate.release.set()
        blocker.result(10)
        moved, unmoved = follows.result(10), keeps.result(10)
    finally:
        batcher.close()
    assert moved.operating_point == "cheap" and [r.exit for r in moved.images] == [0, 0]
    assert unmoved.operating_point is None and [r.exit for r in unmoved.images] == [EXITS - 1] * 2


def test_a_failing_replan_keeps_the_queued_plan_and_the_worker(gate, images) -> None:
    def broken() -> ExitPlan:
        raise RuntimeError("no plan")

    batcher = Batcher(CascadeExecutor(gate.inner), max_batch_size=4, max_queue_delay=0.0)
    try:
        result = batcher.submit(images[:2], full(1.5, 2), caps(EXITS - 1, 2), replan=broken).result(10)
        assert [r.exit for r in result.images] == [EXITS - 1] * 2 and result.operating_point is None
        assert submit(batcher, images[2:3]).result(10).images[0].exit == 0  # still serving
    finally:
        batcher.close()


def test_backlog_counts_queued_and_running_images(gate, images) -> None:
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=2, max_queue_delay=0.0)
    try:
        assert batcher.backlog_images == 0 and batcher.admitted_images == 0
        running = submit(batcher, images[:2])
        gate.entered.wait(5)  # 2 images in the cascade
        queued = [submit(batcher, images[2:5]), submit(batcher, images[5:6])]  # 4 images waiting
        assert batcher.backlog_images == 6 and batcher.admitted_images == 2
        gate.release.set()
        for future in [running, *queued]:
            future.result(10)
        assert batcher.backlog_images == 0 and batcher.admitted_images == 6
    finally:
        batcher.close()


def test_full_queue_rejects_with_overload(gate, images) -> None:
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=1, max_queue_delay=0.0, max_queue_size=2)
    try:
        running = submit(batcher, images[:1])
        gate.entered.wait(5)
        queued = [submit(batcher, images[:1]) for _ in range(2)]
        with pytest.raises(OverloadedError) as error:
            submit(batcher, images[:1])
        assert error.value.details["reason"] == "queue_full" and error.value.retry_after_seconds > 0
        gate.release.set()
        for future in [running, *queued]:
            assert future.result(10).images[0].exit == 0
    finally:
        gate.release.set()
        batcher.close()


def test_deadline_passed_in_the_queue_is_answered_not_run(gate, images) -> None:
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=1, max_queue_delay=0.0)
    try:
        running = submit(batcher, images[:1])
        gate.entered.wait(5)
        late = submit(batcher, images[:1], deadline=time.monotonic() + 0.01)
        time.sleep(0.05)
        gate.release.set()
        running.result(10)
        with pytest.raises(DeadlineExceededError):
            late.result(10)
    finally:
        gate.release.set()
        batcher.close()


def test_a_failing_stage_fails_only_its_batch(gate, images) -> None:
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=4, max_queue_delay=0.0)
    try:
        gate.fail_next = True
        gate.release.set()
        with pytest.raises(StageExecutionError, match="injected"):
            submit(batcher, images[:2]).result(10)
        assert submit(batcher, images[:2]).result(10).images[0].exit == 0
    finally:
        batcher.close()


def test_cancelled_requests_are_skipped_and_close_drains_the_queue(gate, images) -> None:
    runs: list[int] = []
    batcher = Batcher(
        CascadeExecutor(gate),
        max_batch_size=1,
        max_queue_delay=0.0,
        observer=lambda result: runs.append(len(result.images)),
    )
    running = submit(batcher, images[:1])
    gate.entered.wait(5)
    cancelled = submit(batcher, images[:1])
    queued = submit(batcher, images[:1])
    assert cancelled.cancel()
    gate.release.set()
    batcher.close(drain=True)
    assert running.done() and queued.result(0).images[0].exit == 0
    assert len(runs) == 2  # the cancelled request never ran
    with pytest.raises(OverloadedError, match="shutting down"):
        submit(batcher, images[:1])


# -- survivor re-batching -------------------------------------------------------------------------


class Recorder(Gate):
    """A gate that also records every stage call as (stage, batch size)."""

    def __init__(self, inner: StageRuntime, fail_stage: int | None = None):
        super().__init__(inner)
        self.calls: list[tuple[int, int]] = []
        self.fail_stage = fail_stage

    def run(self, stage: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append((stage, next(iter(inputs.values())).shape[0]))
        if stage == self.fail_stage:
            raise StageExecutionError("injected failure", stage=stage)
        return super().run(stage, inputs)


def half_leave_at_exit_0(n: int) -> np.ndarray:
    """Even rows leave at exit 0, odd rows run to the last exit."""
    thresholds = full(1.0, n)
    thresholds[::2, 0] = 0.0
    return thresholds


def queue_four_requests(batcher: Batcher, recorder: Recorder, images: torch.Tensor) -> list[Future]:
    """One request blocks stage 0; meanwhile four requests of 4 images queue up behind it."""
    blocker = batcher.submit(images[:1], full(0.0, 1), caps(EXITS - 1, 1))
    assert recorder.entered.wait(5)
    futures = [
        batcher.submit(images[i : i + 4], half_leave_at_exit_0(4), caps(EXITS - 1, 4))
        for i in range(0, 16, 4)
    ]
    recorder.release.set()
    blocker.result(10)
    return futures


def test_survivors_of_several_batches_run_later_stages_together(bundle, images) -> None:
    recorder = Recorder(OnnxRuntime(bundle, threads=1))
    batcher = Batcher(CascadeExecutor(recorder), max_batch_size=4, max_queue_delay=0.0, rebatch_delay=10.0)
    try:
        results = [f.result(10) for f in queue_four_requests(batcher, recorder, images)]
    finally:
        batcher.close()
    # Four batches of 4 at stage 0; their 2 survivors each run every later stage as one batch of 4
    # (max_batch_size), so stages 1-5 run twice instead of four times.
    assert [size for stage, size in recorder.calls[1:] if stage == 0] == [4, 4, 4, 4]
    for stage in range(1, EXITS):
        assert [size for k, size in recorder.calls if k == stage] == [4, 4]
    # Merging changes nothing in the answers.
    direct = CascadeExecutor(recorder.inner).run(images[:16], half_leave_at_exit_0(16), caps(EXITS - 1, 16))
    flat = [r for result in results for r in result.images]
    assert [(r.exit, r.class_index) for r in flat] == [(r.exit, r.class_index) for r in direct.images]
    np.testing.assert_allclose([r.confidence for r in flat], [r.confidence for r in direct.images], atol=1e-6)
    assert [r.exit for r in flat] == [0, EXITS - 1] * 8


def test_without_rebatching_every_batch_runs_its_own_late_stages(bundle, images) -> None:
    recorder = Recorder(OnnxRuntime(bundle, threads=1))
    batcher = Batcher(CascadeExecutor(recorder), max_batch_size=4, max_queue_delay=0.0, rebatch_delay=None)
    try:
        for future in queue_four_requests(batcher, recorder, images):
            future.result(10)
    finally:
        batcher.close()
    for stage in range(1, EXITS):
        assert [size for k, size in recorder.calls if k == stage] == [2, 2, 2, 2]


def test_an_idle_worker_runs_parked_survivors_at_once(bundle, images) -> None:
    recorder = Recorder(OnnxRuntime(bundle, threads=1))
    recorder.release.set()
    # A delay far beyond the test's patience: only "nothing else to do" can release the survivors.
    batcher = Batcher(CascadeExecutor(recorder), max_batch_size=8, max_queue_delay=0.0, rebatch_delay=3600.0)
    try:
        result = batcher.submit(images[:2], half_leave_at_exit_0(2), caps(EXITS - 1, 2)).result(10)
    finally:
        batcher.close()
    assert [r.exit for r in result.images] == [0, EXITS - 1]
    assert recorder.calls == [(0, 2), *((k, 1) for k in range(1, EXITS))]
    assert batcher.in_flight_images == 0


def test_a_failing_merged_stage_fails_exactly_the_requests_in_it(bundle, images) -> None:
    recorder = Recorder(OnnxRuntime(bundle, threads=1), fail_stage=3)
    batcher = Batcher(CascadeExecutor(recorder), max_batch_size=4, max_queue_delay=0.0, rebatch_delay=10.0)
    try:
        blocker = batcher.submit(images[:1], full(0.0, 1), caps(EXITS - 1, 1))
        assert recorder.entered.wait(5)
        early_only = batcher.submit(images[:4], full(0.0, 4), caps(EXITS - 1, 4))  # all leave at exit 0
        deep = [
            batcher.submit(images[i : i + 4], half_leave_at_exit_0(4), caps(EXITS - 1, 4)) for i in (4, 8)
        ]
        recorder.release.set()
        assert blocker.result(10).images[0].exit == 0
        assert [r.exit for r in early_only.result(10).images] == [0] * 4
        for future in deep:
            with pytest.raises(StageExecutionError, match="injected"):
                future.result(10)
        assert batcher.in_flight_images == 0  # nothing of the failed requests is left behind
        recorder.fail_stage = None
        after = batcher.submit(images[:2], half_leave_at_exit_0(2), caps(EXITS - 1, 2)).result(10)
        assert [r.exit for r in after.images] == [0, EXITS - 1]
    finally:
        batcher.close()


def test_an_open_batch_waits_only_for_requests_that_are_on_their_way(bundle, images) -> None:
    sizes: list[int] = []
    batcher = Batcher(
        CascadeExecutor(OnnxRuntime(bundle, threads=1)),
        max_batch_size=8,
        max_queue_delay=600.0,  # far beyond the test's patience: only "nobody is coming" closes a batch
        close_when_idle=True,
        observer=lambda result: sizes.append(result.stage_batch_sizes[0]),
    )
    try:
        assert submit(batcher, images[:1]).result(10).images[0].exit == 0  # alone: no wait at all
        with batcher.arriving():  # a second request is being decoded...
            first = submit(batcher, images[:1])
            time.sleep(0.2)
            assert not first.done()  # ...so the open batch waits for it
            second = submit(batcher, images[1:2])
        first.result(10)
        second.result(10)
    finally:
        batcher.close()
    assert sizes == [1, 2]


def test_rebatch_delay_must_not_be_negative(bundle) -> None:
    with pytest.raises(ValueError, match="rebatch_delay"):
        Batcher(CascadeExecutor(OnnxRuntime(bundle, threads=1)), rebatch_delay=-1.0)


def test_tiny_model_helper_is_deterministic(tmp_path: Path) -> None:
    a, b = tiny_model(), tiny_model()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(a(x)[-1], b(x)[-1])


# -- live exit-quality monitoring -----------------------------------------------------------------


def test_agreement_monitor_checks_early_exits_against_the_last_exit_in_idle_time(bundle, images) -> None:
    from ranet_serve.engine.agreement import AgreementMonitor

    seen: list[tuple[int, bool]] = []
    monitor = AgreementMonitor(1.0, observer=lambda k, agreed: seen.append((k, agreed)))
    executor = CascadeExecutor(OnnxRuntime(bundle, threads=1))
    batcher = Batcher(executor, max_batch_size=N, max_queue_delay=0.0, agreement=monitor)
    try:
        thresholds = np.zeros((N, EXITS), dtype=np.float32)  # everyone leaves at exit 0
        early = batcher.submit(images, thresholds, caps(EXITS - 1)).result(10)
        deadline = time.monotonic() + 10
        while (monitor.pending or monitor.checked.sum() < N) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        batcher.close()
    with torch.no_grad():
        final = bundle.load_model()(images)[-1].argmax(1).tolist()
    agree = [r.class_index == f for r, f in zip(early.images, final, strict=True)]
    assert monitor.checked.tolist() == [N, 0, 0, 0, 0, 0]
    assert monitor.ratios() == {0: pytest.approx(sum(agree) / N)}
    assert sorted(seen) == sorted((0, a) for a in agree)


def test_agreement_monitor_samples_only_early_exits_and_only_its_fraction(executor, images) -> None:
    from ranet_serve.engine.agreement import AgreementMonitor

    last = executor.run(images, full(1.0), caps(EXITS - 1))
    monitor = AgreementMonitor(1.0)
    monitor.offer(images, last.images, last_exit=EXITS - 1)
    assert monitor.pending == 0  # images that reached the last exit need no check
    early = executor.run(images, full(0.0), caps(EXITS - 1))
    AgreementMonitor(0.0).offer(images, early.images, last_exit=EXITS - 1)
    sampled = AgreementMonitor(0.25, seed=3)
    sampled.offer(images, early.images, last_exit=EXITS - 1)
    assert 0 < sampled.pending < N
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AgreementMonitor(1.5)


class StageLog(StageRuntime):
    """Wraps a runtime; records every stage call as (stage, batch size) and holds the call at
    position `hold_call` (0-based) until `release` is set."""

    backend = "stage-log"

    def __init__(self, inner: StageRuntime, hold_call: int):
        super().__init__(inner.bundle)
        self.inner, self.device, self.arrays = inner, inner.device, inner.arrays
        self.calls: list[tuple[int, int]] = []
        self.hold_call = hold_call
        self.held = threading.Event()
        self.release = threading.Event()

    def run(self, stage: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append((stage, next(iter(inputs.values())).shape[0]))
        if len(self.calls) - 1 == self.hold_call:
            self.held.set()
            self.release.wait(10)
        return self.inner.run(stage, inputs)


def test_a_request_arriving_during_the_audit_waits_for_one_slice_only(bundle, images) -> None:
    from ranet_serve.engine.agreement import AgreementMonitor

    all_checked = threading.Event()
    seen: list[tuple[int, bool]] = []

    def observe(exit_index: int, agreed: bool) -> None:
        seen.append((exit_index, agreed))
        if len(seen) == 9:
            all_checked.set()

    monitor = AgreementMonitor(1.0, slice_images=4, observer=observe)
    log = StageLog(OnnxRuntime(bundle, threads=1), hold_call=1)  # call 1: the audit's first slice
    batcher = Batcher(CascadeExecutor(log), max_batch_size=8, max_queue_delay=0.0, agreement=monitor)
    try:
        # 8 images leave at exit 0 and are all sampled: the idle worker starts auditing them.
        submit(batcher, images[:8]).result(10)
        assert log.held.wait(10)  # the worker is inside the first audit slice
        arriving = submit(batcher, images[8:9])
        log.release.set()
        assert arriving.result(10).images[0].exit == 0
        assert all_checked.wait(10)  # 8 + the arriving request's own sample
    finally:
        log.release.set()
        batcher.close()
    audit_4 = [(k, 4) for k in range(EXITS)]
    expected = [
        (0, 8),  # the first request
        audit_4[0],  # one slice: one stage on at most 4 samples...
        (0, 1),  # ...then the request that arrived during it, before any more audit work
        *audit_4[1:],  # the first audit cohort carries on where it stopped
        *audit_4,  # the other 4 samples of the first request
        *((k, 1) for k in range(EXITS)),  # the arriving request's sample
    ]
    assert log.calls == expected
    assert monitor.pending == 0 and monitor.checked.tolist() == [9, 0, 0, 0, 0, 0]
    assert monitor.slices == 3 * EXITS and 0 < monitor.longest_slice_seconds < 10


def test_a_deadline_the_work_ahead_rules_out_is_refused_at_once(gate, images) -> None:
    batcher = Batcher(CascadeExecutor(gate), max_batch_size=1, max_queue_delay=0.0)
    try:
        gate.release.set()
        submit(batcher, images[:1]).result(10)  # the worker now has a cost per image to go on
        gate.release.clear()
        gate.entered.clear()
        running = submit(batcher, images[:1])
        gate.entered.wait(5)
        queued = submit(batcher, images[:3], deadline=time.monotonic() + 60)
        with pytest.raises(OverloadedError) as error:
            submit(batcher, images[:2], deadline=time.monotonic() + 1e-6)
        details = error.value.details
        assert details["reason"] == "deadline_unmeetable" and error.value.retry_after_seconds > 0
        # Earliest deadline first: the 3 queued images are due later and would not run before it.
        assert details["images_ahead"] == 1 and details["expected_ms"] > 0
        best = submit(batcher, images[:1], deadline=time.monotonic() + 1e-6, best_effort=True)
        roomy = submit(batcher, images[:1], deadline=time.monotonic() + 60)
        gate.release.set()
        for future in (running, queued, roomy):
            assert future.result(10).images[0].exit == 0
        with pytest.raises(DeadlineExceededError):
            best.result(10)  # queued, not refused: it reached no exit before its deadline
    finally:
        gate.release.set()
        batcher.close()
