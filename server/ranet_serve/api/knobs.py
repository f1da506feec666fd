"""Request knobs, whatever their source (query, form field, JSON body, v2 `parameters`), as typed values.

`KNOB_TABLE` is the one list of knobs: v1 and v2 accept exactly these names, parse each with the same
function, reject any other name with the same message (`unknown_parameter`), and document them in
OpenAPI from the same schema fragments. A protocol may add parameters of its own that are not knobs
(v2's Triton parameters, `v2/codec.py`), but it passes them as `also_known` so one message lists every
name the client may send.

Budget values go through `api.budget` (one parser for "20M", "1.5G", comma lists...); the rest are
checked here. A wrong type or range is a 422 naming the knob.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ranet_serve.api.budget import parse_confidence, parse_flops, parse_thresholds
from ranet_serve.cascade.policy import Budget
from ranet_serve.engine.records import ON_DEADLINE, OnDeadline
from ranet_serve.errors import InvalidRequestError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,63}$")


@dataclass(frozen=True)
class Knob:
    """One knob: its name, how a raw value (string or JSON value) becomes a typed one, its OpenAPI doc."""

    name: str
    parse: Callable[[object], Any]
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Knobs:
    budget: Budget
    top_k: int = 1
    version: str | None = None
    deadline_ms: float | None = None
    on_deadline: OnDeadline = "error"


def parse_on_deadline(value: object) -> OnDeadline:
    """What a passed deadline does: "error" (504, the default) or "best" (the deepest exit so far)."""
    for choice in ON_DEADLINE:
        if value == choice:
            return choice
    raise InvalidRequestError(f"on_deadline must be one of {', '.join(ON_DEADLINE)}, got {str(value)[:40]!r}")


def parse_flag(value: object, key: str) -> bool:
    """A boolean, as JSON true/false or a string (true/false, 1/0, yes/no), as query and form values are."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
    raise InvalidRequestError(f"{key} must be true or false, got {str(value)[:40]!r}")


# No count a request gives (top_k, v2 classification) is anywhere near this; the engine checks the real bound.
COUNT_LIMIT = 1_000_000


def parse_count(value: object, key: str) -> int:
    """A positive integer, as a JSON number or a string of digits (query and form values are strings).

    The model's own upper bound (the number of classes) is the engine's to check; `COUNT_LIMIT` keeps
    absurd values (a 20-digit JSON number) from reaching it: the engine's wire carries 64-bit integers.
    """
    if isinstance(value, bool):
        raise InvalidRequestError(f"{key} must be an integer, got {value!r}")
    integral = (
        isinstance(value, int)
        or (isinstance(value, float) and value.is_integer())
        or (
            isinstance(value, str) and len(value) <= 64 and re.fullmatch(r"\s*[+-]?\d+\s*", value) is not None
        )
    )
    if not integral:
        raise InvalidRequestError(f"{key} must be an integer, got {str(value)[:40]!r}")
    number = int(value)  # type: ignore[call-overload]
    if number < 1:
        raise InvalidRequestError(f"{key} must be at least 1, got {str(number)[:40]}")
    if number > COUNT_LIMIT:
        raise InvalidRequestError(f"{key} must be at most {COUNT_LIMIT}, got {str(number)[:40]}")
    return number


def parse_positive(value: object, key: str) -> float:
    """A positive finite number, as a JSON number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(f"{key} must be a number, got {str(value)[:40]!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequestError(f"{key} must be a number, got {str(value)[:40]!r}") from exc
    if not math.isfinite(number) or number <= 0:
        raise InvalidRequestError(f"{key} must be a positive finite number, got {str(value)[:40]!r}")
    return number


def parse_name(value: object, key: str) -> str:
    """A version or operating-point name; `"version": 2` in JSON means version "2"."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequestError(
            f"{key} must be a name of up to 64 letters, digits, '.', '_', '=', '-' starting with a letter "
            f"or digit (got {str(value)[:40]!r})"
        )
    return value


KNOB_TABLE: tuple[Knob, ...] = (
    Knob(
        "max_flops",
        lambda v: parse_flops(v, "max_flops"),
        {"type": "string", "description": "hard cap per image: a number or '20M', '1.5G'"},
    ),
    Knob(
        "target_flops",
        lambda v: parse_flops(v, "target_flops"),
        {"type": "string", "description": "average budget: picks a calibrated operating point"},
    ),
    Knob(
        "confidence",
        parse_confidence,
        {"type": "number", "description": "one threshold for every exit, in [0, 1]"},
    ),
    Knob(
        "thresholds",
        parse_thresholds,
        {"type": "string", "description": "one threshold per exit, comma-separated"},
    ),
    Knob(
        "operating_point",
        lambda v: parse_name(v, "operating_point"),
        {"type": "string", "description": "a calibrated operating point of the model, by name"},
    ),
    Knob(
        "top_k",
        lambda v: parse_count(v, "top_k"),
        {"type": "integer", "description": "how many classes to list per image, most probable first"},
    ),
    Knob(
        "version",
        lambda v: parse_name(v, "version"),
        {"type": "string", "description": "model version; the latest that loaded if absent"},
    ),
    Knob(
        "deadline_ms",
        lambda v: parse_positive(v, "deadline_ms"),
        {"type": "number", "description": "answer within this many ms of arrival, else see on_deadline"},
    ),
    Knob(
        "on_deadline",
        parse_on_deadline,
        {
            "type": "string",
            "enum": list(ON_DEADLINE),
            "description": "when the deadline passes mid-cascade: 'error' (504) or 'best' (the deepest "
            "exit so far, deadline_limited: true; 504 if no exit was reached)",
        },
    ),
)
KNOBS = tuple(knob.name for knob in KNOB_TABLE)


def knob_schemas() -> dict[str, dict[str, Any]]:
    """OpenAPI property schemas of every knob, for the request bodies of both protocols."""
    return {knob.name: dict(knob.schema) for knob in KNOB_TABLE}


def unknown_parameter(name: str, known: Sequence[str], where: str = "") -> InvalidRequestError:
    """The one rejection of a name that is not a knob (nor, in v2, a protocol parameter).

    Both protocols answer it, so a client learns the same thing whichever it speaks: which name was
    wrong and every name it could have meant. `where` places it (" of output 'label'") when needed.
    """
    shown = name[:64]
    return InvalidRequestError(
        f"unknown parameter {shown!r}{where}; known: {', '.join(known)}", parameter=shown
    )


def parse_knobs(raw: Mapping[str, object], also_known: Collection[str] = ()) -> Knobs:
    """Typed knobs from raw values (strings from query/form, JSON values from bodies).

    `also_known`: names the caller handles itself (v2 protocol parameters); they are skipped here and
    listed in the message for an unknown name. A None value means "not given", as JSON null does.
    """
    for name in sorted(raw):  # sorted: the same name is reported whatever the client's order
        if name not in KNOBS and name not in also_known:
            raise unknown_parameter(name, (*KNOBS, *also_known))
    values = {knob.name: knob.parse(raw[knob.name]) for knob in KNOB_TABLE if raw.get(knob.name) is not None}
    return Knobs(
        budget=Budget(
            max_flops=values.get("max_flops"),
            target_flops=values.get("target_flops"),
            confidence=values.get("confidence"),
            thresholds=values.get("thresholds"),
            operating_point=values.get("operating_point"),
        ),
        top_k=values.get("top_k", 1),
        version=values.get("version"),
        deadline_ms=values.get("deadline_ms"),
        on_deadline=values.get("on_deadline", "error"),
    )
