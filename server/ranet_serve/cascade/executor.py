"""The cascade executor: run a batch stage by stage and let each image leave at its own exit.

After each stage every live image gets a softmax confidence; an image leaves when its confidence
reaches its threshold for that exit (a threshold >= 1.0 means "never leave here") or when the exit is
the last one its FLOPs cap allows. Leavers are removed from every live state tensor with one gather,
and state no later stage reads is dropped, so later stages run on the survivors only.

The executor knows no policy and no HTTP: it is given per-image thresholds and exit caps and returns
plain data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.runtimes import StageRuntime


@dataclass(frozen=True)
class ImageResult:
    exit: int
    class_index: int
    confidence: float
    top_k: tuple[tuple[int, float], ...]  # (class index, probability), most probable first
    flops: int  # cumulative FLOPs of the answering exit
    budget_limited: bool  # the FLOPs cap forced this exit before the image was confident
    seconds: float  # from the start of the batch to this image's exit


@dataclass(frozen=True)
class BatchResult:
    images: tuple[ImageResult, ...]
    stage_seconds: tuple[float, ...]  # time spent in each stage (0 for stages not run)
    stage_batch_sizes: tuple[int, ...]  # images each stage ran on (0 for stages not run)

    @property
    def seconds(self) -> float:
        return sum(self.stage_seconds)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class CascadeExecutor:
    """Runs batches through one bundle's stages with per-image thresholds and exit caps."""

    def __init__(self, runtime: StageRuntime):
        self.runtime = runtime
        manifest = runtime.manifest
        self.stages = manifest.stages
        self.num_exits = len(manifest.exits)
        self.cumulative_flops = manifest.cumulative_flops
        # Tensors that may be dropped after each stage: those whose last reader it is.
        self._drop_after: list[list[str]] = [[] for _ in self.stages]
        self._drop_after[0].append("image")
        for tensor in manifest.tensors:
            if tensor.last_reader_stage is not None and tensor.name != "image":
                self._drop_after[tensor.last_reader_stage].append(tensor.name)

    def run(
        self, images: Tensor, thresholds: np.ndarray, max_exit: np.ndarray, top_k: int = 1
    ) -> BatchResult:
        """Classify `images` [N, C, H, W] float32.

        `thresholds` [N, exits]: per-image confidence threshold at each exit. `max_exit` [N]: the last
        exit each image may reach (its FLOPs cap). Results come back in input order.
        """
        n = images.shape[0]
        if thresholds.shape != (n, self.num_exits) or max_exit.shape != (n,):
            raise ValueError(
                f"expected thresholds [{n}, {self.num_exits}] and max_exit [{n}], "
                f"got {thresholds.shape} and {max_exit.shape}"
            )
        last = self.num_exits - 1
        caps = np.minimum(max_exit, last)
        results: list[ImageResult | None] = [None] * n
        stage_seconds = [0.0] * self.num_exits
        stage_sizes = [0] * self.num_exits
        env: dict[str, Tensor] = {"image": self.runtime.to_device(images)}
        alive = np.arange(n)
        started = time.perf_counter()
        for k, stage in enumerate(self.stages):
            if alive.size == 0:
                break
            stage_start = time.perf_counter()
            outputs = self.runtime.run(k, {name: env[name] for name in stage.inputs})
            logits = outputs.pop(stage.outputs[0]).float().cpu().numpy()
            env.update(outputs)
            for name in self._drop_after[k]:
                env.pop(name, None)
            probs = softmax(logits)
            predicted = probs.argmax(axis=1)
            confidence = probs[np.arange(alive.size), predicted]
            row_thresholds = thresholds[alive, k]
            confident = (confidence >= row_thresholds) & (row_thresholds < 1.0)
            forced = caps[alive] <= k
            leave = confident | forced
            now = time.perf_counter()
            if leave.any():
                ordering = np.argsort(-probs[leave], axis=1)[:, :top_k]
                for row, original in enumerate(np.nonzero(leave)[0]):
                    index = int(alive[original])
                    classes = ordering[row]
                    results[index] = ImageResult(
                        exit=k,
                        class_index=int(predicted[original]),
                        confidence=float(confidence[original]),
                        top_k=tuple((int(c), float(probs[original, c])) for c in classes),
                        flops=self.cumulative_flops[k],
                        budget_limited=bool(forced[original] and not confident[original] and k < last),
                        seconds=now - started,
                    )
                keep = ~leave
                if keep.any():
                    rows = torch.from_numpy(np.nonzero(keep)[0]).to(self.runtime.device)
                    env = {name: tensor.index_select(0, rows) for name, tensor in env.items()}
                alive = alive[keep]
            stage_seconds[k] = now - stage_start
            stage_sizes[k] = int(leave.size)
        if any(r is None for r in results):
            raise AssertionError("cascade finished with images that never exited")
        return BatchResult(
            images=tuple(r for r in results if r is not None),
            stage_seconds=tuple(stage_seconds),
            stage_batch_sizes=tuple(stage_sizes),
        )
