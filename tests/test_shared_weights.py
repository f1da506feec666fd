"""The CPU onnxruntime runtime's two session sets read one copy of each stage's weights.

Resident memory is too noisy for a unit test, so the sharing is pinned structurally: a write into a
shared weight shows in both sessions' outputs, which only happens if both read that very memory. The
outputs themselves must equal those of sessions built from the stage file as before, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ranet_serve.cascade.runtimes import ALIGNMENT_BYTES, OnnxRuntime, _read_initializers, session_options
from ranet_serve.export.bundle import Bundle, load_bundle

BUNDLE = Path(__file__).resolve().parents[1] / "model_store" / "ranet-fmnist" / "1"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(BUNDLE)


def stage_feeds(runtime: OnnxRuntime, batch: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Each stage's inputs for one random batch, computed by running the stages in order."""
    rng = np.random.default_rng(seed)
    env = {"image": rng.standard_normal((batch, *runtime.manifest.tensor("image").shape), dtype=np.float32)}
    feeds = []
    for stage in runtime.manifest.stages:
        inputs = {name: env[name] for name in stage.inputs}
        feeds.append(inputs)
        env.update(runtime.run(stage.index, inputs))
    return feeds


def test_both_session_sets_read_the_same_weight_memory(bundle) -> None:
    runtime = OnnxRuntime(bundle, threads=2, single_thread_below=8)
    small, large = runtime.sessions_for(1), runtime.sessions_for(8)
    assert len(runtime.shared_initializers) == len(bundle.manifest.stages)
    feeds = stage_feeds(runtime, batch=2)
    for stage, shared in enumerate(runtime.shared_initializers):
        # Every weight the graph holds is shared, not only some: a stage's weights are its conv kernels.
        convolutions = [name for name, array in shared.items() if array.ndim == 4]
        assert convolutions, f"stage {stage}: no convolution weight shared"
        for name, array in shared.items():
            assert array.ctypes.data % ALIGNMENT_BYTES == 0 and array.flags.c_contiguous, name
        names = bundle.manifest.stages[stage].outputs
        before = [session.run(names, feeds[stage]) for session in (small[stage], large[stage])]
        weight = shared[max(convolutions, key=lambda name: shared[name].size)]
        saved = weight.copy()
        weight[...] = 0.0  # in place, in the one copy
        try:
            after = [session.run(names, feeds[stage]) for session in (small[stage], large[stage])]
        finally:
            weight[...] = saved
        for old, new in zip(before, after, strict=True):
            assert not np.array_equal(old[0], new[0]), f"stage {stage}: a session kept a copy of its own"
        np.testing.assert_allclose(after[0][0], after[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 5])
def test_shared_sessions_give_the_outputs_of_sessions_built_from_the_stage_file(bundle, batch) -> None:
    runtime = OnnxRuntime(bundle, threads=2, single_thread_below=8)
    feeds = stage_feeds(runtime, batch)
    for threads, sessions in ((1, runtime.sessions_for(1)), (2, runtime.sessions_for(8))):
        for stage, session in enumerate(sessions):
            assert session.get_session_options().intra_op_num_threads == threads
            path = str(bundle.stage_file(stage, "onnx"))
            reference = ort.InferenceSession(path, session_options(threads), providers=CPU)
            names = bundle.manifest.stages[stage].outputs
            for got, want in zip(
                session.run(names, feeds[stage]), reference.run(names, feeds[stage]), strict=True
            ):
                np.testing.assert_array_equal(got, want)


def test_one_session_set_shares_nothing(bundle) -> None:
    for runtime in (OnnxRuntime(bundle, threads=1), OnnxRuntime(bundle, threads=2, single_thread_below=0)):
        assert runtime.shared_initializers == []


def test_only_inline_raw_numeric_initializers_are_shared(tmp_path) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "raw"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[
            helper.make_tensor("raw", TensorProto.FLOAT, [2, 3], values.tobytes(), raw=True),
            helper.make_tensor("listed", TensorProto.FLOAT, [2, 3], values.ravel().tolist()),  # float_data
            helper.make_tensor("scalar", TensorProto.INT64, [], np.int64(-3).tobytes(), raw=True),
            helper.make_tensor("text", TensorProto.STRING, [1], [b"a"]),
        ],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), path)
    got = _read_initializers(str(path))
    assert sorted(got) == ["raw", "scalar"]
    np.testing.assert_array_equal(got["raw"], values)
    assert got["scalar"].shape == () and got["scalar"] == -3
