"""Resolve a dataset name into train / validation / test arrays with a recorded validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranet_serve.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DatasetError,
    ImageArrays,
    load_cifar,
    load_fashion_mnist,
    load_image_folder,
    split_validation,
)

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "folder")


@dataclass(frozen=True)
class DataSplits:
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays
    val_indices: np.ndarray  # indices into the original training set
    name: str


def load_splits(
    dataset: str,
    *,
    val_size: int,
    seed: int,
    data_dir: Path | None = None,
    image_size: int = 32,
    channels: int = 3,
) -> DataSplits:
    """Training data minus a seeded validation hold-out, the held-out part, and the test set."""
    if dataset == "fashion-mnist":
        full, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    elif dataset in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DatasetError(f"{dataset} needs --data-dir pointing at the extracted python archive")
        classes = 100 if dataset == "cifar100" else 10
        full, test = load_cifar(data_dir, "train", classes), load_cifar(data_dir, "test", classes)
    elif dataset == "folder":
        if data_dir is None or not (Path(data_dir) / "train").is_dir():
            raise DatasetError("an ImageFolder dataset needs --data-dir with train/ and test/ sub-trees")
        root = Path(data_dir)
        full = load_image_folder(root / "train", image_size, channels, CIFAR10_MEAN, CIFAR10_STD)
        test = load_image_folder(root / "test", image_size, channels, CIFAR10_MEAN, CIFAR10_STD)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    train, val, val_indices = split_validation(full, val_size, seed)
    return DataSplits(train=train, val=val, test=test, val_indices=val_indices, name=dataset)
