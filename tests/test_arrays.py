"""The two state array types of the cascade (numpy for onnxruntime on the CPU, torch elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranet_serve.cascade.arrays import NumpyArrays, StageArrays, TorchArrays

STATE = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)


def as_host(value: object) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@pytest.fixture(params=["numpy", "torch"])
def arrays(request: pytest.FixtureRequest) -> StageArrays:
    return NumpyArrays() if request.param == "numpy" else TorchArrays(torch.device("cpu"))


def test_gather_concat_and_to_host_act_on_rows(arrays: StageArrays) -> None:
    state = arrays.from_images(torch.from_numpy(STATE.copy()))
    rows = np.array([4, 0, 2], dtype=np.int64)
    gathered = arrays.gather(state, rows)
    np.testing.assert_array_equal(as_host(gathered), STATE[[4, 0, 2]])
    merged = arrays.concat([gathered, arrays.gather(state, np.array([1], dtype=np.int64))])
    np.testing.assert_array_equal(as_host(merged), STATE[[4, 0, 2, 1]])
    host = arrays.to_host(merged)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    np.testing.assert_array_equal(host, STATE[[4, 0, 2, 1]])


def test_gathered_rows_are_copies_not_views(arrays: StageArrays) -> None:
    state = arrays.from_images(torch.from_numpy(STATE.copy()))
    gathered = arrays.gather(state, np.array([1, 3], dtype=np.int64))
    if isinstance(state, torch.Tensor):
        state.zero_()
    else:
        state[...] = 0
    np.testing.assert_array_equal(as_host(gathered), STATE[[1, 3]])


def test_numpy_images_are_contiguous_float32_and_each_type_refuses_the_other() -> None:
    images = torch.from_numpy(STATE.copy()).double().transpose(2, 3)  # neither float32 nor contiguous
    host = NumpyArrays().from_images(images)
    assert host.dtype == np.float32 and host.flags.c_contiguous
    np.testing.assert_array_equal(host, STATE.transpose(0, 1, 3, 2))
    with pytest.raises(TypeError, match="numpy array"):
        NumpyArrays().gather(torch.zeros(2, 1), np.array([0]))
    with pytest.raises(TypeError, match="torch tensor"):
        TorchArrays(torch.device("cpu")).concat([np.zeros((2, 1), dtype=np.float32)])
