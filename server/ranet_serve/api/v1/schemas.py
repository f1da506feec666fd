"""Response bodies of the v1 protocol (they also document it in the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TopKEntry(BaseModel):
    label: str
    class_index: int
    probability: float


class ImagePrediction(BaseModel):
    label: str
    class_index: int
    confidence: float = Field(description="softmax probability of the predicted class at the answering exit")
    top_k: list[TopKEntry]
    exit: int = Field(description="zero-based index of the exit that answered")
    flops: int = Field(description="cumulative FLOPs spent on this image")
    budget_limited: bool = Field(description="max_flops stopped the cascade before the image was confident")
    deadline_limited: bool = Field(
        default=False,
        description="on_deadline=best: the deadline passed first, and this is the deepest exit reached",
    )


class ExitEventData(ImagePrediction):
    """One Server-Sent Event of a streamed classification (`event: exit`)."""

    image: int = Field(description="index of the image in the request")
    final: bool = Field(description="true on the exit that answers the image; earlier ones are provisional")


class StreamDone(BaseModel):
    """The last Server-Sent Event of a streamed classification (`event: done`)."""

    model: str
    version: str
    operating_point: str
    timings: Timings


class Timings(BaseModel):
    queue_ms: float
    inference_ms: float
    total_ms: float


class ClassifyResponse(BaseModel):
    model: str
    version: str
    operating_point: str
    results: list[ImagePrediction]
    timings: Timings


_VAL_ACCURACY = "accuracy on the validation split, in percent (0-100); null when not measured"
_TEST_ACCURACY = "accuracy on the test split, in percent (0-100); null when not measured"


class ExitInfo(BaseModel):
    index: int
    cumulative_flops: int
    val_accuracy: float | None = Field(description=_VAL_ACCURACY)
    test_accuracy: float | None = Field(description=_TEST_ACCURACY)


class OperatingPointInfo(BaseModel):
    name: str
    method: str
    thresholds: list[float]
    expected_flops: float
    val_accuracy: float = Field(description="accuracy on the validation split, in percent (0-100)")
    test_accuracy: float | None = Field(description=_TEST_ACCURACY)
    exit_distribution: list[float]


class InputInfo(BaseModel):
    channels: int
    color_mode: str
    size: int
    resize: str
    mean: list[float]
    std: list[float]


class VersionInfo(BaseModel):
    version: str
    state: Literal["ready", "failed"]
    error: str | None = None
    config: str | None = None
    device: str | None = None
    num_classes: int | None = None
    input: InputInfo | None = None
    labels: list[str] | None = None
    exits: list[ExitInfo] | None = None
    operating_points: list[OperatingPointInfo] | None = None
    default_operating_point: str | None = Field(None, description="served when a request sets no knob")


class ModelInfo(BaseModel):
    name: str
    default_version: str | None = Field(description="the latest version that loaded; None if none did")
    versions: list[VersionInfo]


class ModelsResponse(BaseModel):
    default_model: str
    models: list[ModelInfo]


class ReloadResponse(BaseModel):
    loaded: list[str]
    kept: list[str]
    failed: list[str]
    removed: list[str]
    models: list[ModelInfo]
