"""Parsing of the compute-budget knobs as clients write them (`20M`, `1.5G`, `0.9,0.8,...`).

Parsing only: whether a budget fits the model (cheapest exit, number of exits) is the policy's job,
except `check_thresholds_length`, which the caller runs once it knows the model's exit count.

Every rejection is a `BudgetError` (422, code `invalid_budget`) whose message says what was wrong and
which format is accepted, quoting at most 40 characters of the value: a client that sent a megabyte of
garbage gets a readable error, not its own payload back.

Units are decimal and case-insensitive (k = 1e3, M = 1e6, G = 1e9, T = 1e12), so `20m` means 20 MFLOPs:
nobody budgets thousandths of a FLOP, and a client should not fail on the case of a letter.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Sequence

from ranet_serve.errors import BudgetError

MAX_FLOPS = 1e18  # a million times the largest ImageNet networks: anything beyond is a client bug
MAX_THRESHOLDS = 256  # far above any model's exit count; bounds the work spent on a hostile list
FLOPS_FORMAT = (
    "a positive number of FLOPs, optionally with a decimal unit k, M, G or T and an optional 'FLOPs' "
    "suffix, e.g. 20000000, 2e7, 300k, 20M, 1.5G, '20 MFLOPs'"
)
PROBABILITY_FORMAT = "a number in [0, 1], e.g. 0.9"
THRESHOLDS_FORMAT = (
    "one number in [0, 1] per exit, as a list, a JSON list string '[0.9, 0.8]' or a comma-separated "
    "string '0.9,0.8'"
)

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?"
_FLOPS = re.compile(rf"({_NUMBER})\s*([kmgt]?)\s*(?:flops?)?", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(_NUMBER, re.IGNORECASE)
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _show(value: object) -> str:
    """The offending value for a message, bounded."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _real(value: object) -> float | None:
    """A real number (int, float, numpy scalar) as float; None for bools and non-numbers.

    Bools are not numbers here: `true` in a JSON body is a client bug, not the budget 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


def parse_flops(value: object, name: str = "flops") -> float:
    """A FLOPs budget (`max_flops`, `target_flops`) as a positive, finite float of at most `MAX_FLOPS`.

    Accepts numbers and strings such as "20M", "1.5G", "300k", "2e7", "20 MFLOPs", "20mflops".
    Zero is rejected: no exit runs on zero FLOPs, so it can only be a mistake.
    """
    number = _real(value)
    if number is None:
        if not isinstance(value, str):
            raise BudgetError(
                f"{name} must be {FLOPS_FORMAT}; got a {type(value).__name__} ({_show(value)})", knob=name
            )
        text = value.strip()
        if not text:
            raise BudgetError(f"{name} is empty; it must be {FLOPS_FORMAT}", knob=name)
        if _NON_FINITE.fullmatch(text):
            raise BudgetError(f"{name} must be a finite number of FLOPs, got {_show(value)}", knob=name)
        match = _FLOPS.fullmatch(text)
        if match is None:
            raise BudgetError(f"{name}: cannot read {_show(value)}; it must be {FLOPS_FORMAT}", knob=name)
        number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if math.isnan(number):
        raise BudgetError(f"{name} must be a finite number of FLOPs, got {_show(value)}", knob=name)
    if number <= 0:
        raise BudgetError(
            f"{name} must be positive, got {_show(value)}; it must be {FLOPS_FORMAT}", knob=name
        )
    if number > MAX_FLOPS:  # infinity included
        raise BudgetError(
            f"{name} {_show(value)} is beyond {MAX_FLOPS:.0e} FLOPs per image; it must be {FLOPS_FORMAT}",
            knob=name,
        )
    return number


def parse_confidence(value: object, name: str = "confidence") -> float:
    """A softmax-confidence threshold in [0, 1]: a number or a numeric string.

    1.0 is valid (the policy reads "threshold >= 1" as "never leave at this exit").
    """
    number = _real(value)
    if number is None:
        if not isinstance(value, str):
            raise BudgetError(
                f"{name} must be {PROBABILITY_FORMAT}; got a {type(value).__name__} ({_show(value)})",
                knob=name,
            )
        text = value.strip()
        if not text:
            raise BudgetError(f"{name} is empty; it must be {PROBABILITY_FORMAT}", knob=name)
        if _NON_FINITE.fullmatch(text):
            number = math.nan
        elif _PLAIN_NUMBER.fullmatch(text):
            number = float(text)
        else:
            raise BudgetError(
                f"{name}: cannot read {_show(value)}; it must be {PROBABILITY_FORMAT}", knob=name
            )
    if not math.isfinite(number):
        raise BudgetError(f"{name} must be a finite number in [0, 1], got {_show(value)}", knob=name)
    if not 0.0 <= number <= 1.0:
        raise BudgetError(f"{name} must be in [0, 1], got {_show(value)}", knob=name)
    return number


def parse_thresholds(value: object, name: str = "thresholds") -> tuple[float, ...]:
    """Per-exit thresholds from a list, a JSON list string ("[0.9, 0.8]") or "0.9,0.8,0.7".

    A tuple, because `Budget` is frozen and hashable. Empty entries ("0.9,,0.7", a trailing comma) are
    rejected rather than skipped: dropping one would shift every later threshold onto the wrong exit.
    """
    items: object = value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise BudgetError(f"{name} is empty; it must be {THRESHOLDS_FORMAT}", knob=name)
        if text.startswith("["):
            try:
                items = json.loads(text)
            except (ValueError, RecursionError):  # malformed, too deep, an integer of 4300+ digits
                raise BudgetError(
                    f"{name}: {_show(value)} is not a valid JSON list; it must be {THRESHOLDS_FORMAT}",
                    knob=name,
                ) from None
        else:
            items = text.split(",")
    if not isinstance(items, list | tuple):
        raise BudgetError(
            f"{name} must be {THRESHOLDS_FORMAT}; got a {type(items).__name__} ({_show(value)})", knob=name
        )
    if not items:
        raise BudgetError(f"{name} is an empty list; it must be {THRESHOLDS_FORMAT}", knob=name)
    if len(items) > MAX_THRESHOLDS:
        raise BudgetError(f"{name} has {len(items)} values; at most {MAX_THRESHOLDS} are accepted", knob=name)
    return tuple(parse_confidence(item, f"{name}[{i}]") for i, item in enumerate(items))


def check_thresholds_length(thresholds: Sequence[float], num_exits: int, name: str = "thresholds") -> None:
    """One threshold per exit, no more and no fewer: a partial list has no unambiguous meaning."""
    if len(thresholds) != num_exits:
        raise BudgetError(
            f"{name} needs {num_exits} values (one per exit of this model), got {len(thresholds)}",
            knob=name,
            expected=num_exits,
            got=len(thresholds),
        )
