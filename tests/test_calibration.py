"""Threshold search: the official geometric-prior algorithm on a hand-worked example, the optimiser's
guarantees, the default-point rule, and the protocol outputs the bundle stores."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ranet_serve.cascade.calibration import (
    NEVER,
    calibrate,
    choose_default_point,
    evaluate_thresholds,
    exit_indices,
    geometric_prior,
    geometric_thresholds,
    mcnemar_z,
    optimize_thresholds,
)
from ranet_serve.export.manifest import Calibration, OperatingPoint
from ranet_serve.train.protocols import run_protocols, write_results

NUM_CLASSES = 10


def probs_from(confidences: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[exits, N, classes] probabilities whose max is `confidences` at class `predicted`."""
    exits, n = confidences.shape
    probs = np.empty((exits, n, NUM_CLASSES))
    probs[:] = ((1.0 - confidences) / (NUM_CLASSES - 1))[..., None]
    for k in range(exits):
        probs[k, np.arange(n), predicted[k]] = confidences[k]
    return probs


# Hand-worked example (3 exits, 10 samples, target distribution 30% / 30% / 40%):
# exit 0: floor(10 * 0.3) = 3 samples leave -> the 3rd most confident is sample 2 (0.70): T0 = 0.70,
#         samples 0, 1, 2 are marked.
# exit 1: walking the exit-1 order 0 (.99, marked), 1 (.98, marked), 2 (.97, marked), 4 (.90), 5 (.85),
#         7 (.80): the 3rd unmarked sample is 7, so T1 = 0.80.
# exit 2: takes everyone left (threshold 0).
# Applying: samples 0-2 leave at exit 0; 4, 5, 7 at exit 1; 3, 6, 8, 9 at exit 2 -> counts 3 / 3 / 4,
# expected FLOPs (3*10 + 3*20 + 4*30) / 10 = 21. Sample 3's exit-2 prediction is wrong: accuracy 90%.
HAND_CONF = np.array(
    [
        [0.90, 0.80, 0.70, 0.60, 0.50, 0.45, 0.40, 0.35, 0.30, 0.25],
        [0.99, 0.98, 0.97, 0.30, 0.90, 0.85, 0.20, 0.80, 0.15, 0.50],
        [0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95],
    ]
)
HAND_PRED = np.zeros((3, 10), dtype=int)
HAND_PRED[2, 3] = 1
HAND_LABELS = np.zeros(10, dtype=int)
HAND_FLOPS = [10, 20, 30]


def test_geometric_search_matches_hand_worked_example() -> None:
    probs = probs_from(HAND_CONF, HAND_PRED)
    thresholds = geometric_thresholds(probs, np.array([0.3, 0.3, 0.4]))
    np.testing.assert_allclose(thresholds, [0.70, 0.80, 0.0])
    assert exit_indices(probs.max(axis=2), thresholds).tolist() == [0, 0, 0, 2, 1, 1, 2, 1, 2, 2]
    result = evaluate_thresholds(probs, HAND_LABELS, thresholds, HAND_FLOPS)
    assert result.exit_counts == (3, 3, 4)
    assert result.expected_flops == pytest.approx(21.0)
    assert result.accuracy == pytest.approx(90.0)


def test_geometric_prior_is_normalised_and_geometric() -> None:
    prior = geometric_prior(0.5, 4)
    assert prior.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(prior[1:] / prior[:-1], 0.5)
    np.testing.assert_allclose(geometric_prior(1.0, 5), 0.2)


def test_zero_share_leaves_exit_unused() -> None:
    probs = probs_from(HAND_CONF, HAND_PRED)
    thresholds = geometric_thresholds(probs, np.array([0.05, 0.05, 0.9]))  # floor(10 * 0.05) = 0
    assert thresholds[0] == NEVER and thresholds[1] == NEVER
    assert set(exit_indices(probs.max(axis=2), thresholds).tolist()) == {2}


def test_threshold_one_means_never_even_for_a_confidence_of_exactly_one() -> None:
    confidence = np.array([[1.0, 0.5], [0.2, 0.2]])
    assert exit_indices(confidence, np.array([1.0, 0.0])).tolist() == [1, 1]
    assert exit_indices(confidence, np.array([0.0, 0.0])).tolist() == [0, 0]


def test_searched_threshold_at_confidence_one_still_lets_those_samples_leave() -> None:
    conf = np.array([[1.0, 1.0, 0.6, 0.5], [0.9, 0.9, 0.9, 0.9]])
    probs = probs_from(conf, np.zeros((2, 4), dtype=int))
    thresholds = geometric_thresholds(probs, np.array([0.5, 0.5]))
    assert thresholds[0] < 1.0
    assert exit_indices(probs.max(axis=2), thresholds).tolist() == [0, 0, 1, 1]


def synthetic_probs(seed: int, n: int = 2000, exits: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Later exits more accurate and more confident, as in a trained RANet."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    difficulty = rng.normal(0, 1.5, n)
    probs = np.empty((exits, n, NUM_CLASSES))
    for k in range(exits):
        logits = rng.normal(0, 1, (n, NUM_CLASSES))
        logits[np.arange(n), labels] += 1.0 + 0.6 * k - difficulty
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[k] = e / e.sum(axis=1, keepdims=True)
    return probs, labels


FLOPS5 = [5_000_000, 11_000_000, 16_000_000, 19_000_000, 22_000_000]


def test_optimized_search_is_never_below_geometric_on_validation_and_respects_budget() -> None:
    probs, labels = synthetic_probs(0)
    geometric, optimized = calibrate(probs, labels, None, None, FLOPS5)
    assert len(geometric) == len(optimized) == 39
    gains = []
    for g, o in zip(geometric, optimized, strict=True):
        assert o.expected_flops <= g.expected_flops + 1e-6
        assert o.val_accuracy >= g.val_accuracy
        gains.append(o.val_accuracy - g.val_accuracy)
    assert max(gains) >= 0.2  # the optimiser does find real gains somewhere on this data


def test_optimizer_keeps_the_reference_unless_the_gain_is_significant() -> None:
    probs, labels = synthetic_probs(1, n=500)
    reference = geometric_thresholds(probs, geometric_prior(1.0, 5))
    budget = evaluate_thresholds(probs, labels, reference, FLOPS5).expected_flops
    kept = optimize_thresholds(probs, labels, FLOPS5, budget, reference=reference, min_z=100.0)
    np.testing.assert_array_equal(kept, reference)
    tuned = optimize_thresholds(probs, labels, FLOPS5, budget, reference=reference, min_z=0.0)
    assert evaluate_thresholds(probs, labels, tuned, FLOPS5).expected_flops <= budget


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_check_refuses_gains_found_in_pure_noise(seed: int) -> None:
    # Confidences and correctness are independent noise: any in-sample gain is overfitting.
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(NUM_CLASSES, 0.5), (5, 600))
    labels = rng.integers(0, NUM_CLASSES, 600)
    reference = geometric_thresholds(probs, geometric_prior(1.0, 5))
    budget = evaluate_thresholds(probs, labels, reference, FLOPS5).expected_flops
    overfit = optimize_thresholds(
        probs, labels, FLOPS5, budget, reference=reference, min_z=0.0, cross_check=False
    )
    accuracy = evaluate_thresholds(probs, labels, reference, FLOPS5).accuracy
    assert evaluate_thresholds(probs, labels, overfit, FLOPS5).accuracy > accuracy + 1.0  # in-sample "gain"
    checked = optimize_thresholds(probs, labels, FLOPS5, budget, reference=reference, min_z=0.0)
    np.testing.assert_array_equal(checked, reference)


def test_mcnemar_z_counts_only_the_images_the_two_points_disagree_on() -> None:
    # Two exits; the reference sends everyone to exit 1, the candidate lets samples 0-5 leave at exit 0.
    # Exit 0 is right on samples 0-4 and wrong on 5; exit 1 is right on 0, 5-9 and wrong on 1-4.
    # Disagreements: candidate-only right 1, 2, 3, 4 (b = 4); reference-only right 5 (c = 1).
    confidence = np.array([[0.9] * 6 + [0.1] * 4, [0.5] * 10])
    correct = np.zeros((2, 10), dtype=bool)
    correct[0, :5] = True
    correct[1, [0, 5, 6, 7, 8, 9]] = True
    candidate, reference = np.array([0.8, 0.0]), np.array([NEVER, 0.0])
    assert mcnemar_z(confidence, correct, candidate, reference) == pytest.approx(3 / np.sqrt(5))
    assert mcnemar_z(confidence, correct, reference, candidate) == 0.0  # no gain: no evidence


def point(name: str, flops: float, acc: float) -> OperatingPoint:
    return OperatingPoint(
        name=name,
        method="geometric",
        thresholds=(0.5, 0.0),
        expected_flops=flops,
        val_accuracy=acc,
        exit_distribution=(0.5, 0.5),
    )


def test_default_point_is_cheapest_within_half_a_point_of_the_last_exit() -> None:
    points = [point("a", 10, 91.0), point("b", 12, 92.6), point("c", 15, 93.0), point("d", 20, 93.1)]
    assert choose_default_point(points, last_exit_val_accuracy=93.0).name == "b"
    assert (
        choose_default_point(points, last_exit_val_accuracy=99.0).name == "d"
    )  # none eligible: most accurate


def test_protocols_produce_a_calibration_the_manifest_schema_accepts(tmp_path) -> None:
    val, val_labels = synthetic_probs(2, n=800)
    test, test_labels = synthetic_probs(3, n=800)
    results = run_protocols(val, val_labels, test, test_labels, FLOPS5, split="synthetic")
    calibration = Calibration.model_validate(results.calibration().model_dump())
    names = [p.name for p in calibration.points]
    assert len(names) == len(set(names)) == 79
    assert calibration.point(calibration.default_point).val_accuracy >= results.val_accuracy[-1] - 0.5
    full = calibration.point("full-depth")
    assert full.expected_flops == FLOPS5[-1] and full.val_accuracy == pytest.approx(results.val_accuracy[-1])
    paths = write_results(results, tmp_path, "synthetic")
    assert [p.name for p in paths] == ["evaluation.json", "accuracy_vs_flops.png", "exit_distribution.png"]
    with Image.open(paths[1]) as image:
        assert image.size == (770, 495)  # 7 x 4.5 inches at 110 dpi
