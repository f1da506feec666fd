"""Parsing of the compute-budget knobs as clients write them (`20M`, `1.5G`, `0.9,0.8,...`).

Parsing only: whether a budget fits the model (cheapest exit, number of exits) is the policy's job.
"""

from __future__ import annotations

import json
import math
import re

from ranet_serve.errors import BudgetError

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_FLOPS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*(?:flops?)?\s*$", re.IGNORECASE)
MAX_FLOPS = 1e18
FLOPS_FORMAT = "a positive number of FLOPs, optionally with a unit: 20000000, 2e7, 300k, 20M, 1.5G"


def parse_flops(value: object, name: str = "flops") -> float:
    """A FLOPs budget as a positive finite float."""
    if isinstance(value, bool):
        raise BudgetError(f"{name} must be {FLOPS_FORMAT}, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _FLOPS.match(value)
        if match is None:
            raise BudgetError(f"{name} must be {FLOPS_FORMAT}, got {value!r}")
        number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        raise BudgetError(f"{name} must be {FLOPS_FORMAT}, got a {type(value).__name__}")
    if not math.isfinite(number) or number <= 0:
        raise BudgetError(f"{name} must be a positive finite number, got {value!r}")
    if number > MAX_FLOPS:
        raise BudgetError(f"{name} {value!r} is absurdly large (more than {MAX_FLOPS:g} FLOPs)")
    return number


def parse_confidence(value: object, name: str = "confidence") -> float:
    """A probability threshold in [0, 1]."""
    if isinstance(value, bool):
        raise BudgetError(f"{name} must be a number in [0, 1], got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BudgetError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise BudgetError(f"{name} must be a number in [0, 1], got {value!r}")
    return number


def parse_thresholds(value: object) -> tuple[float, ...]:
    """Per-exit thresholds from a list, a JSON list string or a comma-separated string."""
    items: object = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise BudgetError(f"thresholds is not a valid JSON list: {value!r}") from None
        else:
            items = [part for part in text.split(",") if part.strip()]
    if not isinstance(items, list | tuple) or not items:
        raise BudgetError("thresholds must be a non-empty list of numbers in [0, 1], one per exit")
    return tuple(parse_confidence(item, "thresholds values") for item in items)


def check_thresholds_length(thresholds: tuple[float, ...], num_exits: int) -> None:
    if len(thresholds) != num_exits:
        raise BudgetError(f"thresholds needs {num_exits} values (one per exit), got {len(thresholds)}")
