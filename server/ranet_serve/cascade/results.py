"""What the cascade answers, as plain records: no torch, no runtime.

Kept apart from the executor so that the processes that only read results (the front-ends, which
decode requests and encode answers) never import torch or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageResult:
    exit: int
    class_index: int
    confidence: float
    top_k: tuple[tuple[int, float], ...]  # (class index, probability), most probable first
    flops: int  # cumulative FLOPs of the answering exit
    budget_limited: bool  # the FLOPs cap forced this exit before the image was confident
    seconds: float  # from the start of the batch to this image's exit
    # The request's deadline passed before the image was confident and it was answered with the
    # deepest exit it had reached (`on_deadline=best`).
    deadline_limited: bool = False


@dataclass(frozen=True)
class BatchResult:
    images: tuple[ImageResult, ...]
    stage_seconds: tuple[float, ...]  # time spent in each stage (0 for stages not run)
    stage_batch_sizes: tuple[int, ...]  # images each stage ran on (0 for stages not run)

    @property
    def seconds(self) -> float:
        return sum(self.stage_seconds)
