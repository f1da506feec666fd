"""A short run of `benchmarks/stress.py` against a real `ranet serve` process with tiny bounds.

The full run (`benchmarks/stress.py` with its defaults) measures overload on a quiet machine; this one
checks the same phases end to end in seconds: with a batcher queue of 2, batches of 1 and at most 4
requests in flight, 2x and 4x the measured rate must be shed, so the assertions are about behaviour
(429s carry Retry-After, nothing 5xx, every admitted answer is the reference class, the server serves
again afterwards, memory does not run away, also over a second round), never about timings.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from helpers.bundles import make_store

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stress.py"
RSS_GROWTH_LIMIT_MIB = 256.0  # generous: allocator arenas and caches grow a little under load
RSS_ROUND_GROWTH_LIMIT_MIB = 64.0


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ranet_stress", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = make_store(tmp_path_factory.mktemp("stress-store"), tiny_bundle_dir)
    out = tmp_path_factory.mktemp("stress-out")
    stress = load_script()
    result: dict[str, Any] = stress.main(
        [
            "--model-store",
            str(store),
            "--model",
            "tiny",
            "--server-env",
            "RANET_MAX_QUEUE_SIZE=2",
            "RANET_MAX_BATCH_SIZE=1",
            "RANET_MAX_INFLIGHT_REQUESTS=4",
            "RANET_THREADS=1",
            "RANET_LOG_LEVEL=warning",
            "--query",
            "confidence=1.0",  # full depth: the class cannot depend on which exit a batch reached
            "--capacity-concurrency",
            "4",
            "--warmup-seconds",
            "0.5",
            "--capacity-seconds",
            "1",
            "--baseline-seconds",
            "1",
            "--phase-seconds",
            "1",
            "--recovery-seconds",
            "2",
            "--rounds",
            "2",
            "--timeout",
            "20",
            "--out",
            str(out),
        ]
    )
    result["out_dir"] = out  # where the test looks for stress.json and stress.md
    return result


def phases(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["phase"]: p for p in report["phases"]}


def test_overload_is_shed_with_429_and_retry_after(report: dict[str, Any]) -> None:
    by_name = phases(report)
    rounds = ["1x", "2x", "4x", "recovery"]
    assert list(by_name) == ["capacity", "baseline", *rounds, *(f"{name} #2" for name in rounds)]
    for suffix in ("", " #2"):
        assert by_name[f"2x{suffix}"]["shed_429"] + by_name[f"4x{suffix}"]["shed_429"] > 0
    for phase in report["phases"]:
        assert phase["all_429_have_retry_after"], phase
        assert phase["shed_429_with_retry_after"] == phase["shed_429"]


def test_nothing_fails_and_every_admitted_answer_is_right(report: dict[str, Any]) -> None:
    for phase in report["phases"]:
        unexpected = {k: v for k, v in phase["statuses"].items() if k not in ("200", "429")}
        assert unexpected == {}, phase  # no 5xx, no timeouts, no dropped connections
        assert phase["ok_200"] > 0, phase
        assert phase["wrong_class"] == 0, phase
    assert report["server_log_errors"] == []


def test_the_server_recovers_and_leaks_nothing(report: dict[str, Any]) -> None:
    by_name = phases(report)
    assert by_name["recovery"]["ok_200"] > 0 and by_name["recovery #2"]["ok_200"] > 0
    first, second = report["recovery"]
    assert first["first_200_after_s"] is not None and second["first_200_after_s"] is not None
    # memory levels off: a second overload does not add what the first one did
    assert second["rss_end_mib"] <= first["rss_end_mib"] + RSS_ROUND_GROWTH_LIMIT_MIB
    assert report["after"]["readyz_status"] == 200
    assert report["after"]["inflight_requests"] == 0
    rss = report["rss"]
    assert rss["samples"] >= 3
    assert rss["after_recovery_mib"] <= rss["before_load_mib"] + RSS_GROWTH_LIMIT_MIB


def test_the_report_files_are_written(report: dict[str, Any]) -> None:
    out: Path = report["out_dir"]
    saved = json.loads((out / "stress.json").read_text())
    assert saved["phases"] == report["phases"]
    assert "| 4x |" in (out / "stress.md").read_text()
    assert report["sustainable_rate_rps"] > 0
    assert report["rss"]["source"].startswith("VmRSS")
    assert report["machine"]["versions"]["ranet-serve"]


def test_recovery_figures_find_the_first_200_and_the_settling_point() -> None:
    """The recovery arithmetic on hand-made requests: a 429, a slow 200, then fast 200s from 0.3 s."""
    stress = load_script()
    phase = stress.PhaseResult("recovery", "open-loop", 10.0, 1.0, started=100.0)
    phase.shots = [
        stress.Shot("recovery", 0, 100.0, 100.05, "429", retry_after="1"),
        stress.Shot("recovery", 1, 100.1, 100.6, "200", class_index=3),  # 500 ms: not normal yet
        stress.Shot("recovery", 2, 100.3, 100.31, "200", class_index=3),
        stress.Shot("recovery", 3, 100.4, 100.41, "200", class_index=3),
    ]
    figures = stress.recovery_figures(phase, normal_p99_ms=20.0)
    assert figures == {
        "first_200_after_s": 0.31,
        "normal_p99_threshold_ms": 40.0,
        "p99_normal_after_s": 0.3,
    }
    summary = phase.summary([(99.0, 1024), (100.5, 2048)], reference={1: 3, 2: 3, 3: 4})
    assert summary["shed_429"] == 1 and summary["all_429_have_retry_after"]
    assert summary["wrong_class"] == 1  # sample 3 answered 3, the reference says 4
    assert summary["rss_start_mib"] == 1.0 and summary["rss_max_mib"] == 2.0
