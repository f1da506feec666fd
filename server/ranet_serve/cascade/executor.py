"""The cascade executor: run a batch stage by stage and let each image leave at its own exit.

After each stage every live image gets a softmax confidence; an image leaves when its confidence
reaches its threshold for that exit (a threshold >= 1.0 means "never leave here") or when the exit is
the last one its FLOPs cap allows. Leavers are removed from every live state tensor with one gather,
and state no later stage reads is dropped, so later stages run on the survivors only.

The executor knows no policy and no HTTP: it is given per-image thresholds and exit caps and returns
plain data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
from torch import Tensor

from ranet_serve.cascade.arrays import StageArray, StageArrays
from ranet_serve.cascade.results import BatchResult, ImageResult
from ranet_serve.cascade.runtimes import StageRuntime


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


@dataclass
class Cohort:
    """Images part-way through the cascade: the state they carry and whom they belong to.

    Row i of every array here and of every state array in `env` is the same image. `tags` are the caller's
    image identifiers (the row in the batch for `run`; request slots for the re-batching batcher), so
    cohorts from different batches can be merged and split again without losing track of anyone.
    """

    stage: int  # the next stage to run
    env: dict[str, StageArray]  # in the runtime's array type
    tags: np.ndarray  # [n] int64
    thresholds: np.ndarray  # [n, exits]
    caps: np.ndarray  # [n] last exit each image may reach
    started: np.ndarray  # [n] perf_counter() when each image's first stage began (nan: not yet)
    top_k: int
    # [n] rows whose every exit is reported (`StepResult.passed`), not only the one they leave at:
    # streamed requests and those answered with their deepest exit when their deadline passes.
    watched: np.ndarray
    # [n] time.monotonic() deadline of each row's request (inf: none), for earliest-deadline-first.
    deadlines: np.ndarray

    @property
    def size(self) -> int:
        return int(self.tags.size)

    def rows(self, index: np.ndarray, arrays: StageArrays) -> Cohort:
        """The same cohort restricted to rows `index`: one gather per state array."""
        return replace(
            self,
            env={name: arrays.gather(array, index) for name, array in self.env.items()},
            tags=self.tags[index],
            thresholds=self.thresholds[index],
            caps=self.caps[index],
            started=self.started[index],
            watched=self.watched[index],
            deadlines=self.deadlines[index],
        )

    @property
    def earliest_deadline(self) -> float:
        return float(self.deadlines.min()) if self.deadlines.size else math.inf


@dataclass(frozen=True)
class StepResult:
    """What one step did to one cohort: one stage, or every stage at once on the full-depth graph."""

    finished: tuple[tuple[int, ImageResult], ...]  # (tag, result) of every image that left here
    passed: tuple[tuple[int, ImageResult], ...]  # (tag, result) of watched images that go on
    survivors: Cohort | None  # the images that go on to the next stage
    stage: int  # the last stage run
    batch_size: int
    seconds: float
    # (stage, seconds) of every stage the step ran: one pair, or, for the full-depth graph, every stage
    # with the step's time shared in proportion to each stage's FLOPs (one call has no per-stage time).
    stage_seconds: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.stage_seconds:
            object.__setattr__(self, "stage_seconds", ((self.stage, self.seconds),))


def merge_cohorts(cohorts: list[Cohort], arrays: StageArrays) -> Cohort:
    """One cohort from several waiting at the same stage (their state arrays are concatenated)."""
    if len(cohorts) == 1:
        return cohorts[0]
    stage = cohorts[0].stage
    if any(c.stage != stage for c in cohorts):
        raise ValueError("only cohorts waiting at the same stage can be merged")
    return Cohort(
        stage=stage,
        env={name: arrays.concat([c.env[name] for c in cohorts]) for name in cohorts[0].env},
        tags=np.concatenate([c.tags for c in cohorts]),
        thresholds=np.concatenate([c.thresholds for c in cohorts]),
        caps=np.concatenate([c.caps for c in cohorts]),
        started=np.concatenate([c.started for c in cohorts]),
        top_k=max(c.top_k for c in cohorts),
        watched=np.concatenate([c.watched for c in cohorts]),
        deadlines=np.concatenate([c.deadlines for c in cohorts]),
    )


class CascadeExecutor:
    """Runs batches through one bundle's stages with per-image thresholds and exit caps.

    `run` takes a batch from the first stage to the end. `start` and `step` expose the same cascade
    one stage at a time, so a scheduler can park survivors and merge them with other batches'
    survivors before their next stage (see `Batcher`).
    """

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
        cohort: Cohort | None = self.start(images, thresholds, max_exit, np.arange(n), top_k)
        results: list[ImageResult | None] = [None] * n
        stage_seconds = [0.0] * self.num_exits
        stage_sizes = [0] * self.num_exits
        while cohort is not None:
            step = self.step(cohort)
            for tag, result in step.finished:
                results[tag] = result
            for stage, seconds in step.stage_seconds:
                stage_seconds[stage] = seconds
                stage_sizes[stage] = step.batch_size
            cohort = step.survivors
        if any(r is None for r in results):
            raise AssertionError("cascade finished with images that never exited")
        return BatchResult(
            images=tuple(r for r in results if r is not None),
            stage_seconds=tuple(stage_seconds),
            stage_batch_sizes=tuple(stage_sizes),
        )

    def start(
        self,
        images: Tensor,
        thresholds: np.ndarray,
        max_exit: np.ndarray,
        tags: np.ndarray,
        top_k: int = 1,
        watched: np.ndarray | None = None,
        deadlines: np.ndarray | None = None,
    ) -> Cohort:
        """A cohort at stage 0 (checks the shapes; hands the images over in the runtime's array type).

        `watched` [N] bool: rows whose every exit is reported; `deadlines` [N]: their requests'
        deadlines (inf: none). Both default to "no".
        """
        n = images.shape[0]
        if thresholds.shape != (n, self.num_exits) or max_exit.shape != (n,) or tags.shape != (n,):
            raise ValueError(
                f"expected thresholds [{n}, {self.num_exits}], max_exit [{n}] and tags [{n}], "
                f"got {thresholds.shape}, {max_exit.shape} and {tags.shape}"
            )
        if (watched is not None and watched.shape != (n,)) or (
            deadlines is not None and deadlines.shape != (n,)
        ):
            raise ValueError(f"expected watched and deadlines of shape [{n}]")
        return Cohort(
            stage=0,
            env={"image": self.runtime.arrays.from_images(images)},
            tags=np.asarray(tags, dtype=np.int64),
            thresholds=thresholds,
            caps=np.minimum(max_exit, self.num_exits - 1),
            started=np.full(n, np.nan),
            top_k=top_k,
            watched=np.zeros(n, dtype=bool) if watched is None else np.asarray(watched, dtype=bool),
            deadlines=np.full(n, math.inf) if deadlines is None else np.asarray(deadlines, dtype=np.float64),
        )

    def runs_whole(self, cohort: Cohort) -> bool:
        """Whether `cohort` takes the full-depth graph: the runtime has one, the cohort is at stage 0,
        no image may leave before the last exit (every threshold before it >= 1, every cap at it) and
        none is watched (a watched image reports every exit it passes)."""
        last = self.num_exits - 1
        return (
            self.runtime.has_full_graph
            and cohort.stage == 0
            and bool((cohort.caps >= last).all())
            and bool((cohort.thresholds[:, :last] >= 1.0).all())
            and not cohort.watched.any()
        )

    def step(self, cohort: Cohort) -> StepResult:
        """Run `cohort`'s next stage; the images that may leave there leave.

        A cohort that `runs_whole` runs every stage at once on the runtime's full-depth graph instead:
        the same answers (the last exit's), without the stage boundaries.
        """
        k = cohort.stage
        stage = self.stages[k]
        last = self.num_exits - 1
        stage_start = time.perf_counter()
        started = np.where(np.isnan(cohort.started), stage_start, cohort.started)
        env = dict(cohort.env)
        whole = self.runs_whole(cohort)
        if whole:
            k = last
            logits = self.runtime.arrays.to_host(self.runtime.run_full(env[stage.inputs[0]]))
            env = {}
        else:
            outputs = self.runtime.run(k, {name: env[name] for name in stage.inputs})
            logits = self.runtime.arrays.to_host(outputs.pop(stage.outputs[0]))
            env.update(outputs)
            for name in self._drop_after[k]:
                env.pop(name, None)
        probs = softmax(logits)
        predicted = probs.argmax(axis=1)
        rows = np.arange(cohort.size)
        confidence = probs[rows, predicted]
        row_thresholds = cohort.thresholds[:, k]
        confident = (confidence >= row_thresholds) & (row_thresholds < 1.0)
        forced = cohort.caps <= k
        leave = confident | forced
        now = time.perf_counter()
        keep = ~leave
        results = _ExitResults(
            k,
            probs,
            predicted,
            confidence,
            forced & ~confident & (k < last),
            cohort,
            self.cumulative_flops[k],
            now,
            started,
        )
        finished = results.of(leave)
        passed = results.of(keep & cohort.watched)
        survivors: Cohort | None = None
        if keep.any() and k < last:
            survivors = replace(cohort, stage=k + 1, env=env, started=started)
            if leave.any():
                survivors = survivors.rows(np.nonzero(keep)[0], self.runtime.arrays)
        elif keep.any():
            raise AssertionError("images left the last stage without an exit")
        seconds = now - stage_start
        stage_seconds = self._shared_by_flops(seconds) if whole else ((k, seconds),)
        return StepResult(finished, passed, survivors, k, cohort.size, seconds, stage_seconds)

    def _shared_by_flops(self, seconds: float) -> tuple[tuple[int, float], ...]:
        """`seconds` of a full-depth run shared between the stages in proportion to their FLOPs."""
        total = self.cumulative_flops[-1]
        previous = 0
        shares = []
        for stage, flops in enumerate(self.cumulative_flops):
            shares.append((stage, seconds * (flops - previous) / total))
            previous = flops
        return tuple(shares)


@dataclass(frozen=True)
class _ExitResults:
    """The `ImageResult`s of one stage run's rows: those that leave, and the watched ones that go on."""

    exit: int
    probs: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    budget_limited: np.ndarray  # [n] bool: the FLOPs cap, not confidence, ends the row here
    cohort: Cohort
    flops: int
    now: float
    started: np.ndarray

    def of(self, rows: np.ndarray) -> tuple[tuple[int, ImageResult], ...]:
        """(tag, result) of every row in the boolean mask `rows`, in row order."""
        if not rows.any():
            return ()
        indices = np.nonzero(rows)[0]
        ordering = np.argsort(-self.probs[indices], axis=1)[:, : self.cohort.top_k]
        return tuple(
            (
                int(self.cohort.tags[original]),
                ImageResult(
                    exit=self.exit,
                    class_index=int(self.predicted[original]),
                    confidence=float(self.confidence[original]),
                    top_k=tuple((int(c), float(self.probs[original, c])) for c in ordering[row]),
                    flops=self.flops,
                    budget_limited=bool(self.budget_limited[original]),
                    seconds=self.now - float(self.started[original]),
                ),
            )
            for row, original in enumerate(indices)
        )
