"""How a runtime holds the state handed between stages: numpy arrays or torch tensors.

The executor and the batcher only ever gather rows, concatenate cohorts and read logits on the host.
Doing those with the runtime's own array type keeps every stage boundary free of conversions:
onnxruntime on the CPU takes and returns numpy arrays, so its state stays numpy end to end, while
TorchScript, eager PyTorch and onnxruntime on CUDA (I/O binding onto torch-owned buffers) keep torch
tensors on their device, so survivors are gathered without leaving it.

Why numpy for onnxruntime on the CPU: measured on the default model at batch 1 (2 threads, quiet
machine, per stage over 2,000 interleaved runs), feeding the sessions torch tensors' `.numpy()` views
and wrapping their outputs with `torch.from_numpy` cost 1.91 ms for the six stages against 1.75 ms for
plain numpy in and out (8% of the torch-fed time, at that batch size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

StageArray: TypeAlias = np.ndarray | Tensor
"""A batch of one named stage tensor, in the form its runtime holds it."""


class StageArrays(ABC):
    """The four array operations the cascade needs, for one runtime's array type."""

    @abstractmethod
    def from_images(self, images: Tensor) -> StageArray:
        """The stage-0 input from a host batch of float32 images [N, C, H, W]."""

    @abstractmethod
    def gather(self, array: StageArray, rows: np.ndarray) -> StageArray:
        """Rows `rows` (int64 indices) of `array`, as a new batch."""

    @abstractmethod
    def concat(self, arrays: list[StageArray]) -> StageArray:
        """The batches `arrays` one after the other."""

    @abstractmethod
    def to_host(self, array: StageArray) -> np.ndarray:
        """`array` as a float32 numpy array on the host (logits, for the exit decision)."""


class NumpyArrays(StageArrays):
    """Host numpy arrays (onnxruntime on the CPU)."""

    def from_images(self, images: Tensor) -> np.ndarray:
        return np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)

    def gather(self, array: StageArray, rows: np.ndarray) -> np.ndarray:
        return np.take(_numpy(array), rows, axis=0)

    def concat(self, arrays: list[StageArray]) -> np.ndarray:
        return np.concatenate([_numpy(a) for a in arrays])

    def to_host(self, array: StageArray) -> np.ndarray:
        return np.asarray(_numpy(array), dtype=np.float32)


class TorchArrays(StageArrays):
    """Torch tensors on `device` (TorchScript, eager PyTorch, onnxruntime on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device

    def from_images(self, images: Tensor) -> Tensor:
        # A blocking copy: the images are pageable host memory (often a view of a shared-memory slot
        # that is reused once the batch is formed), so an asynchronous copy would gain nothing and
        # could read the slot after its next request has overwritten it.
        return images.to(self.device)

    def gather(self, array: StageArray, rows: np.ndarray) -> Tensor:
        return _tensor(array).index_select(0, torch.from_numpy(rows).to(self.device))

    def concat(self, arrays: list[StageArray]) -> Tensor:
        return torch.cat([_tensor(a) for a in arrays])

    def to_host(self, array: StageArray) -> np.ndarray:
        return _tensor(array).float().cpu().numpy()


def _numpy(array: StageArray) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    return array


def _tensor(array: StageArray) -> Tensor:
    if not isinstance(array, Tensor):
        raise TypeError(f"expected a torch tensor, got {type(array).__name__}")
    return array
