"""Threshold search on held-out data: the paper's geometric-prior search and a direct optimiser.

Inputs everywhere are softmax probabilities `probs` [exits, N, classes] and labels [N]; a sample's
confidence at an exit is its maximum probability. The serving rule (DESIGN.md) is: an image leaves at
the first exit whose confidence is >= that exit's threshold, where a threshold >= 1.0 means "never
leave here", and the last exit takes everyone left.

* `geometric_thresholds` is the official budgeted-batch search (spec section 10, from MSDNet): a
  target exit distribution P_k proportional to q^k, and for each exit in turn the threshold that lets
  exactly floor(N * P_k) not-yet-exited samples leave.
* `optimize_thresholds` maximises validation accuracy directly under an average-FLOPs budget by
  coordinate ascent over per-exit candidate thresholds, starting from the best geometric point that
  fits the budget, so it can never end below the geometric search on the data it is fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranet_serve.export.manifest import OperatingPoint

NEVER = 1.0
# A searched threshold equal to 1.0 (a softmax that rounds to exactly 1 in float32) must still let
# those samples leave, so it is stored just below 1.0; 1.0 itself is reserved for "never".
_ALMOST_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # percent
    expected_flops: float  # mean cumulative FLOPs of the answering exits
    exit_counts: tuple[int, ...]

    @property
    def exit_distribution(self) -> tuple[float, ...]:
        total = sum(self.exit_counts)
        return tuple(c / total for c in self.exit_counts)


def geometric_prior(q: float, num_exits: int) -> np.ndarray:
    """Target exit distribution P_k proportional to q^k, k = 1..K (MSDNet's budget sweep)."""
    weights = q ** np.arange(1, num_exits + 1, dtype=np.float64)
    return weights / weights.sum()


def exit_indices(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """First exit each sample leaves at. `confidence` [exits, N], `thresholds` [exits]."""
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    leaves = (confidence >= t) & (t < NEVER)
    leaves[-1] = True
    return leaves.argmax(axis=0)


def evaluate_thresholds(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, cumulative_flops: list[int] | np.ndarray
) -> Evaluation:
    """Accuracy, expected FLOPs per image and exit counts of `thresholds` on (probs, labels)."""
    confidence = probs.max(axis=2)
    correct = probs.argmax(axis=2) == labels[None, :]
    return _evaluate(confidence, correct, np.asarray(cumulative_flops, dtype=np.float64), thresholds)


def _evaluate(
    confidence: np.ndarray, correct: np.ndarray, flops: np.ndarray, thresholds: np.ndarray
) -> Evaluation:
    exits = exit_indices(confidence, thresholds)
    n = exits.size
    counts = np.bincount(exits, minlength=confidence.shape[0])
    return Evaluation(
        accuracy=float(100.0 * correct[exits, np.arange(n)].mean()),
        expected_flops=float(flops[exits].mean()),
        exit_counts=tuple(int(c) for c in counts),
    )


def geometric_thresholds(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The official threshold search for one target exit distribution `prior` (spec section 10)."""
    confidence = probs.max(axis=2)
    num_exits, n = confidence.shape
    thresholds = np.full(num_exits, NEVER, dtype=np.float64)
    exited = np.zeros(n, dtype=bool)
    for k in range(num_exits - 1):
        wanted = int(np.floor(n * prior[k]))
        if wanted == 0:
            continue
        order = np.argsort(-confidence[k], kind="stable")
        still_here = np.cumsum(~exited[order])
        position = int(np.searchsorted(still_here, wanted))  # first index where the count reaches `wanted`
        if position >= n:
            continue  # not enough samples left: nobody exits here
        threshold = float(confidence[k, order[position]])
        thresholds[k] = min(threshold, _ALMOST_ONE)
        exited |= confidence[k] >= thresholds[k]
    thresholds[-1] = 0.0
    return thresholds


def budget_sweep_qs(num_points: int = 39) -> list[float]:
    """The official sweep: q = p / 20 for p = 1..39."""
    return [p / 20 for p in range(1, num_points + 1)]


def optimize_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    cumulative_flops: list[int] | np.ndarray,
    flops_budget: float,
    *,
    candidates: int = 48,
    max_passes: int = 4,
    penalties: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8),
    geometric_points: list[np.ndarray] | None = None,
    reference: np.ndarray | None = None,
    min_z: float = 2.0,
    cross_check: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Thresholds maximising accuracy on (probs, labels) with expected FLOPs <= `flops_budget`.

    Coordinate ascent over per-exit candidate thresholds (confidence quantiles of that exit plus
    "never"). A purely constrained ascent gets stuck where every single move that gains accuracy
    breaks the budget, so it is complemented by ascents on accuracy minus a FLOPs penalty (several
    penalty weights), which move freely; the best feasible point seen anywhere wins. Every ascent
    starts at the most accurate feasible geometric point, so the result is never worse than the
    geometric search at the same budget on this data. `geometric_points` (the sweep's thresholds)
    can be passed in when the caller already computed them.

    Held-out accuracy is a noisy target: a search over many thresholds finds gains of a few images
    that do not carry over to new data. So the result replaces the `reference` point (by default the
    best feasible geometric one) only when its gain is significant in a paired test on the same
    images (McNemar: z = (b - c) / sqrt(b + c) >= `min_z`, where b images are right only under the
    result and c only under the reference) and, with `cross_check`, when the search also gains on
    unseen data: fitted on either half of the data (split by `seed`), its thresholds must beat the
    reference on the other half. Otherwise the reference is returned unchanged and the two curves
    coincide there.
    """
    confidence = probs.max(axis=2)
    correct = probs.argmax(axis=2) == labels[None, :]
    flops = np.asarray(cumulative_flops, dtype=np.float64)
    num_exits = confidence.shape[0]
    scale = 100.0 / flops[-1]  # FLOPs in percent of the last exit, comparable to accuracy in percent

    start = np.zeros(num_exits)  # everyone at exit 0: the cheapest possible point
    best = _evaluate(confidence, correct, flops, start)
    if geometric_points is None:
        geometric_points = [
            geometric_thresholds(probs, geometric_prior(q, num_exits)) for q in budget_sweep_qs()
        ]
    for candidate in geometric_points:
        result = _evaluate(confidence, correct, flops, candidate)
        if result.expected_flops <= flops_budget and _better(result, best):
            start, best = candidate, result
    grids = [
        np.unique(np.concatenate([np.quantile(confidence[k], np.linspace(0.0, 1.0, candidates)), [NEVER]]))
        for k in range(num_exits - 1)
    ]
    if reference is not None:
        reference_eval = _evaluate(confidence, correct, flops, reference)
        if reference_eval.expected_flops > flops_budget:
            raise ValueError("the reference thresholds exceed the FLOPs budget")
        if not _better(best, reference_eval):
            start, best = reference.copy(), reference_eval
    else:
        reference, reference_eval = start.copy(), best
    best_thresholds = start.copy()
    for penalty in (None, *penalties):

        def score(e: Evaluation, penalty: float | None = penalty) -> float:
            return e.accuracy if penalty is None else e.accuracy - penalty * scale * e.expected_flops

        thresholds = start.copy()
        current = _evaluate(confidence, correct, flops, thresholds)
        for _ in range(max_passes):
            improved = False
            for k in range(num_exits - 1):
                for value in grids[k]:
                    if value == thresholds[k]:
                        continue
                    trial = thresholds.copy()
                    trial[k] = value
                    result = _evaluate(confidence, correct, flops, trial)
                    feasible = result.expected_flops <= flops_budget
                    if feasible and _better(result, best):
                        best, best_thresholds = result, trial
                    if (penalty is not None or feasible) and score(result) > score(current):
                        thresholds, current, improved = trial, result, True
            if not improved:
                break
    kept = np.asarray(reference, dtype=np.float64).copy()
    if mcnemar_z(confidence, correct, best_thresholds, reference) < min_z:
        return kept
    if cross_check and not _gains_out_of_fold(probs, labels, flops, reference, geometric_points, seed):
        return kept
    return best_thresholds


def _gains_out_of_fold(
    probs: np.ndarray,
    labels: np.ndarray,
    flops: np.ndarray,
    reference: np.ndarray,
    geometric_points: list[np.ndarray],
    seed: int,
) -> bool:
    """2-fold check: thresholds searched on one half beat `reference` on the other half, both ways."""
    order = np.random.default_rng(seed).permutation(labels.size)
    halves = (order[: labels.size // 2], order[labels.size // 2 :])
    for fit, held in (halves, halves[::-1]):
        budget = evaluate_thresholds(probs[:, fit], labels[fit], reference, flops).expected_flops
        fitted = optimize_thresholds(
            probs[:, fit],
            labels[fit],
            flops,
            budget,
            geometric_points=geometric_points,
            reference=reference,
            min_z=0.0,
            cross_check=False,
        )
        gain = (
            evaluate_thresholds(probs[:, held], labels[held], fitted, flops).accuracy
            - evaluate_thresholds(probs[:, held], labels[held], reference, flops).accuracy
        )
        if gain <= 0.0:
            return False
    return True


def mcnemar_z(
    confidence: np.ndarray, correct: np.ndarray, thresholds: np.ndarray, reference: np.ndarray
) -> float:
    """Paired evidence that `thresholds` classify more images right than `reference` (0 when not)."""
    n = confidence.shape[1]
    rows = np.arange(n)
    mine = correct[exit_indices(confidence, thresholds), rows]
    theirs = correct[exit_indices(confidence, reference), rows]
    only_mine = int(np.sum(mine & ~theirs))
    only_theirs = int(np.sum(theirs & ~mine))
    if only_mine <= only_theirs:
        return 0.0
    return float((only_mine - only_theirs) / np.sqrt(only_mine + only_theirs))


def _better(a: Evaluation, b: Evaluation) -> bool:
    return a.accuracy > b.accuracy or (a.accuracy == b.accuracy and a.expected_flops < b.expected_flops)


def calibrate(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    test_probs: np.ndarray | None,
    test_labels: np.ndarray | None,
    cumulative_flops: list[int],
) -> tuple[list[OperatingPoint], list[OperatingPoint]]:
    """Both curves: the 39 geometric points and, at each of their validation budgets, an optimised one.

    Thresholds are fitted on validation data only; test figures are reported beside them.
    """
    num_exits = val_probs.shape[0]
    geometric: list[OperatingPoint] = []
    optimized: list[OperatingPoint] = []
    sweep = [geometric_thresholds(val_probs, geometric_prior(q, num_exits)) for q in budget_sweep_qs()]
    for i, thresholds in enumerate(sweep):
        geometric.append(
            _point(
                f"geometric-{i + 1:02d}",
                "geometric",
                thresholds,
                val_probs,
                val_labels,
                test_probs,
                test_labels,
                cumulative_flops,
            )
        )
        budget = geometric[-1].expected_flops
        tuned = optimize_thresholds(
            val_probs, val_labels, cumulative_flops, budget, geometric_points=sweep, reference=thresholds
        )
        optimized.append(
            _point(
                f"optimized-{i + 1:02d}",
                "optimized",
                tuned,
                val_probs,
                val_labels,
                test_probs,
                test_labels,
                cumulative_flops,
            )
        )
    return geometric, optimized


def full_depth_point(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    test_probs: np.ndarray | None,
    test_labels: np.ndarray | None,
    cumulative_flops: list[int],
) -> OperatingPoint:
    """Every image to the last exit: the accuracy reference and the baseline of FLOPs saved."""
    thresholds = np.full(val_probs.shape[0], NEVER)
    return _point(
        "full-depth",
        "full-depth",
        thresholds,
        val_probs,
        val_labels,
        test_probs,
        test_labels,
        cumulative_flops,
    )


def _point(
    name: str,
    method: str,
    thresholds: np.ndarray,
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    test_probs: np.ndarray | None,
    test_labels: np.ndarray | None,
    cumulative_flops: list[int],
) -> OperatingPoint:
    val = evaluate_thresholds(val_probs, val_labels, thresholds, cumulative_flops)
    test = None
    if test_probs is not None and test_labels is not None:
        test = evaluate_thresholds(test_probs, test_labels, thresholds, cumulative_flops)
    return OperatingPoint(
        name=name,
        method=method,
        thresholds=tuple(float(t) for t in thresholds),
        expected_flops=val.expected_flops,
        val_accuracy=val.accuracy,
        test_accuracy=None if test is None else test.accuracy,
        test_expected_flops=None if test is None else test.expected_flops,
        exit_distribution=val.exit_distribution,
    )


def choose_default_point(
    points: list[OperatingPoint], last_exit_val_accuracy: float, tolerance_pp: float = 0.5
) -> OperatingPoint:
    """The cheapest point whose validation accuracy is within `tolerance_pp` of the last exit's."""
    eligible = [p for p in points if p.val_accuracy >= last_exit_val_accuracy - tolerance_pp]
    if not eligible:
        return max(points, key=lambda p: (p.val_accuracy, -p.expected_flops))
    return min(eligible, key=lambda p: (p.expected_flops, -p.val_accuracy))
