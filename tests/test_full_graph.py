"""The full-depth graph: the stages composed into one ONNX graph, and the batches that take it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.devices import BINDING_DEVICES, require_device
from ranet_serve.cascade import full_graph
from ranet_serve.cascade.executor import CascadeExecutor
from ranet_serve.cascade.full_graph import compose_full_graph, wants_full_graph
from ranet_serve.cascade.runtimes import OnnxRuntime, StageRuntime, create_runtime
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.engine.registry import _warm_up
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.errors import StageExecutionError
from ranet_serve.export.bundle import Bundle

N = 12
EXITS = 6
LAST = EXITS - 1


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Bundle) -> Bundle:
    return tiny_bundle


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def staged(bundle: Bundle) -> OnnxRuntime:
    return OnnxRuntime(bundle, threads=1)


@pytest.fixture(scope="module")
def whole(bundle: Bundle) -> OnnxRuntime:
    return OnnxRuntime(bundle, threads=1, full_graph=True)


class Counting(StageRuntime):
    """Counts the stage calls and full-depth calls of the runtime it wraps."""

    def __init__(self, inner: StageRuntime):
        super().__init__(inner.bundle)
        self.inner = inner
        self.backend = inner.backend
        self.device = inner.device
        self.arrays = inner.arrays
        self.has_full_graph = inner.has_full_graph
        self.stage_calls: list[int] = []
        self.full_calls: list[int] = []

    def run(self, stage, inputs):  # type: ignore[no-untyped-def]
        self.stage_calls.append(stage)
        return self.inner.run(stage, inputs)

    def run_full(self, image):  # type: ignore[no-untyped-def]
        self.full_calls.append(image.shape[0])
        return self.inner.run_full(image)


def full_depth(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds and caps with which no image may leave before the last exit."""
    return np.ones((n, EXITS), dtype=np.float32), np.full(n, LAST, dtype=np.int64)


def test_the_composed_graph_computes_the_last_exit_of_the_stages(bundle, staged, whole, images) -> None:
    want = run_all_stages(staged, images)[-1]
    got = whole.run_full(staged.arrays.from_images(images))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(float(np.abs(want).max()), 1.0))
    for batch in (1, 3):  # the single-threaded set of small batches too
        np.testing.assert_allclose(whole.run_full(images[:batch].numpy()), want[:batch], atol=1e-5)


def test_the_composed_graph_keeps_the_shared_names_and_only_the_last_logits(bundle) -> None:
    import onnx

    model = onnx.load_from_string(compose_full_graph(bundle))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == [f"logits_{LAST}"]
    stage_nodes = sum(
        len(onnx.load(str(bundle.stage_file(s.index, "onnx"))).graph.node) for s in bundle.manifest.stages
    )
    assert len(model.graph.node) == stage_nodes  # every stage's nodes, each stage's names prefixed
    names = [node.name for node in model.graph.node if node.name]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_the_bound_path_runs_the_composed_graph(bundle, staged, images, device) -> None:
    require_device(device)
    runtime = OnnxRuntime(bundle, device=device, threads=1, io_binding=True, full_graph=True)
    got = runtime.run_full(runtime.arrays.from_images(images))
    assert isinstance(got, torch.Tensor) and got.device == runtime.device
    want = run_all_stages(staged, images)[-1]
    np.testing.assert_allclose(got.cpu().numpy(), want, atol=1e-5 * max(float(np.abs(want).max()), 1.0))


def test_a_full_depth_batch_takes_the_graph_and_answers_as_the_stages_do(staged, whole, images) -> None:
    counting = Counting(whole)
    thresholds, caps = full_depth()
    fast = CascadeExecutor(counting).run(images, thresholds, caps, top_k=3)
    slow = CascadeExecutor(staged).run(images, thresholds, caps, top_k=3)
    assert counting.full_calls == [N] and counting.stage_calls == []
    assert [r.exit for r in fast.images] == [LAST] * N
    assert [r.class_index for r in fast.images] == [r.class_index for r in slow.images]
    assert [[c for c, _ in r.top_k] for r in fast.images] == [[c for c, _ in r.top_k] for r in slow.images]
    np.testing.assert_allclose(
        [r.confidence for r in fast.images], [r.confidence for r in slow.images], atol=1e-6
    )
    assert [r.flops for r in fast.images] == [r.flops for r in slow.images]
    assert not any(r.budget_limited for r in fast.images)
    # Every stage is reported as run on the whole batch, its time shared in proportion to its FLOPs.
    assert fast.stage_batch_sizes == (N,) * EXITS
    flops = np.diff([0, *whole.manifest.cumulative_flops])
    np.testing.assert_allclose(np.array(fast.stage_seconds) / fast.seconds, flops / flops.sum())


@pytest.mark.parametrize(
    "change",
    ["a threshold below 1", "a cap before the last exit", "a watched image"],
)
def test_batches_that_may_leave_early_or_report_every_exit_take_the_stages(whole, images, change) -> None:
    counting = Counting(whole)
    executor = CascadeExecutor(counting)
    thresholds, caps = full_depth()
    watched = np.zeros(N, dtype=bool)
    if change == "a threshold below 1":
        thresholds[4, 2] = 0.99
    elif change == "a cap before the last exit":
        caps[7] = 3
    else:
        watched[0] = True
    cohort = executor.start(images, thresholds, caps, np.arange(N), watched=watched)
    assert not executor.runs_whole(cohort)
    while cohort is not None:
        cohort = executor.step(cohort).survivors
    assert counting.full_calls == [] and counting.stage_calls[0] == 0


def test_the_scheduler_reports_every_stage_of_a_full_depth_batch(whole, images) -> None:
    sizes: list[tuple[int, ...]] = []
    batcher = Batcher(
        CascadeExecutor(whole),
        max_batch_size=16,
        max_queue_delay=0.0,
        observer=lambda result: sizes.append(result.stage_batch_sizes),
    )
    try:
        thresholds, caps = full_depth(4)
        result = batcher.submit(images[:4], thresholds, caps).result(10)
    finally:
        batcher.close()
    assert [r.exit for r in result.images] == [LAST] * 4
    assert sizes == [(4,) * EXITS]


def test_a_failing_full_graph_fails_its_batch_with_a_stage_error(whole, images) -> None:
    with pytest.raises(StageExecutionError, match="full-depth graph failed"):
        whole.run_full(images.double().numpy())


def test_warm_up_runs_both_the_stages_and_the_graph(whole) -> None:
    counting = Counting(whole)
    _warm_up(CascadeExecutor(counting), [1, 4])
    assert counting.full_calls == [1, 4]
    assert counting.stage_calls == list(range(EXITS)) * 2


def test_the_setting_decides_by_the_size_of_the_stage_files(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wants_full_graph(bundle, "on") and not wants_full_graph(bundle, "off")
    assert wants_full_graph(bundle, "auto")  # the tiny bundle's stages are a few hundred KB
    size = sum(bundle.stage_file(s.index, "onnx").stat().st_size for s in bundle.manifest.stages)
    monkeypatch.setattr(full_graph, "AUTO_MAX_STAGE_BYTES", size - 1)
    assert not wants_full_graph(bundle, "auto") and wants_full_graph(bundle, "on")
    assert not create_runtime(bundle, device="cpu", threads=1, full_graph="auto").has_full_graph
    monkeypatch.setattr(full_graph, "AUTO_MAX_STAGE_BYTES", size)
    assert create_runtime(bundle, device="cpu", threads=1, full_graph="auto").has_full_graph
    assert not create_runtime(bundle, backend="torchscript", device="cpu", full_graph="on").has_full_graph


def test_a_bundle_whose_stages_do_not_compose_serves_stage_by_stage(
    bundle, images, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ranet_serve.cascade import runtimes

    def broken(_: Bundle) -> bytes:
        raise ValueError("stage 3 imports other opsets than stage 0; cannot compose")

    monkeypatch.setattr(runtimes, "compose_full_graph", broken)
    runtime = OnnxRuntime(bundle, threads=1, full_graph=True)
    assert not runtime.has_full_graph
    assert "no full-depth graph" in caplog.text and "other opsets" in caplog.text
    thresholds, caps = full_depth()
    result = CascadeExecutor(runtime).run(images, thresholds, caps)
    assert [r.exit for r in result.images] == [LAST] * N
