"""The plain records that cross the engine's boundary: a request in, a result out, a reload report,
the model repository's index.

No torch here, nor anything that imports it: front-end processes import this module, and a front-end
that never loads torch or onnxruntime starts faster and holds a fraction of the memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

from ranet_serve.cascade.policy import Budget
from ranet_serve.cascade.results import ImageResult

OnDeadline = Literal["error", "best"]
ON_DEADLINE: tuple[OnDeadline, ...] = ("error", "best")


@dataclass(frozen=True)
class EngineRequest:
    """One inference request as the engine sees it, whatever protocol and process it came from.

    `received` and `deadline` are `time.monotonic()` values (CLOCK_MONOTONIC, the same in every
    process of the machine). `version` None: the latest version that loaded. `stream`: the caller
    hears every exit of every image as it happens (`ExitEvent`). `on_deadline`: what happens when the
    deadline passes while images are in the cascade: "error" (DeadlineExceededError) or "best"
    (answered at once with each image's deepest exit so far, `deadline_limited`).
    """

    model: str
    version: str | None = None
    budget: Budget = field(default_factory=Budget)
    top_k: int = 1
    all_probabilities: bool = False  # every class's probability (top_k = number of classes)
    received: float = field(default_factory=time.monotonic)
    deadline: float = math.inf
    stream: bool = False
    on_deadline: OnDeadline = "error"


@dataclass(frozen=True)
class ExitEvent:
    """One exit an image of a streamed request passed: `final` on the exit that answers it."""

    image: int  # index in the request
    result: ImageResult
    final: bool


@dataclass(frozen=True)
class EngineResult:
    """Per-image results in request order, the version and point that ran, and the engine's timings."""

    model: str
    version: str
    operating_point: str
    images: tuple[ImageResult, ...]
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class ReloadReport:
    loaded: tuple[str, ...]  # "name/version" newly loaded
    kept: tuple[str, ...]  # unchanged and still serving
    failed: tuple[str, ...]
    removed: tuple[str, ...]  # no longer served (drained and closed)


# Triton's model states (its repository extension): the index speaks them on every protocol.
RepositoryState = Literal["READY", "UNAVAILABLE", "LOADING"]


@dataclass(frozen=True)
class RepositoryEntry:
    """One version of one model in the model store, whether the engine serves it or not.

    READY: it serves. LOADING: it is being (re)loaded. UNAVAILABLE: it failed to load, was unloaded,
    or appeared in the store after the last (re)load; `reason` says which.
    """

    name: str
    version: str
    state: RepositoryState
    reason: str = ""
