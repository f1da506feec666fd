"""Bundle verification: every exit of every backend against the PyTorch model, stage by stage.

The parity rule is relative to the scale of the logits. An absolute bound cannot hold for every model:
float32 rounding differences between onnxruntime, TorchScript and PyTorch (other summation orders,
fused batch norm) grow with the values they round, and the logits of an untrained ImageNet RANet grow
layer by layer (fresh batch-norm statistics), from 0.3 at exit 0 to 2.6e8 at exit 7 for
`imagenet-model1`, whose exits 2-7 then differ by 1.3e-4 up to 8.5e2 in absolute terms. Measured
relative differences (max |got - want| / max |want| over verify's batch of 8, float32, CPU):

* `imagenet-model1`, random weights: 7.5e-7 to 3.3e-6 at every exit, both backends;
* a narrow ImageNet-shaped config (224 px, 8 channels, growth 4), random weights: 4.1e-7 to 1.1e-6;
* the bundled Fashion-MNIST model, random and real images: 2.0e-7 to 7.5e-7.

The default tolerance, 1e-4, leaves 30x room above the worst of those; an exported stage that computes
something else (a wrong weight, a missing op) is off by far more than 1e-4 of the scale.

The scale has a floor of 1.0: the logits feed a softmax, whose probabilities an error `e` in a logit
moves by a factor of at most exp(e) whatever the logits' size, so below 1 the rule becomes the old
absolute one (1e-4) instead of dividing by a near-zero maximum (all-zero logits would otherwise make
any rounding noise an infinite relative error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.arrays import StageArray
from ranet_serve.cascade.runtimes import OnnxRuntime, StageRuntime, TorchScriptRuntime
from ranet_serve.export.bundle import Bundle

TOLERANCE = 1e-4  # relative: max |got - want| / max(max |want|, SCALE_FLOOR), per exit and batch
SCALE_FLOOR = 1.0  # below this scale the rule is absolute (see the module docstring)
RULE = "rel diff = max |diff| / max(scale, 1), scale = max |logit| of PyTorch, per exit and batch"


@dataclass(frozen=True)
class ExitParity:
    """One exit of one backend on one batch, against PyTorch.

    `scale` is max |want| over the batch's logits; `relative_diff` is `max_abs_diff` over the scale
    (floored at SCALE_FLOOR), the figure `ok` judges against `tolerance`.
    """

    backend: str
    inputs: str
    exit: int
    max_abs_diff: float
    scale: float
    tolerance: float = TOLERANCE

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.scale, SCALE_FLOOR)

    @property
    def ok(self) -> bool:
        """Within tolerance; NaN or infinite logits on either side never pass."""
        finite = math.isfinite(self.max_abs_diff) and math.isfinite(self.scale)
        return finite and self.relative_diff <= self.tolerance


def compare_exit(
    backend: str, inputs: str, exit_: int, got: np.ndarray, want: np.ndarray, tolerance: float = TOLERANCE
) -> ExitParity:
    """Parity of one exit's logits `got` (batch, classes) against the reference `want`."""
    if got.shape != want.shape:
        raise ValueError(f"{backend} exit {exit_}: logits of shape {got.shape}, PyTorch's {want.shape}")
    # float64 so that the difference of two large float32 logits is not rounded again.
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    max_abs_diff = float(np.abs(got64 - want64).max()) if got.size else 0.0
    scale = float(np.abs(want64).max()) if want.size else 0.0
    return ExitParity(backend, inputs, exit_, max_abs_diff, scale, tolerance)


def run_all_stages(runtime: StageRuntime, images: Tensor) -> list[np.ndarray]:
    """Run every stage in order on `images` and return every exit's logits (float32, on the host)."""
    env: dict[str, StageArray] = {"image": runtime.arrays.from_images(images)}
    logits = []
    for stage in runtime.manifest.stages:
        outputs = runtime.run(stage.index, {name: env[name] for name in stage.inputs})
        env.update(outputs)
        logits.append(runtime.arrays.to_host(outputs[stage.outputs[0]]))
    return logits


def _runtime_factories(bundle: Bundle, device: str) -> Iterator[Callable[[], StageRuntime]]:
    # One set of onnxruntime sessions (single_thread_below=0): the small-batch set loads every graph a
    # second time, for speed the check does not need.
    yield lambda: OnnxRuntime(bundle, device=device, single_thread_below=0)
    yield lambda: TorchScriptRuntime(bundle, device=device)


def verify_bundle(
    bundle: Bundle, batches: dict[str, Tensor], device: str = "cpu", tolerance: float = TOLERANCE
) -> list[ExitParity]:
    """Compare onnxruntime and TorchScript stages with the full PyTorch model on each named batch.

    The reference logits are computed first and the model dropped, then one runtime at a time is
    built, run and dropped: at most one copy of the weights besides the reference logits is in memory
    (a 131 M-parameter model's weights are 0.5 GB per copy).
    """
    model = bundle.load_model()
    with torch.no_grad():
        references = {label: [r.float().numpy() for r in model(images)] for label, images in batches.items()}
    del model
    results = []
    for factory in _runtime_factories(bundle, device):
        runtime = factory()
        for label, images in batches.items():
            logits = run_all_stages(runtime, images)
            for k, (got, want) in enumerate(zip(logits, references[label], strict=True)):
                results.append(compare_exit(runtime.backend, label, k, got, want, tolerance))
        del runtime
    order = {"onnxruntime": 0, "torchscript": 1}
    return sorted(results, key=lambda r: (list(batches).index(r.inputs), order.get(r.backend, 2), r.exit))
