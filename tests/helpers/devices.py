"""The devices a test runs the stage-binding path on: the CPU always, CUDA where there is one.

The onnxruntime runtime binds torch tensors as stage inputs and outputs on CUDA; with `io_binding=True`
it runs that same code on the CPU. Tests parametrised with `BINDING_DEVICES` therefore exercise the
GPU's code path in every `make test`, and on a CUDA machine run it on the GPU as well.
"""

from __future__ import annotations

import pytest
import torch

BINDING_DEVICES = [
    pytest.param("cpu", id="cpu-bound"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


def require_device(device: str, backend: str = "onnxruntime") -> None:
    """Skip (with the reason) when `device` cannot run `backend` here."""
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    if backend == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider (install the gpu extra)")
