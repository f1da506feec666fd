"""Images to send: the bundled Fashion-MNIST samples, or a folder of image files with optional labels.

Labels make the load generator report accuracy; they come from `labels.json` beside the images, in
either form: `{"images": {"a.png": {"class_index": 3, "label": "Dress"}}}` (what the bundled samples
use) or the short `{"a.png": 3}` / `{"a.png": "Dress"}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_FOLDER_IMAGES = 10_000  # a load test needs variety, not a whole dataset in memory
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class Sample:
    """An encoded image file and, when known, its true class (index and/or label name)."""

    name: str
    data: bytes
    class_index: int | None = None
    label: str | None = None

    @property
    def labelled(self) -> bool:
        return self.class_index is not None or self.label is not None

    def is_correct(self, class_index: int, label: str) -> bool | None:
        """Whether a prediction matches; None when the true class is unknown."""
        if self.class_index is not None:
            return class_index == self.class_index
        if self.label is not None:
            return label == self.label
        return None


def _parse_labels(document: Any) -> dict[str, tuple[int | None, str | None]]:
    if not isinstance(document, dict):
        raise ValueError(f"{LABELS_FILE} must hold a JSON object")
    entries = document.get("images", document)
    if not isinstance(entries, dict):
        raise ValueError(f'{LABELS_FILE}: "images" must map file names to labels')
    out: dict[str, tuple[int | None, str | None]] = {}
    for name, value in entries.items():
        if isinstance(value, bool):
            raise ValueError(f"{LABELS_FILE}: label of {name!r} must be a class index or name")
        if isinstance(value, int):
            out[name] = (value, None)
        elif isinstance(value, str):
            out[name] = (None, value)
        elif isinstance(value, dict):
            index = value.get("class_index")
            label = value.get("label")
            out[name] = (None if index is None else int(index), None if label is None else str(label))
        else:
            raise ValueError(f"{LABELS_FILE}: label of {name!r} must be a class index, a name or an object")
    return out


def bundled_samples() -> list[Sample]:
    """The 20 Fashion-MNIST test images shipped with the package (2 per class, 28x28 grey PNG)."""
    root = resources.files("ranet_client") / "samples"
    labels = _parse_labels(json.loads((root / LABELS_FILE).read_text()))
    samples = []
    for name in sorted(labels):
        index, label = labels[name]
        samples.append(Sample(name, (root / name).read_bytes(), index, label))
    return samples


def folder_samples(folder: str | Path, limit: int = MAX_FOLDER_IMAGES) -> list[Sample]:
    """Image files directly in `folder` (sorted, at most `limit`), labelled from its labels.json if any.

    Raises FileNotFoundError when the folder does not exist and ValueError when it holds no images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    labels_path = root / LABELS_FILE
    labels = _parse_labels(json.loads(labels_path.read_text())) if labels_path.is_file() else {}
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return [Sample(p.name, p.read_bytes(), *labels.get(p.name, (None, None))) for p in paths]
