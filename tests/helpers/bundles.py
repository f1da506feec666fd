"""Build a tiny but real calibrated bundle for API tests.

The tiny model is `fmnist-default` shrunk (4 stem channels, growth 4: the smallest that leaves
a channel from the coarse sub-network in every fusion layer): same 1x28x28 input, 10 classes
and 6 exits as the served default, but it exports in seconds. Batch-norm running statistics are set
from random data so the logits are O(1) and confidences spread over (0.1, 1), which makes the
confidence thresholds of the calibration points meaningful.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ranet_serve.export.bundle import load_bundle, write_bundle, write_manifest
from ranet_serve.export.defaults import default_input_spec, default_labels
from ranet_serve.export.manifest import Calibration, Manifest, OperatingPoint
from ranet_serve.model.config import load_config
from ranet_serve.model.ranet import RANet

# Thresholds of the calibration points the tests rely on (one per exit, 6 exits).
FAST_THRESHOLDS = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # everything leaves at exit 0
BALANCED_THRESHOLDS = (0.3, 0.3, 0.3, 0.3, 0.3, 1.0)
FULL_THRESHOLDS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # never leave early
LOGIT_SCALE = 30.0


def tiny_model(seed: int = 0) -> RANet:
    """A seeded tiny RANet in eval mode with batch-norm statistics from random inputs."""
    torch.manual_seed(seed)
    # 128-wide CIFAR heads (not the default model's narrower ones): the tests' FLOPs figures were
    # worked out for them.
    config = load_config("fmnist-default", n_channels=4, growth_rate=4, classifier_channels=None)
    model = RANet(config)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, config.in_channels, config.image_size, config.image_size))
        # Fresh classifiers give near-uniform softmax (confidence ~0.11); scaled up, confidences spread
        # over about (0.2, 0.9), so thresholds such as 0.3 split images between exits.
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(LOGIT_SCALE)
                if module.bias is not None:
                    module.bias.mul_(LOGIT_SCALE)
    return model.eval()


def calibration_for(manifest: Manifest) -> Calibration:
    """Three points: `fast` (exit 0), `balanced` (the default) and `full-depth` (last exit)."""
    flops = manifest.cumulative_flops
    last = len(flops) - 1
    one_hot = tuple(1.0 if k == last else 0.0 for k in range(len(flops)))
    return Calibration(
        points=(
            OperatingPoint(
                name="fast",
                method="geometric",
                thresholds=FAST_THRESHOLDS,
                expected_flops=float(flops[0]),
                val_accuracy=0.70,
                exit_distribution=tuple(1.0 if k == 0 else 0.0 for k in range(len(flops))),
            ),
            OperatingPoint(
                name="balanced",
                method="optimized",
                thresholds=BALANCED_THRESHOLDS,
                expected_flops=float(flops[1] + flops[2]) / 2,
                val_accuracy=0.85,
                exit_distribution=(0.2, 0.2, 0.2, 0.2, 0.1, 0.1),
            ),
            OperatingPoint(
                name="full-depth",
                method="full-depth",
                thresholds=FULL_THRESHOLDS,
                expected_flops=float(flops[last]),
                val_accuracy=0.90,
                exit_distribution=one_hot,
            ),
        ),
        default_point="balanced",
        split="random-test-data",
        last_exit_val_accuracy=0.90,
    )


def build_tiny_bundle(out: Path, *, name: str = "tiny", version: str = "1") -> Manifest:
    """Export the tiny model to `out` (a `<store>/<name>/<version>` directory) with a calibration."""
    model = tiny_model()
    manifest = write_bundle(
        model,
        out,
        name=name,
        version=version,
        input_spec=default_input_spec(model.config),
        labels=default_labels(model.config),
        val_accuracy=[0.6, 0.7, 0.75, 0.8, 0.85, 0.9],
    )
    return write_manifest(out, manifest.model_copy(update={"calibration": calibration_for(manifest)}))


def make_store(root: Path, template: Path, versions: tuple[str, ...] = ("1",), name: str = "tiny") -> Path:
    """A model store at `root` holding copies of the template bundle as `name/<version>`."""
    for version in versions:
        target = root / name / version
        shutil.copytree(template, target)
        if version != "1" or name != "tiny":
            manifest = load_bundle(target).manifest
            write_manifest(target, manifest.model_copy(update={"name": name, "version": version}))
    return root
