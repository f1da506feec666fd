"""Typed views of the server's JSON answers.

Plain frozen dataclasses built by tolerant `from_dict` constructors: unknown fields are ignored, so a
newer server that adds fields never breaks an older client. Every object keeps what the server sent
(`raw`) for callers that need a field this version does not model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class TopK:
    """One of the k most probable classes of an image at its answering exit."""

    label: str
    class_index: int
    probability: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopK:
        return cls(
            label=str(data["label"]),
            class_index=int(data["class_index"]),
            probability=float(data["probability"]),
        )


@dataclass(frozen=True)
class ImageResult:
    """The answer for one image: the class, which exit answered and what it cost.

    `exit` is zero-based; `flops` is the cumulative cost of the exits run for this image; `budget_limited`
    is true when `max_flops` stopped the cascade before any exit was confident enough; `deadline_limited`
    when the request's deadline passed first and `on_deadline="best"` answered with the deepest exit
    reached (False from servers that do not send it).
    """

    label: str
    class_index: int
    confidence: float
    top_k: tuple[TopK, ...]
    exit: int
    flops: int
    budget_limited: bool
    deadline_limited: bool = False

    @property
    def mflops(self) -> float:
        """FLOPs in millions, the unit RANet papers and the CLI table use."""
        return self.flops / 1e6

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageResult:
        return cls(
            label=str(data["label"]),
            class_index=int(data["class_index"]),
            confidence=float(data["confidence"]),
            top_k=tuple(TopK.from_dict(item) for item in data.get("top_k") or ()),
            exit=int(data["exit"]),
            flops=int(data["flops"]),
            budget_limited=bool(data.get("budget_limited", False)),
            deadline_limited=bool(data.get("deadline_limited", False)),
        )


@dataclass(frozen=True)
class Timings:
    """Server-side timings of one request in milliseconds (queue wait, inference, arrival to answer)."""

    queue_ms: float
    inference_ms: float
    total_ms: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timings:
        return cls(
            queue_ms=float(data.get("queue_ms", 0.0)),
            inference_ms=float(data.get("inference_ms", 0.0)),
            total_ms=float(data.get("total_ms", 0.0)),
        )


@dataclass(frozen=True)
class ClassifyResponse:
    """A classify answer: which model version and operating point served, one result per image in order."""

    model: str
    version: str
    operating_point: str
    results: tuple[ImageResult, ...]
    timings: Timings
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def result(self) -> ImageResult:
        """The first (for a single-image request, the only) result."""
        return self.results[0]

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.results)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            operating_point=str(data.get("operating_point", "")),
            results=tuple(ImageResult.from_dict(item) for item in data["results"]),
            timings=Timings.from_dict(data.get("timings") or {}),
            raw=data,
        )


@dataclass(frozen=True)
class ExitEvent:
    """One exit an image passed in a streamed classification (`classify_stream`), as soon as it is computed.

    `image` is the image's index in the request; `exit`, `label`, `confidence`... are that exit's
    prediction (the fields of `ImageResult`). Events of one image come in exit order; `final` is true on
    the exit that answers it (the last event of that image), earlier ones are provisional.
    """

    image: int
    exit: int
    label: str
    class_index: int
    confidence: float
    top_k: tuple[TopK, ...]
    flops: int
    budget_limited: bool
    deadline_limited: bool
    final: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def mflops(self) -> float:
        return self.flops / 1e6

    @property
    def result(self) -> ImageResult:
        """This exit's prediction as a plain result (what `classify` answers when `final` is true)."""
        return ImageResult(
            label=self.label,
            class_index=self.class_index,
            confidence=self.confidence,
            top_k=self.top_k,
            exit=self.exit,
            flops=self.flops,
            budget_limited=self.budget_limited,
            deadline_limited=self.deadline_limited,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitEvent:
        result = ImageResult.from_dict(data)
        return cls(
            image=int(data["image"]),
            exit=result.exit,
            label=result.label,
            class_index=result.class_index,
            confidence=result.confidence,
            top_k=result.top_k,
            flops=result.flops,
            budget_limited=result.budget_limited,
            deadline_limited=result.deadline_limited,
            final=bool(data["final"]),
            raw=data,
        )


@dataclass(frozen=True)
class StreamSummary(ClassifyResponse):
    """The end of a streamed classification: the answer `classify` would have given (a `ClassifyResponse`).

    `results` holds each image's final exit, in request order, gathered from the stream's events;
    model, version, operating point and timings come from the server's closing `done` event (`raw`).
    """

    def as_response(self) -> ClassifyResponse:
        """The same answer as a plain `ClassifyResponse` (equal to what `classify` returns)."""
        return ClassifyResponse.from_dict(self.raw)

    @classmethod
    def from_done(cls, data: dict[str, Any], finals: dict[int, ExitEvent]) -> StreamSummary:
        """From the `done` event's document and each image's final event (keyed by image index).

        `raw` is the `done` document plus `results`: the final events' fields without `image` and
        `final`, i.e. the plain answer's JSON.
        """
        ordered = [finals[i] for i in sorted(finals)]
        results = [{k: v for k, v in e.raw.items() if k not in ("image", "final")} for e in ordered]
        return cls.from_dict({**data, "results": results})


@dataclass(frozen=True)
class ExitInfo:
    """One exit of a model: its cumulative cost and held-out accuracy in percent (None when not measured)."""

    index: int
    cumulative_flops: int
    val_accuracy: float | None = None
    test_accuracy: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitInfo:
        return cls(
            index=int(data["index"]),
            cumulative_flops=int(data["cumulative_flops"]),
            val_accuracy=_float_or_none(data.get("val_accuracy")),
            test_accuracy=_float_or_none(data.get("test_accuracy")),
        )


@dataclass(frozen=True)
class OperatingPoint:
    """A calibrated set of per-exit thresholds (for `target_flops`): expected cost, accuracy in percent."""

    name: str
    thresholds: tuple[float, ...]
    expected_flops: float
    val_accuracy: float
    method: str = ""
    test_accuracy: float | None = None
    exit_distribution: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        return cls(
            name=str(data["name"]),
            thresholds=tuple(float(t) for t in data.get("thresholds") or ()),
            expected_flops=float(data.get("expected_flops", 0.0)),
            val_accuracy=float(data.get("val_accuracy", 0.0)),
            method=str(data.get("method", "")),
            test_accuracy=_float_or_none(data.get("test_accuracy")),
            exit_distribution=tuple(float(p) for p in data.get("exit_distribution") or ()),
        )


@dataclass(frozen=True)
class InputSpec:
    """What the model expects; the server resizes and normalises, so clients may send any size."""

    channels: int
    color_mode: str
    size: int
    resize: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            channels=int(data["channels"]),
            color_mode=str(data.get("color_mode", "")),
            size=int(data["size"]),
            resize=str(data.get("resize", "")),
            mean=tuple(float(m) for m in data.get("mean") or ()),
            std=tuple(float(s) for s in data.get("std") or ()),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model: `state` is "ready" or "failed" (then `error` says why, the rest is empty)."""

    version: str
    state: str
    error: str | None = None
    config: str | None = None
    device: str | None = None
    num_classes: int | None = None
    input: InputSpec | None = None
    labels: tuple[str, ...] = ()
    exits: tuple[ExitInfo, ...] = ()
    operating_points: tuple[OperatingPoint, ...] = ()
    default_operating_point: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def cheapest_exit_flops(self) -> int | None:
        """The smallest `max_flops` this version accepts (None when it did not load)."""
        return self.exits[0].cumulative_flops if self.exits else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        spec = data.get("input")
        return cls(
            version=str(data["version"]),
            state=str(data.get("state", "ready")),
            error=data.get("error"),
            config=data.get("config"),
            device=data.get("device"),
            num_classes=None if data.get("num_classes") is None else int(data["num_classes"]),
            input=InputSpec.from_dict(spec) if spec else None,
            labels=tuple(str(label) for label in data.get("labels") or ()),
            exits=tuple(ExitInfo.from_dict(item) for item in data.get("exits") or ()),
            operating_points=tuple(OperatingPoint.from_dict(p) for p in data.get("operating_points") or ()),
            default_operating_point=data.get("default_operating_point"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """A model and its versions; `default_version` is the latest one that loaded (None if none did)."""

    name: str
    default_version: str | None
    versions: tuple[ModelVersion, ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def latest(self) -> ModelVersion | None:
        """The version a request without `version` gets."""
        for entry in self.versions:
            if entry.version == self.default_version:
                return entry
        return None

    def version(self, version: str) -> ModelVersion:
        """One version by name; KeyError when the model has no such version."""
        for entry in self.versions:
            if entry.version == version:
                return entry
        raise KeyError(f"model {self.name!r} has no version {version!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            name=str(data["name"]),
            default_version=data.get("default_version"),
            versions=tuple(ModelVersion.from_dict(v) for v in data.get("versions") or ()),
            raw=data,
        )


@dataclass(frozen=True)
class ModelList:
    """`GET /v1/models`: every model in the store and which one `POST /v1/classify` uses."""

    default_model: str
    models: tuple[ModelInfo, ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def get(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelList:
        return cls(
            default_model=str(data.get("default_model", "")),
            models=tuple(ModelInfo.from_dict(m) for m in data.get("models") or ()),
            raw=data,
        )


@dataclass(frozen=True)
class Health:
    """Liveness (`/healthz`): the process answers; bundles may still be loading."""

    live: bool
    status: str

    @classmethod
    def from_dict(cls, data: dict[str, Any], ok: bool) -> Health:
        return cls(live=ok, status=str(data.get("status", "ok" if ok else "unhealthy")))


@dataclass(frozen=True)
class Readiness:
    """Readiness (`/readyz`): `ready` once the bundles are loaded and warm; `models` lists what serves."""

    ready: bool
    status: str
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], ok: bool) -> Readiness:
        models = data.get("models") or {}
        return cls(
            ready=bool(data.get("ready", ok)) and ok,
            status=str(data.get("status", "ready" if ok else "not ready")),
            models={str(name): tuple(str(v) for v in versions) for name, versions in models.items()},
        )
