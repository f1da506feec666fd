"""Step a: an ImageNet-class RANet as a user would bring it, made at run time (nothing large committed).

Random weights alone make a useless test subject: with fresh batch-norm statistics (mean 0, variance 1)
this dense net's later logits grow to ~1e8, which no trained model produces and which makes any parity
figure meaningless. So the running statistics are re-estimated on smooth random images first, and the
result is saved exactly as the official `main.py` saves a checkpoint, so `ranet export` reads it as a
user's official checkpoint.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ranet_serve.model.config import RANetConfig
    from ranet_serve.model.ranet import RANet

# The narrow ImageNet-shaped config of --quick and the tests: imagenet-model1's structure (7x7/2 stem +
# max-pool, 4 resolutions, 8 exits, square classifier convs) with small widths: its export is mostly the
# fixed cost of tracing eight stages (about 30 s here).
NARROW_OVERRIDES: dict[str, object] = {
    "name": "imagenet-narrow",
    "n_channels": 8,
    "growth_rate": 4,
    "step": 2,
    "num_classes": 100,
}


def resolve_config(name: str, quick: bool) -> RANetConfig:
    """The config to measure: `name` (registered or a JSON file), or the narrow one with --quick."""
    from ranet_serve.model.config import load_config

    return load_config("imagenet-model1", **NARROW_OVERRIDES) if quick else load_config(name)


def smooth_random_images(count: int, size: int, generator: Any) -> Any:
    """Photo-like inputs in the network's input space: smooth colour fields plus fine texture.

    Pixels in [0, 1] normalised with the ImageNet mean/std, as the server's preprocessing does, so the
    batch-norm statistics estimated from them fit what photos produce.
    """
    import torch
    import torch.nn.functional as F

    from ranet_serve.export.defaults import IMAGENET_MEAN, IMAGENET_STD

    low = torch.rand(count, 3, 7, 7, generator=generator)
    pixels = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    pixels = (pixels + 0.05 * torch.randn(count, 3, size, size, generator=generator)).clamp(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def reestimate_batch_norm(model: RANet, batches: int, batch_size: int, seed: int = 1) -> None:
    """Running statistics as the cumulative average over `batches` forward passes in train mode.

    Random weights with fresh statistics (mean 0, variance 1) let activations grow layer after layer
    in this dense net; estimated statistics keep every exit's logits at a scale a trained model has.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(smooth_random_images(batch_size, size, generator))
    model.eval()


def verify_logit_scale(model: RANet, batch: int = 8, seed: int = 0) -> list[float]:
    """Largest |logit| per exit on the random batch `ranet verify` checks (its default batch and seed):
    the scale its absolute differences are read against."""
    import torch

    config = model.config
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return [float(logits.abs().max()) for logits in model(images)]


def save_official_checkpoint(model: RANet, path: Path) -> int:
    """Save `model` as the official `main.py` does; return the file's size in bytes.

    The official script trains under `torch.nn.DataParallel` and saves `{epoch, arch, state_dict,
    best_prec1, optimizer}` (spec section 7): every key carries the `module.` prefix, and the optimizer
    is SGD's state dict. Tensors are on the CPU here (theirs are CUDA tensors, which import maps).
    """
    import torch

    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    payload = {
        "epoch": 0,
        "arch": "RANet",
        "state_dict": state,
        "best_prec1": 0.0,
        "optimizer": optimizer.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path.stat().st_size


def make_checkpoint(config: RANetConfig, path: Path, bn_batches: int, bn_batch_size: int) -> dict[str, Any]:
    """Step a: build, re-estimate batch norm, read the logits' scale, save; the model is freed after
    (export and serving run next, in child processes, and should not share the machine with it)."""
    import torch

    from ranet_serve.model.ranet import RANet

    started = time.perf_counter()
    torch.manual_seed(0)
    model = RANet(config)
    reestimate_batch_norm(model, bn_batches, bn_batch_size)
    estimated = time.perf_counter() - started
    scale = verify_logit_scale(model)
    size = save_official_checkpoint(model, path)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return {
        "config": config.model_dump(mode="json"),
        "parameters": parameters,
        "checkpoint_bytes": size,
        "format": "official main.py: {epoch, arch, state_dict (module.*), best_prec1, optimizer}",
        "bn_reestimation": {
            "batches": bn_batches,
            "batch_size": bn_batch_size,
            "seconds": round(estimated, 1),
        },
        "verify_logit_max_abs": [round(v, 4) for v in scale],
        "seconds": round(time.perf_counter() - started, 1),
    }
