"""Default preprocessing and labels for a config, when the user names none.

The facts come from the datasets each family is trained on: Fashion-MNIST for 1-channel models,
CIFAR for 3-channel CIFAR-family models, ImageNet (resize 256, centre crop 224) for ImageNet models.
"""

from __future__ import annotations

from pathlib import Path

from ranet_serve.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_LABELS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
)
from ranet_serve.export.manifest import InputSpec
from ranet_serve.model.config import RANetConfig

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_input_spec(config: RANetConfig) -> InputSpec:
    if config.family == "imagenet":
        return InputSpec(
            channels=config.in_channels,
            color_mode="RGB",
            size=config.image_size,
            resize="resize_shorter_center_crop",
            resize_to=round(config.image_size * 256 / 224),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
    if config.in_channels == 1:
        return InputSpec(
            channels=1, color_mode="L", size=config.image_size, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD
        )
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if config.num_classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
    return InputSpec(
        channels=config.in_channels, color_mode="RGB", size=config.image_size, mean=mean, std=std
    )


def default_labels(config: RANetConfig, labels_file: Path | None = None) -> tuple[str, ...]:
    """Labels from a file (one per line), else the dataset's names, else `class_<i>`."""
    if labels_file is not None:
        labels = tuple(line.strip() for line in Path(labels_file).read_text().splitlines() if line.strip())
        if len(labels) != config.num_classes:
            raise ValueError(f"{labels_file} has {len(labels)} labels for a {config.num_classes}-class model")
        return labels
    if config.num_classes == 10 and config.in_channels == 1:
        return FASHION_MNIST_LABELS
    if config.num_classes == 10:
        return CIFAR10_LABELS
    return tuple(f"class_{i}" for i in range(config.num_classes))
