"""Datasets as in-memory uint8 arrays: Fashion-MNIST (Debian package), CIFAR python format, ImageFolder.

All three small datasets fit in memory as uint8 NCHW arrays, which makes the CPU training loop a few
tensor ops per batch instead of a Python image pipeline. Nothing here downloads anything: Fashion-MNIST
comes from Debian's `dataset-fashion-mnist` package, CIFAR from a directory the user names.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

CIFAR10_MEAN = (0.4914, 0.4824, 0.4467)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message says where and how to get it."""


@dataclass(frozen=True)
class ImageArrays:
    """Images as uint8 [N, C, H, W] with int64 labels [N], plus the facts preprocessing needs."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[indices], self.labels[indices], self.class_names, self.mean, self.std)


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST container format) into a numpy array."""
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: install Debian's dataset-fashion-mnist package "
            "(apt-get install dataset-fashion-mnist)"
        )
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: expected {np.prod(shape)} values, found {array.size}")
    return array.reshape(shape)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> ImageArrays:
    """Fashion-MNIST `train` (60,000) or `test` (10,000) as uint8 [N, 1, 28, 28]."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return ImageArrays(
        images=images[:, None, :, :].copy(),
        labels=labels.astype(np.int64),
        class_names=FASHION_MNIST_LABELS,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )


def load_cifar(root: Path, split: str, num_classes: int = 10) -> ImageArrays:
    """CIFAR-10/100 from the published python format (`cifar-10-batches-py`, `cifar-100-python`).

    The batches are pickles; they are read with a restricted unpickler that only builds plain
    containers and numpy arrays, since a dataset directory is user-supplied input.
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if num_classes == 10:
        directory = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif num_classes == 100:
        directory = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        files = [split]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        raise ValueError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    images, labels = [], []
    for name in files:
        batch = _load_cifar_pickle(directory / name)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    meta_path = directory / meta_file
    class_names: tuple[str, ...]
    if meta_path.is_file():
        class_names = tuple(str(n) for n in _load_cifar_pickle(meta_path)[names_key])  # type: ignore[attr-defined]
    else:
        class_names = tuple(str(i) for i in range(num_classes))
    return ImageArrays(np.concatenate(images), np.concatenate(labels), class_names, mean, std)


class _SafeUnpickler(pickle.Unpickler):
    """Allows only the numpy reconstruction helpers CIFAR pickles need; refuses everything else."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _load_cifar_pickle(path: Path) -> dict[str, object]:
    if not path.is_file():
        raise DatasetError(f"{path} not found: point --data-dir at an extracted CIFAR python archive")
    with path.open("rb") as handle:
        raw = _SafeUnpickler(handle, encoding="latin1").load()
    return {str(k): v for k, v in raw.items()}


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image_folder(
    root: Path, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> ImageArrays:
    """An ImageFolder tree (`root/<class>/<image>`), resized to `image_size` and held in memory."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DatasetError(f"{root} has no class sub-directories (expected root/<class>/<image>)")
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as image:
                picture = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
                array = np.asarray(picture, dtype=np.uint8)
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"{root} contains no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    return ImageArrays(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(classes), mean, std)


def split_validation(train: ImageArrays, size: int, seed: int) -> tuple[ImageArrays, ImageArrays, np.ndarray]:
    """Hold out `size` training images as the validation split, fixed by `seed`.

    Returns (train_part, validation_part, validation_indices). The indices are recorded in
    checkpoints and bundles so the split can be reproduced and audited. Validation images get the
    evaluation transform, never training augmentation (an official-code bug we do not repeat).
    """
    if not 0 < size < len(train):
        raise ValueError(f"validation size must be between 1 and {len(train) - 1}, got {size}")
    order = np.random.default_rng(seed).permutation(len(train))
    val_idx = np.sort(order[-size:])
    train_idx = np.sort(order[:-size])
    return train.subset(train_idx), train.subset(val_idx), val_idx
