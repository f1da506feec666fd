"""Steps e and f: photo-like JPEGs of the sizes users send, and what decoding them costs.

The photos are made here (nothing large committed): smooth colour gradients, mid-scale detail and
luminance grain, which lands near a phone's file size. Their decode + preprocess time, full decode
against JPEG draft mode, is benchmarks/decode.py's `measure_decode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ranet_serve.export.manifest import InputSpec

PHOTO_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (4000, 3000))
JPEG_QUALITY = 90


def photo_jpeg(width: int, height: int, seed: int, quality: int = JPEG_QUALITY) -> bytes:
    """A photo-like JPEG: smooth colour gradients, mid-scale detail and luminance grain.

    Pure noise would be far larger than a camera's file and smooth fields far smaller; this mix lands
    near a phone's size (about 3.5 MB at 4000x3000, quality 90). decode.py's `photo_like` is another
    picture (1.1 bits per pixel): the figures of this step were measured on this one.
    """
    from PIL import Image

    from decode import encode_jpeg

    rng = np.random.default_rng(seed)
    bicubic, bilinear = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), bicubic)
    coarse = (max(2, height // 40), max(2, width // 40), 3)
    detail = Image.fromarray(rng.integers(0, 256, coarse, dtype=np.uint8)).resize((width, height), bilinear)
    pixels = np.asarray(base, dtype=np.float32) * 0.7
    pixels += (np.asarray(detail, dtype=np.float32) - 128.0) * 0.4
    pixels += rng.normal(0.0, 6.0, (height, width, 1)).astype(np.float32)
    return encode_jpeg(np.clip(pixels, 0, 255).astype(np.uint8), quality)


def photos_by_size() -> dict[str, bytes]:
    """One photo per PHOTO_SIZES entry, keyed "WxH" (the key every table and bar uses)."""
    return {f"{w}x{h}": photo_jpeg(w, h, seed=i) for i, (w, h) in enumerate(PHOTO_SIZES)}


def decode_figures(data: bytes, spec: InputSpec, repeats: int) -> dict[str, Any]:
    """Step f for one photo: decode + preprocess ms per image, full decode (before) and JPEG draft
    mode (after), from benchmarks/decode.py's `measure_decode` (its figures kept under "raw")."""
    from decode import measure_decode

    figures = measure_decode(data, spec, repeats)
    return {
        "source": "benchmarks/decode.py measure_decode",
        "before_ms": figures.get("full_ms"),
        "after_ms": figures.get("draft_ms"),
        "raw": figures,
    }


def server_decodes_with_draft() -> bool:
    """Whether the server's own decoding uses JPEG draft mode in this checkout: `preprocess_batch`'s
    default, which the report states next to the photo table."""
    import inspect

    from ranet_serve.api.images import preprocess_batch

    draft = inspect.signature(preprocess_batch).parameters.get("draft")
    return draft is not None and draft.default is True
