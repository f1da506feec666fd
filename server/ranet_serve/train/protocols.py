"""The paper's two evaluation protocols, plus the calibration table built from them.

Anytime prediction: every exit's test accuracy against its cumulative FLOPs. Budgeted batch
classification: thresholds fitted on the validation split (never the test split, and never on
augmented images: both official-code bugs), evaluated on the test split, for the geometric-prior
search of the paper and for this project's direct optimiser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranet_serve.cascade.calibration import calibrate, choose_default_point, full_depth_point
from ranet_serve.export.manifest import Calibration, OperatingPoint
from ranet_serve.train.evaluate import accuracy_per_exit
from ranet_serve.train.plots import plot_accuracy_vs_flops, plot_exit_distribution


@dataclass(frozen=True)
class ProtocolResults:
    cumulative_flops: list[int]
    val_accuracy: list[float]
    test_accuracy: list[float]
    geometric: list[OperatingPoint]
    optimized: list[OperatingPoint]
    full_depth: OperatingPoint
    default: OperatingPoint
    split: str

    def calibration(self) -> Calibration:
        return Calibration(
            points=(*self.geometric, *self.optimized, self.full_depth),
            default_point=self.default.name,
            split=self.split,
            last_exit_val_accuracy=self.val_accuracy[-1],
        )

    def to_json(self) -> dict[str, object]:
        return {
            "split": self.split,
            "anytime": [
                {"exit": k, "cumulative_flops": f, "val_accuracy": v, "test_accuracy": t}
                for k, (f, v, t) in enumerate(
                    zip(self.cumulative_flops, self.val_accuracy, self.test_accuracy, strict=True)
                )
            ],
            "budgeted": {
                "geometric": [p.model_dump() for p in self.geometric],
                "optimized": [p.model_dump() for p in self.optimized],
            },
            "full_depth": self.full_depth.model_dump(),
            "default_point": self.default.model_dump(),
        }


def run_protocols(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
    cumulative_flops: list[int],
    split: str,
    tolerance_pp: float = 0.5,
) -> ProtocolResults:
    val_accuracy = accuracy_per_exit(val_probs, val_labels)
    geometric, optimized = calibrate(val_probs, val_labels, test_probs, test_labels, cumulative_flops)
    full = full_depth_point(val_probs, val_labels, test_probs, test_labels, cumulative_flops)
    default = choose_default_point([*geometric, *optimized, full], val_accuracy[-1], tolerance_pp)
    return ProtocolResults(
        cumulative_flops=list(cumulative_flops),
        val_accuracy=val_accuracy,
        test_accuracy=accuracy_per_exit(test_probs, test_labels),
        geometric=geometric,
        optimized=optimized,
        full_depth=full,
        default=default,
        split=split,
    )


def write_results(results: ProtocolResults, out_dir: Path, title: str) -> list[Path]:
    """`evaluation.json` and the PNG plots in `out_dir`; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    curve = plot_accuracy_vs_flops(
        results.geometric,
        results.optimized,
        results.cumulative_flops,
        results.test_accuracy,
        out_dir / "accuracy_vs_flops.png",
        title,
    )
    exits = plot_exit_distribution(results.geometric, out_dir / "exit_distribution.png", f"{title}: exits")
    return [json_path, curve, exits]
