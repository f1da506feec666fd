"""Dataset loaders: CIFAR python format (restricted unpickling), ImageFolder trees, transforms."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranet_serve.data.datasets import DatasetError, load_cifar, load_image_folder
from ranet_serve.data.sources import load_splits
from ranet_serve.data.transforms import normalize, random_crop_flip


def write_cifar10(root: Path, per_batch: int = 4) -> Path:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (directory / name).write_bytes(pickle.dumps(batch))
    meta = {
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
    }
    (directory / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def test_cifar10_python_format_loads(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)
    train = load_cifar(root, "train")
    test = load_cifar(root, "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.class_names[0] == "airplane" and train.labels.dtype == np.int64
    raw = pickle.loads((root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    np.testing.assert_array_equal(train.images[0].reshape(-1), raw["data"][0])


def test_cifar_pickles_cannot_run_code(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load builtins\.print"):
        load_cifar(root, "train")


def test_missing_cifar_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--data-dir"):
        load_cifar(tmp_path, "train")
    with pytest.raises(DatasetError, match="--data-dir"):
        load_splits("cifar10", val_size=1, seed=0)


def test_image_folder_tree_loads_resized(tmp_path: Path) -> None:
    for label, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 20), (value, value, value)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, image_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert data.images.shape == (6, 3, 16, 16)
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(data.images[0].max()) == 10 and int(data.images[-1].min()) == 200
    with pytest.raises(DatasetError, match="no class sub-directories"):
        load_image_folder(tmp_path / "cats", 16, 3, (0.5,) * 3, (0.5,) * 3)


def test_random_crop_flip_keeps_shape_and_pixels() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    out = random_crop_flip(images, padding=0, generator=torch.Generator().manual_seed(0), flip=True)
    for original, augmented in zip(images, out, strict=True):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(-1))
    padded = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(1), flip=False)
    assert padded.shape == images.shape and padded.dtype == torch.uint8


def test_normalize_matches_the_formula() -> None:
    x = torch.full((1, 2, 2, 2), 51, dtype=torch.uint8)
    out = normalize(x, (0.1, 0.2), (0.5, 0.25))
    torch.testing.assert_close(out[0, 0], torch.full((2, 2), (0.2 - 0.1) / 0.5))
    torch.testing.assert_close(out[0, 1], torch.full((2, 2), (0.2 - 0.2) / 0.25))
