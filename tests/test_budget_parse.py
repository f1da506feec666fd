"""Budget knob parsing, table-driven: what clients may write, what it means, and what each mistake says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranet_serve.api.budget import (
    MAX_FLOPS,
    MAX_THRESHOLDS,
    check_thresholds_length,
    parse_confidence,
    parse_flops,
    parse_thresholds,
)
from ranet_serve.errors import BudgetError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20M", 20e6),
        ("20m", 20e6),  # case-insensitive: nobody budgets milli-FLOPs
        ("1.5G", 1.5e9),
        ("1.5g", 1.5e9),
        ("300k", 300e3),
        ("300K", 300e3),
        ("2T", 2e12),
        ("2e7", 2e7),
        ("2E7", 2e7),
        ("2.5e-3G", 2.5e6),
        ("20 MFLOPs", 20e6),
        ("20MFLOPs", 20e6),
        ("20mflops", 20e6),
        ("20 MFLOP", 20e6),
        ("  7.5 G  ", 7.5e9),
        ("45000000", 45e6),
        ("+45000000", 45e6),
        (".5M", 5e5),
        ("5.M", 5e6),
        ("123 flops", 123.0),
        (123, 123.0),
        (5.5, 5.5),
        (np.int64(42), 42.0),
        (np.float32(2.5), 2.5),
        ("1e18", 1e18),
        ("1000000T", 1e18),
    ],
)
def test_flops_parse_with_decimal_units(raw: object, expected: float) -> None:
    assert parse_flops(raw) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("nan", "finite"),
        ("NaN", "finite"),
        ("inf", "finite"),
        ("-Infinity", "finite"),
        (math.nan, "finite"),
        (math.inf, "beyond 1e+18"),
        ("-5", "must be positive"),
        (-5, "must be positive"),
        ("0", "must be positive"),
        (0, "must be positive"),
        ("0M", "must be positive"),
        ("1e30", "beyond 1e+18"),
        ("2000000T", "beyond 1e+18"),
        (10**400, "beyond 1e+18"),  # beyond float's range: no OverflowError
        ("abc", "cannot read 'abc'"),
        ("20 MB", "cannot read"),
        ("20P", "cannot read"),
        ("1,000", "cannot read"),
        ("0x10", "cannot read"),
        ("20M20", "cannot read"),
        ("M", "cannot read"),
        (True, "got a bool"),
        (None, "got a NoneType"),
        ([1], "got a list"),
    ],
)
def test_invalid_flops_say_what_was_wrong_and_what_is_accepted(raw: object, fragment: str) -> None:
    with pytest.raises(BudgetError) as caught:
        parse_flops(raw, "max_flops")
    error = caught.value
    assert error.code == "invalid_budget" and error.details["knob"] == "max_flops"
    assert error.message.startswith("max_flops") and fragment in error.message
    if fragment in ("is empty", "must be positive", "cannot read", "beyond 1e+18") or "got a" in fragment:
        assert "20M" in error.message and "1.5G" in error.message  # the accepted format is spelled out


def test_flops_limit_is_inclusive_and_messages_stay_short() -> None:
    assert parse_flops(MAX_FLOPS) == MAX_FLOPS
    with pytest.raises(BudgetError) as caught:
        parse_flops("x" * 100_000)
    assert len(caught.value.message) < 400  # quotes 40 characters of the value, not all of it


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, 0.0),
        (1, 1.0),
        (0.75, 0.75),
        ("0.75", 0.75),
        (" .5 ", 0.5),
        ("1", 1.0),
        ("1.0", 1.0),
        ("7.5e-1", 0.75),
        (np.float64(0.25), 0.25),
    ],
)
def test_confidence_parses_numbers_in_the_unit_interval(raw: object, expected: float) -> None:
    assert parse_confidence(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (1.5, "must be in [0, 1], got 1.5"),
        ("1.0001", "must be in [0, 1]"),
        (-0.1, "must be in [0, 1]"),
        ("nan", "finite"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("high", "cannot read 'high'"),
        ("0_5", "cannot read"),
        ("", "is empty"),
        (True, "got a bool"),
        (None, "got a NoneType"),
    ],
)
def test_invalid_confidence(raw: object, fragment: str) -> None:
    with pytest.raises(BudgetError) as caught:
        parse_confidence(raw)
    assert fragment in caught.value.message and caught.value.message.startswith("confidence")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.9,0.8,0.7", (0.9, 0.8, 0.7)),
        (" 0.9 , 0.8 , 1 ", (0.9, 0.8, 1.0)),
        ("[0.5, 1]", (0.5, 1.0)),
        ("[0, 0.25, 1.0]", (0.0, 0.25, 1.0)),
        ("0.6", (0.6,)),
        ([0, 0.25], (0.0, 0.25)),
        ((0.5, "0.75"), (0.5, 0.75)),
    ],
)
def test_thresholds_parse_from_lists_json_and_commas(raw: object, expected: tuple[float, ...]) -> None:
    assert parse_thresholds(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "is empty"),
        ("[]", "empty list"),
        ([], "empty list"),
        ("[0.5,", "not a valid JSON list"),
        ('{"a": 1}', "cannot read"),  # not a list: read as one comma field, which is no number
        ("[[0.5]]", "thresholds[0] must be a number in [0, 1], e.g. 0.9; got a list"),
        ("0.5,2", "thresholds[1] must be in [0, 1], got '2'"),
        ("0.5,,0.7", "thresholds[1] is empty"),
        ("0.5,0.7,", "thresholds[2] is empty"),
        ("a,b", "thresholds[0]: cannot read 'a'"),
        ([math.nan], "thresholds[0] must be a finite number"),
        ([-0.1], "thresholds[0] must be in [0, 1]"),
        ([True, 0.5], "got a bool"),
        (0.5, "got a float"),
        ({"x": 0.5}, "got a dict"),
        ([0.5] * (MAX_THRESHOLDS + 1), f"at most {MAX_THRESHOLDS}"),
    ],
)
def test_invalid_thresholds(raw: object, fragment: str) -> None:
    with pytest.raises(BudgetError) as caught:
        parse_thresholds(raw)
    assert fragment in caught.value.message, caught.value.message


def test_threshold_count_must_match_the_exits() -> None:
    check_thresholds_length((0.5,) * 6, 6)
    for count in (5, 7):
        with pytest.raises(BudgetError, match=f"thresholds needs 6 values .*, got {count}") as caught:
            check_thresholds_length((0.5,) * count, 6)
        assert caught.value.details == {"knob": "thresholds", "expected": 6, "got": count}
