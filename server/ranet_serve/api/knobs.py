"""Request knobs, whatever their source (query, form field, JSON body, v2 `parameters`), as typed values.

Budget values go through `api.budget` (one parser for "20M", "1.5G", comma lists...); the rest are
checked here. A wrong type or range is a 422 naming the knob.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ranet_serve.api.budget import parse_confidence, parse_flops, parse_thresholds
from ranet_serve.cascade.policy import Budget
from ranet_serve.errors import InvalidRequestError

BUDGET_KNOBS = ("max_flops", "target_flops", "confidence", "thresholds", "operating_point")
KNOBS = (*BUDGET_KNOBS, "top_k", "version", "deadline_ms")
T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,63}$")


@dataclass(frozen=True)
class Knobs:
    budget: Budget
    top_k: int = 1
    version: str | None = None
    deadline_ms: float | None = None


def parse_knobs(raw: Mapping[str, object]) -> Knobs:
    """Typed knobs from raw values (strings from query/form, JSON values from bodies)."""
    unknown = sorted(set(raw) - set(KNOBS))
    if unknown:
        raise InvalidRequestError(f"unknown parameter {unknown[0]!r}; known: {', '.join(KNOBS)}")
    budget = Budget(
        max_flops=_optional(raw, "max_flops", lambda v: parse_flops(v, "max_flops")),
        target_flops=_optional(raw, "target_flops", lambda v: parse_flops(v, "target_flops")),
        confidence=_optional(raw, "confidence", parse_confidence),
        thresholds=_optional(raw, "thresholds", parse_thresholds),
        operating_point=_name(raw, "operating_point"),
    )
    top_k = _integer(raw["top_k"], "top_k") if raw.get("top_k") is not None else 1
    return Knobs(
        budget=budget,
        top_k=top_k,
        version=_name(raw, "version"),
        deadline_ms=_number(raw["deadline_ms"], "deadline_ms")
        if raw.get("deadline_ms") is not None
        else None,
    )


def _optional(raw: Mapping[str, object], key: str, parse: Callable[[Any], T]) -> T | None:
    value = raw.get(key)
    return None if value is None else parse(value)


def _name(raw: Mapping[str, object], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `"version": 2` in JSON means version "2"
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequestError(
            f"{key} must be a name of letters, digits, '.', '_', '-' (got {str(value)[:40]!r})"
        )
    return value


def _integer(value: object, key: str) -> int:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        return int(value)
    raise InvalidRequestError(f"{key} must be an integer, got {str(value)[:40]!r}")


def _number(value: object, key: str) -> float:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{key} must be a number, got {str(value)[:40]!r}") from exc
    if not math.isfinite(number) or number <= 0:
        raise InvalidRequestError(f"{key} must be a positive finite number, got {str(value)[:40]!r}")
    return number
