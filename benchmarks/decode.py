"""Decode + preprocess time of one JPEG, full decode vs draft decoding (issue 21).

`measure_decode(jpeg_bytes, spec, repeats)` is the function other code calls: milliseconds per image
for `preprocess_batch(..., draft=False)` and `draft=True`, medians over `repeats` interleaved runs, and
how far the two model inputs differ. `main()` runs it on two photo-like JPEGs (500x375 and 4000x3000,
quality 90) for the ImageNet input (shorter side 256, centre crop 224), prints a table and writes JSON:

    .venv/bin/python benchmarks/decode.py --out benchmarks/results/decode.json

Nothing runs on import.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ranet_serve.api.images import ImageLimits, decode_image, draft_scale, preprocess_batch
from ranet_serve.export.defaults import default_input_spec
from ranet_serve.export.manifest import InputSpec
from ranet_serve.model.config import load_config

IMAGENET_224 = default_input_spec(load_config("imagenet-model1"))  # resize 256, centre crop 224
# A 4000x3000 photo is 12 M pixels, under the server's default limit (4096 x 4096) as well.
LIMITS = ImageLimits(max_image_pixels=4096 * 4096)
DEFAULT_SIZES = ((500, 375), (4000, 3000))


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3] pixels with what decoding and resizing are sensitive to in a photograph.

    Smooth light and colour, texture at every scale with amplitude falling with frequency (natural
    images' spectrum), sensor noise, and hard-edged objects at arbitrary sub-pixel positions. At
    quality 90 it compresses to about 1.1 bits per pixel at 12 M pixels (phone photos: 1-3).
    """
    rng = np.random.default_rng(seed)
    colours = Image.fromarray(rng.integers(40, 216, (3, 4, 3), dtype=np.uint8))
    base = np.asarray(colours.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    texture = rng.integers(-4, 5, (height, width), dtype=np.int8).astype(np.float32)
    for cells, amplitude in ((16, 24.0), (64, 12.0), (256, 8.0), (1024, 6.0)):
        grid = rng.normal(0.0, amplitude, (max(2, cells * height // width), cells)).astype(np.float32)
        texture += np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BILINEAR))
    picture = Image.fromarray(np.clip(base + texture[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(12):
        left, top = rng.uniform(0, width), rng.uniform(0, height)
        box = (left, top, left + rng.uniform(0.05, 0.3) * width, top + rng.uniform(0.05, 0.3) * height)
        colour = (int(rng.integers(256)), int(rng.integers(256)), int(rng.integers(256)))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    return np.asarray(picture)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _milliseconds(data: bytes, spec: InputSpec, draft: bool) -> float:
    started = time.perf_counter()
    preprocess_batch([data], spec, LIMITS, draft=draft)
    return (time.perf_counter() - started) * 1000.0


def measure_decode(jpeg_bytes: bytes, spec: InputSpec = IMAGENET_224, repeats: int = 9) -> dict[str, Any]:
    """Decode + preprocess milliseconds per image without and with draft decoding, and the difference.

    The two variants alternate (after one untimed warm-up each), so a noisy neighbour on a shared
    machine slows both alike; each figure is the median over `repeats`. The differences are between
    the two model inputs, in the spec's normalised units (one 8-bit level is 1 / (255 * std)).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    full = preprocess_batch([jpeg_bytes], spec, LIMITS, draft=False)
    drafted = preprocess_batch([jpeg_bytes], spec, LIMITS, draft=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for draft in (False, True):
            times[draft].append(_milliseconds(jpeg_bytes, spec, draft))
    width, height = Image.open(io.BytesIO(jpeg_bytes)).size
    difference = np.abs(drafted - full)
    full_ms, draft_ms = statistics.median(times[False]), statistics.median(times[True])
    return {
        "width": width,
        "height": height,
        "bytes": len(jpeg_bytes),
        "draft_scale": draft_scale(width, height, spec),
        "decoded_size": list(decode_image(jpeg_bytes, LIMITS, target=spec).size),
        "repeats": repeats,
        "full_ms": full_ms,
        "draft_ms": draft_ms,
        "speedup": full_ms / draft_ms,
        "mean_abs_diff": float(difference.mean()),
        "p99_abs_diff": float(np.percentile(difference, 99)),
        "max_abs_diff": float(difference.max()),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The measurements as a Markdown table."""
    lines = [
        "| image | bytes | scale | decoded | full ms | draft ms | speedup | mean diff | p99 diff | max diff"
        " |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']}x{r['height']} | {r['bytes']} | 1/{r['draft_scale']} | "
            f"{r['decoded_size'][0]}x{r['decoded_size'][1]} | {r['full_ms']:.1f} | {r['draft_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['mean_abs_diff']:.4f} | {r['p99_abs_diff']:.4f} | "
            f"{r['max_abs_diff']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the measurements here as JSON")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per variant (median)")
    args = parser.parse_args(argv)
    rows = [
        measure_decode(encode_jpeg(photo_like(width, height, seed=height)), IMAGENET_224, args.repeats)
        for width, height in DEFAULT_SIZES
    ]
    print(table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"spec": IMAGENET_224.model_dump(), "images": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
