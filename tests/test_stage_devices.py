"""The bound stage path (torch tensors bound as onnxruntime inputs and outputs) on the CPU and on CUDA.

Every test here runs with `io_binding=True` on the CPU in `make test`, which is the code the GPU runs,
and on CUDA where a device is visible (marked `gpu`; skipped with the reason elsewhere). Results are
compared with the plain numpy runtime on the CPU, the path that serves by default there.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from helpers.devices import BINDING_DEVICES, require_device
from ranet_serve.cascade.arrays import NumpyArrays, TorchArrays
from ranet_serve.cascade.devices import StreamOrder, device_index, parse_device
from ranet_serve.cascade.executor import CascadeExecutor, softmax
from ranet_serve.cascade.results import ImageResult
from ranet_serve.cascade.runtimes import OnnxRuntime, TorchScriptRuntime, create_runtime
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.engine.registry import default_runtime_factory, warm_up_sizes
from ranet_serve.engine.requests import RequestResult
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.errors import StageExecutionError
from ranet_serve.export.bundle import Bundle
from ranet_serve.settings import Settings

N = 24
EXITS = 6
# Float32 results on another device or at another batch size differ in the last bits; a decision
# within this much of its threshold may go either way, a class within this much of the runner-up too.
TIE = 1e-3


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Bundle) -> Bundle:
    return tiny_bundle


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def reference(bundle: Bundle) -> OnnxRuntime:
    """The default CPU path: numpy arrays in and out, no binding."""
    return OnnxRuntime(bundle, threads=1)


def reference_probs(reference: OnnxRuntime, images: torch.Tensor) -> np.ndarray:
    """[N, exits, classes] softmax probabilities of every exit, on the reference runtime."""
    return np.stack([softmax(logits) for logits in run_all_stages(reference, images)], axis=1)


def bound(bundle: Bundle, device: str) -> OnnxRuntime:
    require_device(device)
    return OnnxRuntime(bundle, device=device, threads=1, io_binding=True)


def assert_decision(result: ImageResult, probs: np.ndarray, thresholds: np.ndarray, cap: int) -> None:
    """`result` is the exit the cascade rules give for one image with reference probabilities `probs`
    [exits, classes], allowing only decisions that sit within TIE of a threshold or a runner-up."""
    confidence = probs.max(axis=1)
    k = result.exit
    assert k <= cap
    for earlier in range(k):  # it passed every earlier exit: not confident enough there
        passed = thresholds[earlier] >= 1.0 or confidence[earlier] < thresholds[earlier] + TIE
        assert passed, (earlier, result)
    if k < cap:  # it left by confidence, not by its cap
        assert thresholds[k] < 1.0 and confidence[k] >= thresholds[k] - TIE, result
    assert result.confidence == pytest.approx(confidence[k], abs=TIE)
    runner_up = np.sort(probs[k])[-2]
    assert result.class_index == int(probs[k].argmax()) or confidence[k] - runner_up < TIE


# -- runtime -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_bound_stages_compute_what_the_numpy_path_computes(bundle, reference, images, device) -> None:
    runtime = bound(bundle, device)
    assert isinstance(runtime.arrays, TorchArrays) and runtime.arrays.device == parse_device(device)
    env = {"image": runtime.arrays.from_images(images)}
    want = {"image": NumpyArrays().from_images(images)}
    for stage in bundle.manifest.stages:
        got_out = runtime.run(stage.index, {name: env[name] for name in stage.inputs})
        want_out = reference.run(stage.index, {name: want[name] for name in stage.inputs})
        assert set(got_out) == set(stage.outputs)
        for name in stage.outputs:  # every state tensor, not only the logits
            tensor = got_out[name]
            assert isinstance(tensor, torch.Tensor) and tensor.device == runtime.device
            scale = max(float(np.abs(want_out[name]).max()), 1.0)
            np.testing.assert_allclose(tensor.cpu().numpy(), want_out[name], atol=1e-5 * scale, rtol=0)
        env.update(got_out)
        want.update(want_out)


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_bound_stages_take_non_contiguous_survivor_views(bundle, reference, images, device) -> None:
    runtime = bound(bundle, device)
    every_other = runtime.arrays.from_images(images)[::2]  # a strided view, as a gather could leave
    assert not every_other.is_contiguous()
    got = runtime.arrays.to_host(runtime.run(0, {"image": every_other})[bundle.manifest.stages[0].outputs[0]])
    want = run_all_stages(reference, images[::2].contiguous())[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_a_bound_runtime_refuses_arrays_of_another_kind_with_a_stage_error(bundle, images, device) -> None:
    runtime = bound(bundle, device)
    with pytest.raises(StageExecutionError, match="takes torch tensors"):
        runtime.run(0, {"image": images.numpy()})
    with pytest.raises(StageExecutionError, match="expected float32"):
        runtime.run(0, {"image": runtime.arrays.from_images(images).double()})


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_the_cascade_on_bound_stages_decides_as_the_cpu_path(bundle, reference, images, device) -> None:
    thresholds = np.random.default_rng(3).uniform(0.2, 0.95, size=(N, EXITS)).astype(np.float32)
    max_exit = np.random.default_rng(4).integers(0, EXITS, size=N)
    result = CascadeExecutor(bound(bundle, device)).run(images, thresholds, max_exit, top_k=2)
    probs = reference_probs(reference, images)
    assert len({r.exit for r in result.images}) >= 3  # the draw spreads the images over several exits
    for i, image in enumerate(result.images):
        assert_decision(image, probs[i], thresholds[i], int(max_exit[i]))


@pytest.mark.gpu
def test_torchscript_on_cuda_matches_the_cpu(bundle, reference, images) -> None:
    require_device("cuda", backend="torchscript")
    logits = run_all_stages(TorchScriptRuntime(bundle, device="cuda"), images)
    for got, want in zip(logits, run_all_stages(reference, images), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4 * max(float(np.abs(want).max()), 1.0))


# -- scheduling: many batch sizes, survivors re-batched across batches ---------------------------------


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_randomised_requests_with_rebatching_match_the_cpu_path(bundle, reference, device) -> None:
    """Requests of random sizes, thresholds and caps from four threads; survivors of different batches
    are merged (re-batching on), so stages see many batch sizes and gathered, concatenated state.
    Every image's answer must be the decision the CPU path's probabilities give."""
    runtime = bound(bundle, device)
    rng = np.random.default_rng(2024)
    requests = []
    for _ in range(120):
        n = int(rng.integers(1, 9))
        images = torch.from_numpy(rng.standard_normal((n, 1, 28, 28)).astype(np.float32))
        thresholds = rng.uniform(0.15, 0.99, size=(n, EXITS)).astype(np.float32)
        requests.append((images, thresholds, rng.integers(0, EXITS, size=n)))
    sizes: list[tuple[int, ...]] = []
    batcher = Batcher(
        CascadeExecutor(runtime),
        max_batch_size=16,
        max_queue_delay=0.001,
        rebatch_delay=0.002,
        observer=lambda result: sizes.append(result.stage_batch_sizes),
    )
    futures: list[Future[RequestResult] | None] = [None] * len(requests)
    order = list(range(len(requests)))
    random.Random(5).shuffle(order)

    def submit(indices: list[int]) -> None:
        for i in indices:
            images, thresholds, caps = requests[i]
            futures[i] = batcher.submit(images, thresholds, caps, top_k=2)

    threads = [threading.Thread(target=submit, args=(order[k::4],)) for k in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        results = [future.result(60) for future in futures if future is not None]
    finally:
        batcher.close()
    assert len(results) == len(requests)
    for (images, thresholds, caps), result in zip(requests, results, strict=True):
        probs = reference_probs(reference, images)
        assert len(result.images) == images.shape[0]
        for i, image in enumerate(result.images):
            assert_decision(image, probs[i], thresholds[i], int(caps[i]))
    stage_sizes = {size for batch in sizes for size in batch[1:] if size}
    assert len(stage_sizes) >= 5, stage_sizes  # later stages ran at many different batch sizes


# -- devices and streams -----------------------------------------------------------------------------


def test_device_names_parse_and_bad_ones_say_what_is_allowed() -> None:
    assert parse_device("cpu") == torch.device("cpu") and device_index(torch.device("cpu")) == 0
    for bad in ("gpu", "cuda:", "cuda:x", "auto", "CPU"):
        with pytest.raises(ValueError, match="expected cpu, cuda or cuda:N"):
            parse_device(bad)
    assert Settings(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError):
        Settings(device="gpu0")


def test_cuda_names_without_a_gpu_fail_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            parse_device(name)


def test_stream_order_is_a_no_op_on_the_cpu() -> None:
    order = StreamOrder(torch.device("cpu"))
    assert order.handle is None and order.stream is None
    with order.ordered():
        pass


def test_settings_choose_binding_and_the_cudnn_search_mode(bundle) -> None:
    settings = Settings(device="cpu", threads=1, io_binding="always", cudnn_conv_search="exhaustive")
    runtime = default_runtime_factory(bundle, settings)
    assert isinstance(runtime, OnnxRuntime) and runtime.io_binding
    assert runtime.cudnn_conv_search == "exhaustive" and isinstance(runtime.arrays, TorchArrays)
    plain = default_runtime_factory(bundle, Settings(device="cpu", threads=1))
    assert isinstance(plain, OnnxRuntime) and not plain.io_binding and isinstance(plain.arrays, NumpyArrays)
    with pytest.raises(ValueError):
        Settings(cudnn_conv_search="fastest")


def test_a_gpu_is_warmed_up_at_every_batch_size_the_scheduler_can_form() -> None:
    assert warm_up_sizes(torch.device("cuda", 0), 16) == list(range(1, 17))
    assert warm_up_sizes(torch.device("cpu"), 16) == [1, 4]
    assert warm_up_sizes(torch.device("cpu"), 2) == [1, 2]
    assert warm_up_sizes(torch.device("cpu"), 1) == [1]


@pytest.mark.gpu
def test_cuda_device_index_reaches_the_provider_and_the_buffers(bundle, images) -> None:
    require_device("cuda")
    last = torch.cuda.device_count() - 1
    runtime = create_runtime(bundle, device=f"cuda:{last}", threads=1)
    assert isinstance(runtime, OnnxRuntime) and runtime.device == torch.device("cuda", last)
    options = runtime.sessions[0].get_provider_options()["CUDAExecutionProvider"]
    assert options["device_id"] == str(last)
    # The stages run on the runtime's own stream (a real stream, not the legacy default one).
    assert options.get("has_user_compute_stream") == "1"
    assert int(options["user_compute_stream"], 0) == runtime._stream.handle != 0
    outputs = runtime.run(0, {"image": runtime.arrays.from_images(images)})
    assert all(t.device == torch.device("cuda", last) for t in outputs.values())
    with pytest.raises(ValueError, match="numbered from 0"):
        parse_device(f"cuda:{last + 1}")


@pytest.mark.gpu
def test_stages_wait_for_inputs_that_torch_is_still_writing(bundle, reference, images) -> None:
    """The race the stream ordering prevents: the input is written by a kernel queued behind a long
    one on torch's stream. Unordered, onnxruntime's stream would read the buffer before the write (all
    zeros); ordered, it reads the images."""
    require_device("cuda")
    runtime = bound(bundle, "cuda")
    runtime.run(0, {"image": runtime.arrays.from_images(images)})  # warm: no lazy work in the timing
    want = run_all_stages(reference, images)[0]
    logits_name = bundle.manifest.stages[0].outputs[0]
    source = images.to(runtime.device)
    for _ in range(5):
        target = torch.zeros_like(source)
        torch.cuda._sleep(100_000_000)  # ~50-100 ms of GPU time queued on torch's current stream
        target.copy_(source)
        got = runtime.arrays.to_host(runtime.run(0, {"image": target})[logits_name])
        np.testing.assert_allclose(got, want, atol=1e-4)
