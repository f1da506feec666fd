"""Regenerate the bundled samples: 20 Fashion-MNIST test images (the first 2 of each class) as PNG.

Reads Debian's `dataset-fashion-mnist` files (no download). The samples are test-split images, so
accuracy measured on them by `ranet-client load` is never measured on training data.
Run: python clients/python/scripts/make_samples.py
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DATASET = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "ranet_client" / "samples"
PER_CLASS = 2


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def main() -> None:
    images = _read_idx(DATASET / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(DATASET / "t10k-labels-idx1-ubyte.gz", 8)
    chosen = sorted(int(i) for cls in range(len(LABELS)) for i in np.flatnonzero(labels == cls)[:PER_CLASS])
    OUT.mkdir(parents=True, exist_ok=True)
    entries = {}
    for index in chosen:
        name = f"fmnist_test_{index:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(images[index], mode="L").save(buffer, format="PNG", optimize=True)
        (OUT / name).write_bytes(buffer.getvalue())
        entries[name] = {
            "class_index": int(labels[index]),
            "label": LABELS[labels[index]],
            "test_index": index,
        }
    document = {
        "source": "Fashion-MNIST test split (t10k), Debian package dataset-fashion-mnist",
        "labels": list(LABELS),
        "images": entries,
    }
    (OUT / "labels.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {len(entries)} samples to {OUT}")


if __name__ == "__main__":
    main()
