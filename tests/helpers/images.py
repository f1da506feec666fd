"""Deterministic test images, encoded as the files clients send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(seed: int, size: int = 28, mode: str = "L") -> bytes:
    """A deterministic random-pattern image encoded as PNG."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG")
    return buffer.getvalue()
