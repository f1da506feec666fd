"""The bundle manifest: everything a server needs to serve a bundle, as a validated pydantic schema.

A bundle (`model_store/<name>/<version>/`) is self-describing: the manifest names every file with its
SHA-256, the stage graph (inputs, outputs, FLOPs), the exits, every state tensor with its shape,
size and last reader, the input preprocessing, the labels, and the calibrated operating points.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ranet_serve.model.config import RANetConfig

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # also safe as a directory name
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """How raw images become the `image` tensor; the server's preprocessing reads only this."""

    channels: int = Field(ge=1)
    color_mode: Literal["L", "RGB"]
    size: int = Field(ge=1, description="square side of the network input, pixels")
    resize: Literal["resize", "resize_shorter_center_crop"] = "resize"
    resize_to: int | None = Field(None, description="shorter side before the centre crop (crop policy)")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    invert: bool = Field(False, description="invert intensities (dark-on-light to light-on-dark)")
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} entries (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std entries must be positive")
        return self


class TensorSpec(_Strict):
    """A tensor exchanged between stages; shape excludes the batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: Literal["float32"] = "float32"
    bytes_per_image: int
    producer_stage: int | None = Field(description="None for the image")
    last_reader_stage: int | None = Field(description="the executor may drop it after this stage")


class StageEntry(_Strict):
    index: int
    files: dict[Literal["onnx", "torchscript"], str]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: int = Field(description="official-counter FLOPs of this stage alone, per image")


class ExitEntry(_Strict):
    index: int
    stage: int
    logits: str
    cumulative_flops: int = Field(description="what a cascade spends per image to reach this exit")
    cumulative_params: int
    val_accuracy: float | None = None
    test_accuracy: float | None = None


class OperatingPoint(_Strict):
    """Per-exit thresholds with what they achieved on held-out data.

    Rule: an image leaves at the first exit whose softmax confidence is >= its threshold; a threshold
    >= 1.0 means never leave there (the last exit always answers).
    """

    name: str
    method: Literal["geometric", "optimized", "full-depth"]
    thresholds: tuple[float, ...]
    expected_flops: float = Field(description="average FLOPs per image on the validation split")
    val_accuracy: float
    test_accuracy: float | None = None
    test_expected_flops: float | None = None
    exit_distribution: tuple[float, ...] = Field(description="share of validation images per exit")


class Calibration(_Strict):
    points: tuple[OperatingPoint, ...]
    default_point: str = Field(description="name of the point served when a request sets no knob")
    split: str = Field(description="the held-out data the thresholds were fitted on")
    last_exit_val_accuracy: float

    @model_validator(mode="after")
    def _default_exists(self) -> Calibration:
        if self.default_point not in {p.name for p in self.points}:
            raise ValueError(f"default_point {self.default_point!r} is not among the calibrated points")
        return self

    def point(self, name: str) -> OperatingPoint:
        for candidate in self.points:
            if candidate.name == name:
                return candidate
        raise KeyError(name)


class Provenance(_Strict):
    checkpoint_sha256: str
    tool: str
    tool_version: str
    torch_version: str
    opset: int
    source: str = ""


class Manifest(_Strict):
    format_version: int
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    config: RANetConfig
    input: InputSpec
    labels: tuple[str, ...]
    stages: tuple[StageEntry, ...]
    exits: tuple[ExitEntry, ...]
    tensors: tuple[TensorSpec, ...]
    calibration: Calibration | None = None
    checkpoint: str = "checkpoint.pt"
    files: dict[str, str] = Field(description="relative path -> SHA-256 of every file but the manifest")
    provenance: Provenance

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"unknown bundle format_version {self.format_version}; this server reads {FORMAT_VERSION}"
            )
        if len(self.labels) != self.config.num_classes:
            raise ValueError(f"{len(self.labels)} labels for a {self.config.num_classes}-class model")
        if len(self.exits) != len(self.stages) or len(self.exits) != self.config.num_exits:
            raise ValueError(
                f"{len(self.stages)} stages and {len(self.exits)} exits "
                f"for a {self.config.num_exits}-exit config"
            )
        flops = [e.cumulative_flops for e in self.exits]
        if any(b <= a for a, b in itertools.pairwise(flops)):
            raise ValueError("exit cumulative_flops must increase strictly")
        if self.calibration is not None:
            for point in self.calibration.points:
                if len(point.thresholds) != len(self.exits):
                    raise ValueError(f"operating point {point.name!r} has {len(point.thresholds)} thresholds")
        return self

    @property
    def cumulative_flops(self) -> list[int]:
        return [e.cumulative_flops for e in self.exits]

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.tensors:
            if spec.name == name:
                return spec
        raise KeyError(name)
