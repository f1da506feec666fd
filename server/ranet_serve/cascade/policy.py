"""Budget semantics: turn a request's knobs into per-exit thresholds and an exit cap.

Rules (DESIGN.md, "Budget semantics"):
* `max_flops` is a hard cap per image: exits costing more are never run. A cap below the cheapest
  exit is an error naming that exit's cost.
* `thresholds` (one per exit) or `confidence` (one for all) set the thresholds explicitly and win
  over `target_flops`; giving both is contradictory and rejected.
* `target_flops` picks the calibrated operating point with the best held-out accuracy whose expected
  FLOPs per image is within the target.
* `operating_point` names a calibrated point; with `thresholds`, `confidence` or `target_flops` it is
  contradictory and rejected (one of the two would be ignored).
* Nothing set: the bundle's default operating point (full depth when the bundle is uncalibrated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ranet_serve.errors import BudgetError
from ranet_serve.export.manifest import Manifest, OperatingPoint

NEVER_EXIT = 1.0


@dataclass(frozen=True)
class Budget:
    """The compute knobs of one request, already parsed into numbers (all optional)."""

    max_flops: float | None = None
    target_flops: float | None = None
    confidence: float | None = None
    thresholds: tuple[float, ...] | None = None
    operating_point: str | None = None


@dataclass(frozen=True)
class ExitPlan:
    """What the executor needs for one image, plus the name of the point it came from."""

    thresholds: np.ndarray  # [exits] float32
    max_exit: int
    operating_point: str


class ExitPolicy:
    """Resolves budgets against one bundle's exits and calibration table."""

    def __init__(self, manifest: Manifest, default_point: str | None = None):
        self.manifest = manifest
        self.cumulative_flops = manifest.cumulative_flops
        self.num_exits = len(self.cumulative_flops)
        calibration = manifest.calibration
        self.points: tuple[OperatingPoint, ...] = calibration.points if calibration else ()
        self.default_point = default_point or (calibration.default_point if calibration else None)
        if default_point is not None:
            self.point(default_point)  # an unknown name is a BudgetError listing the known points

    def point(self, name: str) -> OperatingPoint:
        for candidate in self.points:
            if candidate.name == name:
                return candidate
        known = ", ".join(p.name for p in self.points) or "none (bundle not calibrated)"
        raise BudgetError(f"unknown operating point {name!r}; known: {known}", operating_point=name)

    def resolve(self, budget: Budget, default_point: str | None = None) -> ExitPlan:
        """`default_point` lets a caller (e.g. a load-adaptive controller) move the default."""
        max_exit = self._max_exit(budget.max_flops)
        if budget.thresholds is not None and budget.confidence is not None:
            raise BudgetError("give either `thresholds` or `confidence`, not both")
        if budget.operating_point is not None:
            others = [
                name
                for name, value in (
                    ("thresholds", budget.thresholds),
                    ("confidence", budget.confidence),
                    ("target_flops", budget.target_flops),
                )
                if value is not None
            ]
            if others:  # both name the thresholds: one of them would be ignored without a word
                raise BudgetError(f"give either `operating_point` or `{others[0]}`, not both")
        if budget.thresholds is not None:
            values = self._check_thresholds(budget.thresholds)
            return ExitPlan(values, max_exit, "custom-thresholds")
        if budget.confidence is not None:
            value = self._check_unit("confidence", budget.confidence)
            return ExitPlan(
                np.full(self.num_exits, value, dtype=np.float32), max_exit, f"confidence={value:g}"
            )
        if budget.operating_point is not None:
            point = self.point(budget.operating_point)
        elif budget.target_flops is not None:
            point = self._point_for_target(budget.target_flops)
        else:
            name = default_point or self.default_point
            if name is None:
                return ExitPlan(np.full(self.num_exits, NEVER_EXIT, dtype=np.float32), max_exit, "full-depth")
            point = self.point(name)
        return ExitPlan(np.asarray(point.thresholds, dtype=np.float32), max_exit, point.name)

    def _max_exit(self, max_flops: float | None) -> int:
        last = self.num_exits - 1
        if max_flops is None:
            return last
        if not math.isfinite(max_flops) or max_flops <= 0:
            raise BudgetError(f"max_flops must be a positive finite number, got {max_flops}")
        allowed = [k for k, flops in enumerate(self.cumulative_flops) if flops <= max_flops]
        if not allowed:
            cheapest = self.cumulative_flops[0]
            raise BudgetError(
                f"max_flops {max_flops:.6g} is below the cheapest exit's cost ({cheapest} FLOPs)",
                cheapest_exit_flops=cheapest,
            )
        return allowed[-1]

    def _point_for_target(self, target: float) -> OperatingPoint:
        if not math.isfinite(target) or target <= 0:
            raise BudgetError(f"target_flops must be a positive finite number, got {target}")
        if not self.points:
            raise BudgetError("target_flops needs a calibrated bundle (run `ranet calibrate`)")
        fitting = [p for p in self.points if p.expected_flops <= target]
        if not fitting:
            cheapest = min(p.expected_flops for p in self.points)
            raise BudgetError(
                f"target_flops {target:.6g} is below the cheapest operating point "
                f"({cheapest:.0f} FLOPs per image)",
                cheapest_point_flops=cheapest,
            )
        return max(fitting, key=lambda p: (p.val_accuracy, -p.expected_flops))

    def _check_thresholds(self, thresholds: tuple[float, ...]) -> np.ndarray:
        if len(thresholds) != self.num_exits:
            raise BudgetError(
                f"thresholds needs {self.num_exits} values (one per exit), got {len(thresholds)}",
                expected=self.num_exits,
            )
        return np.asarray([self._check_unit("thresholds", t) for t in thresholds], dtype=np.float32)

    @staticmethod
    def _check_unit(name: str, value: float) -> float:
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise BudgetError(f"{name} values must be in [0, 1], got {value}")
        return float(value)
