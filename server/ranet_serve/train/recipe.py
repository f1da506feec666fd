"""Training recipes: the paper's published settings and the default Fashion-MNIST model's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainRecipe(BaseModel):
    """Everything that determines a training run. Stored in every checkpoint for reproducibility."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field("fmnist-default", description="registered config name or JSON file")
    dataset: str = "fashion-mnist"
    data_dir: Path | None = None
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["multistep", "cosine"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` for the multistep schedule
    crop_padding: int = 2
    flip: bool = True
    val_size: int = 5000
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    amp: bool = True  # mixed precision, used only on CUDA
    max_train_images: int | None = Field(None, ge=1, description="train on a prefix (tests, smoke runs)")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        """Refuse a device torch cannot name now, not at the first batch."""
        if value == "auto":
            return value
        import torch

        try:
            torch.device(value)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda or cuda:N") from exc
        return value


PRESETS: dict[str, dict[str, object]] = {
    # The paper's CIFAR recipe (spec section 9): 300 epochs, batch 64, LR x0.1 at 50% and 75%.
    "cifar": {
        "dataset": "cifar10",
        "config": "cifar10-model1",
        "epochs": 300,
        "batch_size": 64,
        "schedule": "multistep",
        "milestones": (0.5, 0.75),
        "crop_padding": 4,
        "val_size": 5000,
    },
    # ImageNet (third-party re-runs of the official code): 90 epochs, x0.1 every 30.
    "imagenet": {
        "dataset": "folder",
        "config": "imagenet-model1",
        "epochs": 90,
        "batch_size": 256,
        "schedule": "multistep",
        "milestones": (1 / 3, 2 / 3),
        "val_size": 50000,
    },
    # The bundled default: fits in about an hour on a 2-core CPU.
    "fmnist-default": {
        "dataset": "fashion-mnist",
        "config": "fmnist-default",
        "epochs": 16,
        "batch_size": 128,
        "schedule": "cosine",
        "crop_padding": 2,
        "val_size": 5000,
    },
}


def recipe_from_preset(preset: str, **overrides: object) -> TrainRecipe:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainRecipe.model_validate(values)
