"""Bundle verification: every exit of every backend against the PyTorch model, stage by stage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.arrays import StageArray
from ranet_serve.cascade.runtimes import OnnxRuntime, StageRuntime, TorchScriptRuntime
from ranet_serve.export.bundle import Bundle

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExitParity:
    backend: str
    inputs: str
    exit: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE


def run_all_stages(runtime: StageRuntime, images: Tensor) -> list[np.ndarray]:
    """Run every stage in order on `images` and return every exit's logits (float32, on the host)."""
    env: dict[str, StageArray] = {"image": runtime.arrays.from_images(images)}
    logits = []
    for stage in runtime.manifest.stages:
        outputs = runtime.run(stage.index, {name: env[name] for name in stage.inputs})
        env.update(outputs)
        logits.append(runtime.arrays.to_host(outputs[stage.outputs[0]]))
    return logits


def verify_bundle(bundle: Bundle, batches: dict[str, Tensor], device: str = "cpu") -> list[ExitParity]:
    """Compare onnxruntime and TorchScript stages with the full PyTorch model on each named batch."""
    model = bundle.load_model()
    runtimes: list[StageRuntime] = [
        OnnxRuntime(bundle, device=device),
        TorchScriptRuntime(bundle, device=device),
    ]
    results = []
    for label, images in batches.items():
        with torch.no_grad():
            reference = [r.float().numpy() for r in model(images)]
        for runtime in runtimes:
            for k, (got, want) in enumerate(zip(run_all_stages(runtime, images), reference, strict=True)):
                results.append(ExitParity(runtime.backend, label, k, float(np.abs(got - want).max())))
    return results
