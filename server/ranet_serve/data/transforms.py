"""Batch transforms on uint8 tensors, written with torch alone (torchvision is not available here).

Training augmentation is the paper's: random crop with zero padding and horizontal flip, applied
per image. Evaluation is normalisation only. Both work on whole batches so the CPU training loop
spends its time in the network, not in per-image Python.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 [N, C, H, W] -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator, flip: bool = True) -> Tensor:
    """Random crop of the original size from a zero-padded image, then a random horizontal flip.

    Padding happens on the raw uint8 image (zeros), as torchvision's RandomCrop(padding=...) does
    before normalisation in the official pipeline.
    """
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    out = torch.empty_like(images)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out
