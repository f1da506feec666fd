"""The per-request knobs (budget, top-k, version, deadline) and how each transport carries them.

The server parses budget values ("20M", "1.5G", comma lists); the client passes strings through as
written so both sides never disagree on a format. Numbers are sent exactly (integral floats as ints).
`parse_flops` exists for the CLI and the load generator, which show budgets in MFLOPs.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

FlopsValue = int | float | str
# What a passed `deadline_ms` does: "error" (504, the server's default) or "best" (200 with each
# image's deepest exit so far, `deadline_limited: true`; an image that reached no exit is still 504).
OnDeadline = Literal["error", "best"]
ON_DEADLINE: tuple[str, ...] = ("error", "best")

_FLOPS = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*(?:flops?)?\s*$", re.IGNORECASE
)
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_flops(value: FlopsValue) -> float:
    """A FLOPs count from a number or a string such as "20M", "1.5G", "300k", "2e7" (decimal units).

    Raises ValueError for anything else or a non-positive result.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a FLOPs value: {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _FLOPS.match(value)
        if not match:
            raise ValueError(f"not a FLOPs value: {value!r} (use a number or e.g. '20M', '1.5G')")
        number = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"FLOPs must be positive and finite, got {value!r}")
    return number


def _plain(value: int | float) -> int | float:
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(frozen=True)
class Knobs:
    """Every optional request knob of `POST /v1/.../classify`; None means "not sent".

    Budget: `max_flops` (hard cap per image), `target_flops` (average budget: picks an operating point),
    `confidence` (one threshold for all exits), `thresholds` (one per exit), `operating_point` (by name).
    Others: `top_k` (classes returned per image), `version` (model version), `deadline_ms` (the
    server-side deadline) and `on_deadline` (what a passed deadline does: "error", the server's default,
    answers 504; "best" answers with each image's deepest exit so far).
    """

    max_flops: FlopsValue | None = None
    target_flops: FlopsValue | None = None
    confidence: float | None = None
    thresholds: Sequence[float] | str | None = None
    operating_point: str | None = None
    top_k: int | None = None
    version: str | None = None
    deadline_ms: float | None = None
    on_deadline: OnDeadline | None = None

    def as_json(self) -> dict[str, object]:
        """Knobs as JSON values (for a JSON body): numbers stay numbers, thresholds a list."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "thresholds" and not isinstance(value, str):
                value = [_plain(float(t)) for t in value]
            elif isinstance(value, bool):
                pass  # sent as is: the server decides (and rejects a boolean where a number belongs)
            elif isinstance(value, numbers.Integral):
                value = int(value)  # numpy integers too: JSON and repr() must see a plain int
            elif isinstance(value, numbers.Real):
                value = _plain(float(value))
            out[f.name] = value
        return out

    def as_strings(self) -> dict[str, str]:
        """Knobs as strings (for form fields and query parameters): thresholds comma-separated."""
        out: dict[str, str] = {}
        for key, value in self.as_json().items():
            if isinstance(value, list):
                out[key] = ",".join(repr(v) for v in value)
            else:
                out[key] = value if isinstance(value, str) else repr(value)
        return out

    def merged(self, **overrides: object) -> Knobs:
        """A copy with the non-None overrides applied (per-call knobs over client defaults)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Knobs(**values)


KNOB_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Knobs))
BUDGET_KNOB_NAMES: tuple[str, ...] = (
    "max_flops",
    "target_flops",
    "confidence",
    "thresholds",
    "operating_point",
)
