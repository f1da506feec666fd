"""Per-exit probabilities of a bundle on a dataset, computed with the stages the server runs.

Calibration must describe what is served, so it runs the bundle's ONNX stages (all of them, every
image to the last exit) rather than the PyTorch model; the two agree within 1e-5 (`ranet verify`).
"""

from __future__ import annotations

import numpy as np
import torch

from ranet_serve.cascade.executor import softmax
from ranet_serve.cascade.runtimes import OnnxRuntime
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.data.datasets import ImageArrays
from ranet_serve.data.transforms import normalize
from ranet_serve.export.bundle import Bundle


def bundle_probabilities(
    bundle: Bundle, data: ImageArrays, batch_size: int = 256, threads: int = 0
) -> np.ndarray:
    """Softmax probabilities of every exit, [exits, N, classes] float32, evaluation transform only."""
    spec = bundle.manifest.input
    expected = (spec.channels, spec.size, spec.size)
    if data.images.shape[1:] != expected:
        raise ValueError(f"dataset images are {data.images.shape[1:]}, the bundle expects {expected}")
    runtime = OnnxRuntime(bundle, device="cpu", threads=threads)
    chunks = []
    for start in range(0, len(data), batch_size):
        images = normalize(torch.from_numpy(data.images[start : start + batch_size]), spec.mean, spec.std)
        logits = run_all_stages(runtime, images)
        chunks.append(np.stack([softmax(exit_logits) for exit_logits in logits]))
    return np.concatenate(chunks, axis=1)
