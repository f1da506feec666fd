"""The benchmark command cannot rot: a tiny run of `benchmarks/run_all.py` writes a report with real
numbers, and the peers serve exactly the model and preprocessing ranet serve does.

- The fast test runs the one command with tiny sizes against ranet serve and the FastAPI baseline
  (in-process step skipped: it has no size knob small enough) and checks the JSON, the report and the
  plots: every request answered, accuracy judged against the true labels, identical answers from the
  servers that run the same model at full depth.
- The handler test runs TorchServe's handler without TorchServe: its preprocessing and answers equal
  ranet serve's own preprocessing and the bundle's PyTorch model at full depth.
- The TorchServe leg (`slow`) needs Java 17 and the `bench` extra; it skips cleanly without them.
- `hey` (Debian's package, installed by `make bench`) drives every server too when it is installed;
  its summary parser is checked here on captured hey output, without hey.
- The LitServe leg (`slow`) needs litserve and python-multipart (the `bench` extra) and hey; it skips
  cleanly without them. Its preprocessing is checked against ranet serve's in the default run when
  litserve is installed.
- The serving step (issue 17: efficiency, overload, the overload again with
  RANET_HOLD_EARLY_RETRIES=false) runs in the fast test with a few seconds of hey when hey is
  installed; its front-end scaling and objective runs (more servers to start) are `slow`. hey's CSV
  parser, the overload goals and table, the 16-images-per-request summary, table and goal (both
  clients) and the client-CPU columns are checked on fixed inputs.
- Issue 18's anytime benchmark (streamed exits, deadlines under 2x overload) runs alone for a few
  seconds: events in exit order, shares that sum to 1, accuracies in [0, 1], on_deadline=best answering
  where error answers 504; its goals and report section through run_all.py's functions.
- Issue 21's ImageNet-scale step: its checkpoint has the official layout and loads as an official one,
  its arithmetic (speedup vs FLOPs ratio, verify's table, the decode bar) on fixed inputs; the whole
  path on a narrow 224-pixel config (`--quick`, about 45 s, most of it `ranet export`) is `slow`.

Nothing here asserts a timing threshold: the machines are shared and timings are noise-bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ranet_serve.api.images import ImageLimits, preprocess_batch
from ranet_serve.export.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BUNDLE = ROOT / "model_store" / "ranet-fmnist" / "1"
REQUESTS = 16
CONCURRENCY = (1, 2)
# hey prints its 99th percentile only from 100 requests on (nearest rank over the sorted latencies).
HEY_REQUESTS = 100
VERSUS_REQUESTS = 128  # the LitServe phase: at least the 64 clients it runs with
HEY_CONCURRENCY = 4
BATCH_REQUESTS = 4
BATCH_HEY_REQUESTS = 8  # a multiple of the 4 clients: hey sends exactly this many
OVERLOAD_CLIENTS = 24  # enough to queue on 2 cores, few enough to stay cheap
HAS_HEY = shutil.which("hey") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    not (BUNDLE / "manifest.json").is_file() or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs the default bundle and Debian's dataset-fashion-mnist (scripts/setup.sh installs both)",
)


def _importable_benchmarks() -> None:
    """The benchmark scripts import each other as top-level modules; let the tests that need them too."""
    for path in (BENCH, BENCH / "peers"):
        if str(path) not in sys.path:
            sys.path.append(str(path))


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_WAIT_POLICY": "passive"},
    )


def _check_server_summary(entry: dict[str, Any], runs: int) -> None:
    """Every request answered, accuracy computed from the true labels, latency percentiles ordered."""
    sent = REQUESTS * runs
    assert (entry["requests_sent"], entry["requests_ok"], entry["requests_failed"]) == (sent, sent, 0)
    assert entry["labelled_images"] == sent and 0 <= entry["correct_images"] <= sent
    assert entry["accuracy"] == pytest.approx(entry["correct_images"] / sent)
    assert 0.0 <= entry["accuracy"] <= 1.0
    assert {int(c) for c in entry["by_concurrency"]} == set(CONCURRENCY)
    for row in entry["by_concurrency"].values():
        assert row["throughput_rps"] > 0 and row["requests_failed"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert 0.0 <= row["accuracy"] <= 1.0


def test_one_command_writes_a_report_with_real_numbers(tmp_path: Path) -> None:
    out, report = tmp_path / "results", tmp_path / "REPORT.md"
    args = [str(BENCH / "run_all.py"), "--servers", "ranet", "fastapi"]
    args += ["--http-requests", str(REQUESTS), "--peer-requests", str(REQUESTS), "--warmup", "4"]
    args += ["--concurrency", *map(str, CONCURRENCY), "--out", str(out), "--report", str(report)]
    args += ["--rebatch-requests", str(REQUESTS), "--rebatch-repeats", "1"]
    args += ["--rebatch-http-requests", str(REQUESTS), "--slo-phase-seconds", "2"]
    args += ["--agreement-images", "256", "--hey-requests", str(HEY_REQUESTS)]
    args += ["--hey-concurrency", str(HEY_CONCURRENCY), "--batch-requests", str(BATCH_REQUESTS)]
    args += ["--batch-hey-requests", str(BATCH_HEY_REQUESTS)]
    # The in-process step has no size knob small enough. Issue 17's serving step: efficiency and
    # overload on one server; no objective run, no front-end scaling (more servers to start). Issue 18's
    # anytime step has a test of its own (test_anytime_streams_in_exit_order_and_judges_deadlines), the
    # gRPC step one below (test_grpc_beside_http_answers_alike), issue 21's ImageNet step too
    # (test_imagenet_scale_runs_the_whole_path_on_a_narrow_config).
    args += (
        ["--skip", "inprocess", "frontends", "anytime", "grpc", "imagenet"]
        if HAS_HEY
        else ["--skip", "inprocess", "serving", "anytime", "grpc", "imagenet"]
    )
    args += [
        "--serving-seconds",
        "1",
        "--serving-warmup-seconds",
        "0.5",
        "--serving-inprocess-seconds",
        "0.2",
    ]
    args += ["--overload-clients", str(OVERLOAD_CLIENTS), "--overload-seconds", "1", "--overload-rounds", "2"]
    args += ["--overload-no-hold-rounds", "1", "--slo-objective-ms", "0"]
    done = _run(args, timeout=360)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    manifest = load_bundle(BUNDLE).manifest
    last_exit_flops = manifest.exits[-1].cumulative_flops

    # Item 4: ranet serve over HTTP, default point and full depth at every concurrency.
    http = json.loads((out / "http.json").read_text())
    assert sorted((r["concurrency"], r["budget"]) for r in http) == sorted(
        (c, b) for c in CONCURRENCY for b in ("default point", "full depth")
    )
    for row in http:
        assert (row["requests_sent"], row["requests_ok"], row["requests_failed"]) == (REQUESTS, REQUESTS, 0)
        assert row["labelled_images"] == REQUESTS and 0.0 <= row["accuracy"] <= 1.0
        assert row["server_queue_ms_mean"] >= 0 and row["server_inference_ms_mean"] > 0
        if row["budget"] == "full depth":
            assert row["exit_counts"] == {str(len(manifest.exits) - 1): REQUESTS}
            assert row["mean_flops_per_image"] == last_exit_flops

    # Item 5: the peers, same images for every server.
    peers = json.loads((out / "peers.json").read_text())
    assert peers["config"]["images"] == REQUESTS * len(CONCURRENCY)
    summary = peers["summary"]
    assert set(summary) == {"ranet_default", "ranet_full", "fastapi"}
    for entry in summary.values():
        _check_server_summary(entry, runs=len(CONCURRENCY))
        # The load generator's own CPU per request it sent, every run.
        assert all(row["client_cpu_us_per_request"] > 0 for row in entry["by_concurrency"].values())
    ours_full, by_hand = summary["ranet_full"], summary["fastapi"]
    # One model at full depth (onnxruntime stages vs PyTorch eager): the same answers on the same images,
    # up to a float-rounding flip on a near-tie.
    assert abs(ours_full["correct_images"] - by_hand["correct_images"]) <= 1
    assert by_hand["by_concurrency"]["1"]["mean_flops_per_image"] == last_exit_flops
    assert by_hand["by_concurrency"]["1"]["server_queue_ms"] is None  # it reports none; none invented
    default_flops = summary["ranet_default"]["by_concurrency"]["1"]["mean_flops_per_image"]
    assert manifest.exits[0].cumulative_flops <= default_flops <= last_exit_flops

    # Issue 17: hey drives every server when it is installed (and says why not otherwise); 16 images
    # per request at both points, judged against the manifest's FLOPs ratio.
    hey = peers["hey"]
    if shutil.which("hey") is None:
        assert "hey" in peers["skipped"] and not hey["summary"]
    else:
        assert set(hey["summary"]) == set(summary)
        for entry in hey["summary"].values():
            row = entry["by_concurrency"][str(HEY_CONCURRENCY)]
            assert row["requests_ok"] == HEY_REQUESTS and row["requests_failed"] == 0
            assert row["status_codes"] == {"200": HEY_REQUESTS} and row["throughput_rps"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"] and row["client_cpu_us_per_request"] > 0
        assert 0 <= hey["image"]["ranet_default_exit"] < len(manifest.exits)
        assert "### The same servers driven by hey" in (out / "peers.md").read_text()
    assert peers["versus_litserve"] == {}  # LitServe not run: no ratio made up
    assert peers["versus"] is None  # nor the phase that compares with it
    batch = peers["batch"]
    assert (batch["images_per_request"], batch["concurrency"], batch["requests"]) == (16, 4, BATCH_REQUESTS)
    for row in batch["by_variant"].values():
        assert row["images_ok"] == 16 * BATCH_REQUESTS and row["requests_failed"] == 0
        assert row["client_cpu_us_per_request"] > 0
    if HAS_HEY:
        # hey posts one body of the first 16 test images at both points, as many times as asked.
        assert batch["hey"]["images"] == [f"fmnist_test_{i:05d}.png" for i in range(16)]
        assert set(batch["hey"]["by_variant"]) == {"ranet_default", "ranet_full"}
        for row in batch["hey"]["by_variant"].values():
            assert row["status_codes"] == {"200": BATCH_HEY_REQUESTS} and row["requests_failed"] == 0
            assert row["images_per_s"] == pytest.approx(16 * row["throughput_rps"])
            assert row["client_cpu_us_per_request"] > 0
        assert batch["hey"]["by_variant"]["ranet_full"]["mean_flops_per_image"] == last_exit_flops
        assert batch["ratios"]["hey"] == pytest.approx(
            batch["hey"]["by_variant"]["ranet_default"]["images_per_s"]
            / batch["hey"]["by_variant"]["ranet_full"]["images_per_s"]
        )
    else:
        assert batch["hey"] is None and batch["ratios"]["hey"] is None
    assert batch["ratios"]["load_generator"] == batch["ratio"]
    assert batch["by_variant"]["ranet_full"]["mean_flops_per_image"] == last_exit_flops
    calibration = manifest.calibration
    assert calibration is not None
    point = next(p for p in calibration.points if p.name == calibration.default_point)
    assert batch["flops_ratio"] == pytest.approx(last_exit_flops / point.expected_flops)
    assert batch["ratio"] == pytest.approx(
        batch["by_variant"]["ranet_default"]["images_per_s"]
        / batch["by_variant"]["ranet_full"]["images_per_s"]
    )

    # The report: machine, versions, every section, the goals; plots are real PNGs.
    text = report.read_text()
    for needle in (
        "## Machine and versions",
        "| CPU |",
        "| torch |",
        "| onnxruntime |",
        "| java |",
        "## Goals",
    ):
        assert needle in text
    assert "# In process (items 1-3)" in text and "Not run in this invocation." in text
    assert "ranet serve, default point" in text and "FastAPI + eager, full depth" in text
    assert (
        f"{100 * by_hand['accuracy']:.2f} ({by_hand['correct_images']}/{by_hand['labelled_images']})" in text
    )
    assert "TorchServe was not run" in text  # its goals say why they are not measured
    context = json.loads((out / "summary.json").read_text())
    assert context["steps"]["http"]["returncode"] == 0 and "inprocess" not in context["steps"]
    assert [g["met"] for g in context["goals"]][3:6] == [None, None, None]
    assert [g["met"] for g in context["goals"]][9:12] == [None, None, None]  # LitServe not run
    assert context["goals"][9]["measured"] == "LitServe was not run"
    # 16 images per request vs the FLOPs ratio, both clients (without hey: never met, at most missed).
    assert context["goals"][12]["met"] in ((True, False) if HAS_HEY else (False, None))
    assert context["goals"][12]["measured"].startswith("load generator: ")

    # Issue 11: re-batching changes throughput, never the answers; both goals are judged.
    rebatch = json.loads((out / "rebatch.json").read_text())
    assert rebatch["requests"] == REQUESTS and rebatch["points"]
    for point in rebatch["points"].values():
        assert point["accuracy"]["rebatch"] == point["accuracy"]["per-batch"]
        assert point["high_load_images_per_s"]["rebatch"] > 0 and point["low_load"]["rebatch"]["p50_ms"] > 0
        stage_sizes = point["mean_stage_batch_size"]
        assert stage_sizes["rebatch"][0] == stage_sizes["per-batch"][0]  # stage 0 batches alike
    assert [g["met"] in (True, False) for g in context["goals"][6:8]] == [True, True]
    assert "# Survivor re-batching (issue 11)" in text
    assert set(rebatch["http"]["points"]) == set(rebatch["points"])

    # Issue 11: the latency objective under overload, both servers measured on labelled images.
    slo = json.loads((out / "slo.json").read_text())
    phases = {(p["server"], p["phase"]): p for p in slo["phases"]}
    assert set(phases) >= {("fixed", "overload"), ("adaptive", "overload"), ("adaptive", "recovery")}
    for phase in phases.values():
        assert phase["ok_200"] > 0 and phase["other"] == 0
        assert 0.0 <= phase["accuracy"] <= 100.0 and phase["images"] == 8 * phase["ok_200"]
    assert set(phases["fixed", "overload"]["points"]) == {slo["ceiling_point"]}  # the fixed point never moves
    assert slo["objective_ms"] > 0 and context["goals"][8]["met"] in (True, False)
    assert "# Operating points that follow load (issue 11)" in text

    # Issue 11: live agreement per early exit, next to what the validation split predicts.
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["images"] == 256 and agreement["exits"]
    assert sum(r["checked_live"] for r in agreement["exits"]) <= 256
    for row in agreement["exits"]:
        assert 0 <= row["live_agreement"] <= 100 and 0 <= row["validation_agreement"] <= 100
    assert "# Live exit-quality monitoring (issue 11)" in text
    for name in ("peers_throughput.png", "peers_p99.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({out.relative_to(tmp_path)}/{name})" in text

    # Issue 17: server efficiency and overload, one server, hey's CSV (when hey is installed).
    overload_goals = context["goals"][13:19]
    # Then issue 18's anytime step (three) and issue 21's ImageNet bars, skipped here.
    _importable_benchmarks()
    from imagenet.bars import BAR_NAMES

    assert len(context["goals"]) == 22 + len(BAR_NAMES)
    assert [g["met"] for g in context["goals"][19:]] == [None] * (3 + len(BAR_NAMES))
    assert "anytime" not in context["steps"] and "imagenet" not in context["steps"]
    assert context["goals"][22]["goal"].startswith("ImageNet scale: ")
    if not HAS_HEY:
        assert "serving" not in context["steps"] and [g["met"] for g in overload_goals] == [None] * 6
        return
    assert context["steps"]["serving"]["returncode"] == 0
    serving = json.loads((out / "serving.json").read_text())
    assert serving["parts"] == ["efficiency", "overload"] and "frontends" not in serving
    rows = serving["efficiency"]["rows"]
    assert [(r["point"], r["images_per_request"]) for r in rows] == [
        ("default point", 1),
        ("default point", 16),
        ("full depth", 1),
        ("full depth", 16),
    ]
    for row in rows:
        assert row["http_images_per_s"] > 0 and row["inprocess_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["http_images_per_s"] / row["inprocess_images_per_s"])
        assert row["inprocess_flight_batch"] == min(16 * row["images_per_request"], 32)
    overload = serving["overload"]
    assert overload["clients"] == OVERLOAD_CLIENTS and len(overload["rounds"]) == 2
    assert overload["processes"] >= 3  # supervisor, engine, at least one front-end
    for run in (overload["baseline"], *overload["rounds"]):
        assert run["ok"] > 0 and set(run["status_codes"]) <= {"200", "429"}
        assert run["server_errors_5xx"] == 0 and 0 < run["ok_p50_ms"] <= run["ok_p99_ms"]
    assert all(r["rss_after_mib"] > 100 for r in overload["rounds"]) and overload["rss_before_mib"] > 100
    # Beside every round, the client that honours Retry-After (benchmarks/probe.py) was answered.
    for run in overload["rounds"]:
        assert run["probe"]["connections"] == 32 and run["probe"]["errors"] == 0
        assert sum(run["probe"]["status_codes"].values()) > 0
        assert set(run["probe"]["status_codes"]) <= {"200", "429"}
    assert "slo" not in overload
    # The same overload with early retries not held: one round on its own server, report only.
    [no_hold] = overload["no_hold"]["rounds"]
    assert overload["no_hold"]["env"] == {"RANET_HOLD_EARLY_RETRIES": "false"}
    assert no_hold["ok"] > 0 and set(no_hold["status_codes"]) <= {"200", "429"}
    assert no_hold["server_errors_5xx"] == 0
    assert "RANET_HOLD_EARLY_RETRIES=false, round 1" in (out / "serving.md").read_text()
    # The goals are the default server's rounds, whatever the no-hold server did.
    assert overload_goals[0]["measured"].endswith(f"vs {overload['baseline']['ok_per_s']:.0f} req/s)")
    assert (
        overload_goals[0]["measured"]
        .split("(")[1]
        .startswith(", ".join(f"{r['ok_per_s']:.0f}" for r in overload["rounds"]))
    )
    assert [g["met"] in (True, False) for g in overload_goals[:2]] == [True, True]
    assert overload_goals[3]["met"] is True and overload_goals[4]["met"] in (True, False)
    assert overload_goals[5]["met"] is None  # no objective run asked for
    assert "# Serving: efficiency, front-end processes, overload (issue 17)" in text
    assert "### Server efficiency: HTTP images/s / in-process images/s" in text


def test_torchserve_handler_equals_ranet_serve_preprocessing_and_full_depth_model(tmp_path: Path) -> None:
    _importable_benchmarks()
    from full_depth import export_torchscript
    from torchserve_handler import RanetFullDepthHandler

    from common import fmnist_samples

    export_torchscript(BUNDLE, tmp_path)
    handler = RanetFullDepthHandler()
    handler.initialize(SimpleNamespace(system_properties={"model_dir": str(tmp_path)}))
    samples = fmnist_samples(48)
    answers = handler.handle([{"body": bytearray(s.data)} for s in samples], context=None)

    bundle = load_bundle(BUNDLE)
    reference = preprocess_batch([s.data for s in samples], bundle.manifest.input, ImageLimits())
    mine = np.stack([handler._tensor(s.data) for s in samples])
    np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5)
    with torch.no_grad():
        logits = bundle.load_model()(torch.from_numpy(reference))[-1]
    assert [a["class_index"] for a in answers] == logits.argmax(1).tolist()
    assert [a["label"] for a in answers] == [bundle.manifest.labels[k] for k in logits.argmax(1).tolist()]
    probabilities = torch.softmax(logits, 1).max(1).values.tolist()
    assert [a["confidence"] for a in answers] == pytest.approx(probabilities, abs=1e-4)


def _torchserve_missing() -> list[str]:
    _importable_benchmarks()
    from torchserve import missing_requirements

    return missing_requirements()


@pytest.mark.slow
def test_torchserve_leg_serves_the_same_model(tmp_path: Path) -> None:
    missing = _torchserve_missing()
    if missing:
        pytest.skip(f"TorchServe leg needs {', '.join(missing)}; `make bench` installs them")
    assert shutil.which("java") is not None
    args = [str(BENCH / "peers_http.py"), "--servers", "ranet", "torchserve", "--require-torchserve"]
    args += ["--requests", str(REQUESTS), "--warmup", "4", "--concurrency", *map(str, CONCURRENCY)]
    done = _run([*args, "--out", str(tmp_path)], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    peers = json.loads((tmp_path / "peers.json").read_text())
    summary = peers["summary"]
    assert set(summary) == {"ranet_default", "ranet_full", "torchserve"}
    for entry in summary.values():
        _check_server_summary(entry, runs=len(CONCURRENCY))
    assert abs(summary["torchserve"]["correct_images"] - summary["ranet_full"]["correct_images"]) <= 1
    setup = peers["servers"]["torchserve"]
    assert (setup["workers"], setup["batch_size"]) == (1, 32) and setup["max_batch_delay_ms"] >= 1
    for row in summary["torchserve"]["by_concurrency"].values():
        # TorchServe's own counters give the split: queue and inference are both measured.
        assert row["server_queue_ms"] is not None and row["server_queue_ms"] >= 0
        assert row["server_inference_ms"] is not None and row["server_inference_ms"] > 0


def _peer(throughput: dict[str, float], p99: dict[str, float], correct: int) -> dict[str, Any]:
    return {
        "accuracy": correct / 1000,
        "labelled_images": 1000,
        "by_concurrency": {c: {"throughput_rps": throughput[c], "p99_ms": p99[c]} for c in throughput},
    }


def _overload_run(
    ok_per_s: float, p99: float, rejected_p99: float | None, rss: float, probe_p99: float | None = None
) -> dict[str, Any]:
    probe = None
    if probe_p99 is not None:
        probe = {
            "connections": 16,
            "status_codes": {"429": 100, "200": 20},
            "rejected_p50_ms": probe_p99 / 2,
            "rejected_p99_ms": probe_p99,
            "rejected_max_ms": probe_p99 + 1,
            "rejected_p99_steady_ms": probe_p99 - 1,
            "ok_p50_ms": 40.0,
            "ok_p99_ms": 70.0,
            "errors": 0,
        }
    return {
        **({"probe": probe} if probe is not None else {}),
        "ok_per_s": ok_per_s,
        "ok_p50_ms": p99 / 2,
        "ok_p99_ms": p99,
        "rejected_429": 0 if rejected_p99 is None else 500,
        "rejected_p50_ms": None if rejected_p99 is None else rejected_p99 / 2,
        "rejected_p99_ms": rejected_p99,
        # Every 429 answered at once (none held as an early retry): 400 of 500.
        "rejected_immediate": 0 if rejected_p99 is None else 400,
        "rejected_immediate_p99_ms": rejected_p99,
        "server_errors_5xx": 0,
        "rss_after_mib": rss,
    }


def _serving_fixture() -> dict[str, Any]:
    """Overload figures: goodput 0.85 (met), admitted p99 up to 4.5x (missed in round 2), 429 p99 4 ms
    to the client honouring Retry-After (320 ms to hey's, held), no 5xx, memory +5% from round 1 to
    2, the objective run's p99 150 ms within 160 ms."""
    _importable_benchmarks()
    from serving import overload_figures

    baseline = _overload_run(1000.0, 20.0, None, 1000.0)
    rounds = [_overload_run(900.0, 60.0, 300.0, 1100.0, 3.0), _overload_run(850.0, 90.0, 320.0, 1155.0, 4.0)]
    slo_run = _overload_run(800.0, 150.0, 2.0, 1000.0)
    return {
        "overload": {
            "clients": 400,
            "baseline": baseline,
            "rss_before_mib": 1000.0,
            "rounds": rounds,
            "figures": overload_figures(baseline, rounds),
            "slo": {"objective_ms": 80.0, "run": slo_run},
        }
    }


def test_overload_goals_are_the_worst_round_against_16_clients() -> None:
    _importable_benchmarks()
    from run_all import overload_goals

    rows = overload_goals(_serving_fixture())
    assert [row["met"] for row in rows] == [True, False, True, True, True, True]
    assert rows[0]["measured"] == "0.85 (900, 850 vs 1000 req/s)"
    assert rows[1]["measured"] == "4.50x (60.0, 90.0 vs 20.0 ms)" and rows[1]["target"] == "<= 4x"
    # Judged on the probe's median (a client honouring Retry-After), its p99 and hey's held 429s beside.
    assert rows[2]["measured"] == (
        "2.0 ms (p50 1.5, 2.0 ms, 200 429s; p99 4.0 ms, after the first second 3.0 ms); hey's own 429s, "
        "resent at once: p99 320.0 ms (p50 150.0, 160.0 ms; 1000 429s, 800 answered at once: p99 320.0 "
        "ms; the rest held as early retries, or answered late)"
    )
    assert rows[4]["measured"].startswith("+5.0% (1000 MiB before, 1100, 1155 MiB after each round)")
    assert rows[5]["target"] == "<= 160 ms (2x the objective)" and rows[5]["measured"].startswith("150.0 ms")
    # One round: no memory verdict; no 429 at all: no rejection latency to judge; a 5xx: missed.
    serving = _serving_fixture()
    overload = serving["overload"]
    overload["rounds"] = [_overload_run(900.0, 60.0, None, 1100.0)]
    overload["rounds"][0]["server_errors_5xx"] = 2
    del overload["slo"]
    from serving import overload_figures

    overload["figures"] = overload_figures(overload["baseline"], overload["rounds"])
    rows = overload_goals(serving)
    assert [row["met"] for row in rows] == [True, True, None, False, None, None]
    assert rows[2]["measured"] == "no 429s" and rows[3]["measured"] == "2"
    # A slow tail alone (p99 8 ms, p50 4 ms) still meets it; a median slower than a few ms misses it,
    # however fast hey's 429s were.
    serving = _serving_fixture()
    overload = serving["overload"]
    overload["rounds"][1] = _overload_run(850.0, 90.0, 4.0, 1155.0, 8.0)
    overload["figures"] = overload_figures(overload["baseline"], overload["rounds"])
    assert overload_goals(serving)[2]["met"] is True
    overload["rounds"][1] = _overload_run(850.0, 90.0, 4.0, 1155.0, 12.0)
    overload["figures"] = overload_figures(overload["baseline"], overload["rounds"])
    assert overload_goals(serving)[2]["met"] is False


def test_goal_verdicts_follow_the_figures() -> None:
    _importable_benchmarks()
    from run_all import goals

    inprocess = {
        "split_cost": {"1": {"ratio": 1.3}, "64": {"ratio": 1.05}},
        "early_exit": {
            "flops_ratio": 4.0,  # goal: speedup >= 3.2 at every batch
            "by_batch": {"1": {"speedup_vs_full_depth": 5.0}, "128": {"speedup_vs_full_depth": 3.0}},
        },
    }
    peers = {
        "summary": {
            "ranet_default": _peer({"1": 250.0, "4": 300.0}, {"1": 10.0, "4": 20.0}, correct=929),
            "torchserve": _peer({"1": 100.0, "4": 200.0}, {"1": 11.0, "4": 40.0}, correct=932),
        },
        # Issue 17: default point >= 2.5x at 16 (met by both clients), >= 2x at 64 (hey misses it);
        # full depth >= 1.2x at 16 and 64 (hey at 64 not measured: nothing missed, so not measured).
        "versus_litserve": {
            "load_generator": {
                "16": {"ranet_default": 2.6, "ranet_full": 1.3},
                "64": {"ranet_default": 2.1, "ranet_full": 1.25},
            },
            "hey": {"16": {"ranet_default": 2.5, "ranet_full": 1.2}, "64": {"ranet_default": 1.9}},
        },
        "batch": {
            "images_per_request": 16,
            "concurrency": 4,
            "requests": 100,
            "flops_ratio": 4.0,  # goal: >= 3.2
            "ratio": 3.1,
            "by_variant": {"ranet_default": {"images_per_s": 3100.0}, "ranet_full": {"images_per_s": 1000.0}},
        },
    }
    rebatch = {
        "points": {
            "a": {"throughput_ratio": 1.3, "p50_ratio": 1.01},
            "b": {"throughput_ratio": 0.9, "p50_ratio": 1.2},
        }
    }
    slo = {
        "objective_ms": 100.0,
        "multiple": 2.0,
        "phases": [
            {
                "server": "fixed",
                "phase": "overload",
                "admitted_p99_ms": 900.0,
                "within_objective": False,
                "accuracy": 93.1,
            },
            {
                "server": "adaptive",
                "phase": "overload",
                "admitted_p99_ms": 80.0,
                "within_objective": True,
                "accuracy": 92.7,
            },
        ],
    }
    rows = goals(inprocess, peers, rebatch, slo, _serving_fixture())
    assert [row["met"] for row in rows] == [
        *(False, True, False, False, True, True, False, False, True),
        *(True, False, None, False),
        *(True, False, True, True, True, True),
        *(None, None, None),  # issue 18's anytime step: not run
    ]
    assert rows[9]["goal"].startswith("HTTP throughput at 16 clients, ranet serve (default point) / LitServe")
    assert rows[9]["measured"] == "load generator c=16: 2.60x, hey c=16: 2.50x"
    assert rows[10]["target"] == ">= 2.0x at 64 clients, with both clients"
    assert rows[11]["measured"].endswith("hey c=16: 1.20x, hey c=64: not measured")
    assert rows[12]["target"] == ">= 3.20 (80% of the FLOPs ratio), with both clients"
    assert rows[12]["measured"] == "load generator: 3.10 (3100 vs 1000 img/s), hey: not measured"
    assert rows[0]["goal"].startswith("split cost at batch 1 ") and rows[0]["measured"] == "1.30"
    assert rows[8]["measured"] == "adaptive 80.0 ms (92.7%), fixed 900.0 ms (93.1%)"
    assert rows[6]["measured"] == "a: 1.30, b: 0.90"
    assert "lowest at batch 128" in rows[2]["measured"]
    assert rows[3]["measured"] == "c=1: 2.50x, c=4: 1.50x"
    assert "-0.30 points" in rows[4]["measured"]
    skipped = {"torchserve": "missing java", "litserve": "missing litserve"}
    missing = goals(None, {"summary": {}, "skipped": skipped})
    assert [row["met"] for row in missing] == [None] * 21
    assert missing[5]["measured"] == "missing java"
    assert missing[8]["measured"] == "missing litserve" and missing[11]["measured"] is None


def _batch_fixture(load_ratio: float | None, hey_ratio: float | None) -> dict[str, Any]:
    """16 images per request, FLOPs ratio 4.0 (goal >= 3.2); full depth at 1000 img/s for both clients."""

    def variants(ratio: float) -> dict[str, Any]:
        return {"ranet_default": {"images_per_s": 1000.0 * ratio}, "ranet_full": {"images_per_s": 1000.0}}

    batch: dict[str, Any] = {
        "images_per_request": 16,
        "concurrency": 4,
        "flops_ratio": 4.0,
        "by_variant": variants(load_ratio) if load_ratio else {},
        "ratio": load_ratio,
        "hey": None,
        "ratios": {"load_generator": load_ratio, "hey": hey_ratio},
    }
    if hey_ratio is not None:
        batch["hey"] = {
            "by_variant": variants(hey_ratio),
            "ratio": hey_ratio,
            "images": [f"fmnist_test_{i:05d}.png" for i in range(16)],
            "body_flops_ratio": 4.45,
        }
    return batch


def test_many_images_goal_needs_both_clients() -> None:
    _importable_benchmarks()
    from run_all import batch_goal

    both = batch_goal(_batch_fixture(3.3, 3.9))
    assert both["met"] is True and both["target"] == ">= 3.20 (80% of the FLOPs ratio), with both clients"
    assert both["goal"] == (
        "16 images per request, 4 clients: default-point img/s / full-depth img/s (FLOPs ratio 4.00)"
    )
    assert both["measured"] == (
        "load generator: 3.30 (3300 vs 1000 img/s), hey: 3.90 (3900 vs 1000 img/s; FLOPs ratio of its "
        "16 images 4.45)"
    )
    # The load generator's own CPU caps the default point: one client missing is enough to miss.
    assert batch_goal(_batch_fixture(1.2, 3.9))["met"] is False
    assert batch_goal(_batch_fixture(3.3, 2.0))["met"] is False
    # hey not run: met by the load generator alone is not met; missed by it is missed.
    only_load = batch_goal(_batch_fixture(3.3, None))
    assert only_load["met"] is None and only_load["measured"].endswith("hey: not measured")
    assert batch_goal(_batch_fixture(1.2, None))["met"] is False
    only_hey = batch_goal(_batch_fixture(None, 3.9))
    assert only_hey["met"] is None and only_hey["measured"].startswith(
        "load generator: not measured, hey: 3.90"
    )
    # Nothing measured, or an older peers.json with the load generator's ratio only.
    assert batch_goal({})["met"] is None and batch_goal({})["measured"] is None
    old = _batch_fixture(3.3, None)
    del old["ratios"], old["hey"]
    assert batch_goal(old)["met"] is None and batch_goal(old)["measured"].startswith("load generator: 3.30")


def _load_batch_run(variant: str, images_per_s: float, flops: float, cpu_us: float) -> dict[str, Any]:
    return {
        "variant": variant,
        "images_per_s": images_per_s,
        "throughput_rps": images_per_s / 16,
        "latency_ms": {"p50": 30.0, "p99": 60.0},
        "mean_flops_per_image": flops,
        "labelled_images": 160,
        "correct_images": 150,
        "images_ok": 160,
        "requests_failed": 0,
        "client_cpu_us_per_request": cpu_us,
    }


def _hey_batch_run(variant: str, ok_per_s: float, cpu_us: float) -> dict[str, Any]:
    return {
        "variant": variant,
        "ok_per_s": ok_per_s,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
        "ok": 400,
        "failed": 0,
        "status_codes": {"200": 400},
        "client_cpu_us_per_request": cpu_us,
    }


def test_many_images_summary_and_table_show_both_clients_and_their_cpu() -> None:
    _importable_benchmarks()
    from peers_http import render, summarize_batch

    manifest = load_bundle(BUNDLE).manifest
    full = float(manifest.exits[-1].cumulative_flops)
    runs = [
        _load_batch_run("ranet_default", 1200.0, full / 4, 7000.0),
        _load_batch_run("ranet_full", 800.0, full, 7200.0),
        _load_batch_run("ranet_default", 1250.0, full / 4, 7100.0),
        _load_batch_run("ranet_full", 820.0, full, 7300.0),
    ]
    hey_runs = [
        _hey_batch_run("ranet_default", 200.0, 450.0),
        _hey_batch_run("ranet_full", 55.0, 650.0),
        _hey_batch_run("ranet_default", 210.0, 470.0),
        _hey_batch_run("ranet_full", 50.0, 700.0),
    ]
    body = {
        "images": [f"fmnist_test_{i:05d}.png" for i in range(16)],
        "mean_flops_per_image": {"ranet_default": full / 5, "ranet_full": full},
    }
    batch = summarize_batch(
        runs,
        hey_runs,
        manifest,
        images_per_request=16,
        concurrency=4,
        requests=10,
        hey_requests=400,
        hey_body=body,
    )
    assert batch is not None
    assert batch["ratio"] == batch["ratios"]["load_generator"] == pytest.approx(1225.0 / 810.0)
    hey = batch["hey"]
    # Medians over rounds; hey's images/s is its 2xx requests/s times the images in its body.
    assert hey["by_variant"]["ranet_default"]["images_per_s"] == pytest.approx(16 * 205.0)
    assert hey["by_variant"]["ranet_full"]["images_per_s"] == pytest.approx(16 * 52.5)
    assert batch["ratios"]["hey"] == hey["ratio"] == pytest.approx(205.0 / 52.5)
    assert hey["body_flops_ratio"] == pytest.approx(5.0)
    assert hey["by_variant"]["ranet_full"]["client_cpu_us_per_request"] == pytest.approx(675.0)
    assert batch["by_variant"]["ranet_default"]["client_cpu_us_per_request"] == pytest.approx(7050.0)
    assert (
        summarize_batch([], [], manifest, images_per_request=16, concurrency=4, requests=0, hey_requests=0)
        is None
    )

    cpu = {"client_cpu_us_per_request": 1010.0}
    row = {
        "throughput_rps": 400.0,
        "p50_ms": 8.0,
        "p99_ms": 15.0,
        "server_queue_ms": 0.5,
        "server_inference_ms": 1.0,
        "mean_flops_per_image": 4e6,
        "accuracy": 0.9,
        "requests_failed": 0,
        **cpu,
    }
    hey_row = {
        "throughput_rps": 800.0,
        "p50_ms": 4.0,
        "p99_ms": 9.0,
        "requests_ok": 992,
        "requests_failed": 0,
        "status_codes": {"200": 992},
        "errors": {},
        "client_cpu_us_per_request": 305.0,
    }
    entry = {"label": "ranet serve, default point", "requests_sent": 800, "requests_ok": 800}
    entry |= {"requests_failed": 0, "accuracy": 0.9, "correct_images": 720, "labelled_images": 800}
    result = {
        "config": {"requests": 800, "concurrency": [16], "rounds": 1, "images": 800},
        "summary": {"ranet_default": {**entry, "by_concurrency": {"16": row}}},
        "hey": {
            "requests": 1000,
            "version": "0.1.4",
            "image": {"name": "fmnist_test_00000.png"},
            "summary": {"ranet_default": {"label": entry["label"], "by_concurrency": {"16": hey_row}}},
        },
        "versus_litserve": {},
        "batch": batch,
    }
    text = render(result)
    assert "| errors | client CPU us/request |" in text and "| 90.00 | 0 | 1010 |" in text
    assert "| hey CPU us/request |" in text and "| 200: 992 | 305 |" in text
    assert "### ranet serve, 16 images per request, 4 clients (load generator and hey)" in text
    assert "| hey | ranet serve, default point | 3280 | 205 | 10.0 | 20.0 |" in text
    assert "| load generator | ranet serve, full depth | 810 | 51 | 30.0 | 60.0 |" in text
    assert "hey: `hey -n 400 -c 4`, one body of 16 distinct test images" in text
    assert "of the 16 images hey sends: 5.00" in text
    assert f"load generator {1225.0 / 810.0:.2f}x, hey {205.0 / 52.5:.2f}x" in text


def _with_csv_fields(run: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    statuses = {"200": int(run["ok_per_s"] * elapsed_s), "429": run["rejected_429"]}
    return {**run, "elapsed_s": elapsed_s, "status_codes": statuses, "rss_peak_mib": run["rss_after_mib"]}


def test_overload_table_sets_not_holding_early_retries_beside_the_default() -> None:
    _importable_benchmarks()
    from run_all import overload_goals
    from serving import hold_trade_off, overload_figures, render

    serving = _serving_fixture()
    overload = serving["overload"]
    overload["rounds"] = [_with_csv_fields(r, 15.0) for r in overload["rounds"]]
    overload["slo"]["run"] = _with_csv_fields(overload["slo"]["run"], 15.0)
    # Not held: every 429 answered in milliseconds, many more of them, less goodput, a worse p99.
    no_hold = _with_csv_fields(_overload_run(600.0, 140.0, 6.0, 1100.0), 15.0)
    no_hold |= {"rejected_429": 90000, "rejected_p50_ms": 1.5, "rejected_immediate": 90000}
    goals_before = overload_goals(serving)
    overload["no_hold"] = {
        "env": {"RANET_HOLD_EARLY_RETRIES": "false"},
        "rounds": [no_hold],
        "figures": overload_figures(overload["baseline"], [no_hold]),
    }
    trade = hold_trade_off(overload)
    assert trade["held"]["ok_per_s"] == pytest.approx(875.0) and trade["not_held"]["ok_per_s"] == 600.0
    assert (
        trade["held"]["rejected_per_s"] == pytest.approx(500 / 15)
        and trade["not_held"]["rejected_per_s"] == 6000
    )
    # The goals stay the default server's.
    assert overload_goals(serving) == goals_before
    text = render({"hey_version": "0.1.4", "seconds": 5.0, "threads": 2, "overload": overload})
    assert "| 429s | 429/s | 429 p50 ms | 429 p99 ms |" in text
    assert "| round 1 | 15.0 | 900 | 0.90 | 30.0 | 60.0 | 3.00 | 500 | 33 | 150.0 | 300.0 |" in text
    assert (
        "| RANET_HOLD_EARLY_RETRIES=false, round 1 | 15.0 | 600 | 0.60 | 70.0 | 140.0 | 7.00 | 90000 | 6000 "
        "| 1.5 | 6.0 | 90000, 6.0 | 0 |"
    ) in text
    assert "| RANET_SLO_P99_MS=80, default point | 15.0 | 800 | - |" in text
    assert "goodput 875 vs 600 200/s" in text and "33 vs 6000 429/s" in text
    assert "429 p99 310.0 vs 6.0 ms" in text
    # The client honouring Retry-After, beside the rounds that had one (not the no-hold fixture's).
    assert "| round 2 | {'429': 100, '200': 20} | 2.0 | 4.0 | 3.0 | 5.0 | 40.0 | 70.0 | 0 |" in text
    assert "RANET_HOLD_EARLY_RETRIES=false, round 1 | {" not in text


def _hey_module() -> Any:
    _importable_benchmarks()
    import hey

    return hey


HEY_SAMPLE = """
Summary:
  Total:\t0.4880 secs
  Slowest:\t0.0514 secs
  Fastest:\t0.0178 secs
  Average:\t0.0266 secs
  Requests/sec:\t590.1059
\x20\x20
  Total data:\t19872 bytes
  Size/request:\t69 bytes

Response time histogram:
  0.018 [1]\t|
  0.021 [35]\t|■■■■■■■■■■■■■■■
  0.025 [65]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.028 [94]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.031 [62]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.035 [6]\t|■■■
  0.038 [20]\t|■■■■■■■■■
  0.041 [0]\t|
  0.045 [0]\t|
  0.048 [0]\t|
  0.051 [5]\t|■■


Latency distribution:
  10% in 0.0206 secs
  25% in 0.0235 secs
  50% in 0.0260 secs
  75% in 0.0290 secs
  90% in 0.0342 secs
  95% in 0.0353 secs
  99% in 0.0498 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0178 secs, 0.0514 secs
  DNS-lookup:\t0.0000 secs, 0.0000 secs, 0.0000 secs
  req write:\t0.0000 secs, 0.0000 secs, 0.0041 secs
  resp wait:\t0.0264 secs, 0.0175 secs, 0.0502 secs
  resp read:\t0.0001 secs, 0.0000 secs, 0.0038 secs

Status code distribution:
  [200]\t288 responses



"""


HEY_REFUSED = """
Summary:
  Total:\t0.0006 secs
  Slowest:\t0.0000 secs
  Fastest:\t0.0000 secs
  Average:\t NaN secs
  Requests/sec:\t14453.4779
\x20\x20

Response time histogram:


Latency distribution:

Details (average, fastest, slowest):
  DNS+dialup:\t NaN secs, 0.0000 secs, 0.0000 secs
  DNS-lookup:\t NaN secs, 0.0000 secs, 0.0000 secs
  req write:\t NaN secs, 0.0000 secs, 0.0000 secs
  resp wait:\t NaN secs, 0.0000 secs, 0.0000 secs
  resp read:\t NaN secs, 0.0000 secs, 0.0000 secs

Status code distribution:

Error distribution:
  [8]\tPost "http://127.0.0.1:8399/predict": dial tcp 127.0.0.1:8399: connect: connection refused

"""


def test_hey_summary_parser_reads_captured_output() -> None:
    hey = _hey_module()
    # Captured from `hey -n 300 -c 16` against the LitServe peer: 300 // 16 * 16 = 288 sent.
    summary = hey.parse_summary(HEY_SAMPLE)
    assert summary.total_s == pytest.approx(0.4880)
    assert summary.requests_per_s == pytest.approx(590.1059)
    assert summary.p50_ms == pytest.approx(26.0) and summary.p99_ms == pytest.approx(49.8)
    assert summary.status_codes == {"200": 288} and summary.errors == {}
    assert (summary.ok, summary.failed) == (288, 0)
    assert summary.ok_per_s == pytest.approx(288 / 0.4880)
    assert summary.to_dict()["ok_per_s"] == pytest.approx(summary.ok_per_s)
    # Every request refused: hey still prints a request rate; nothing is answered, no latency exists.
    refused = hey.parse_summary(HEY_REFUSED)
    assert refused.requests_per_s > 0 and refused.ok_per_s == 0.0
    assert (refused.p50_ms, refused.p99_ms) == (None, None)
    assert refused.status_codes == {} and refused.failed == 8
    [(message, count)] = refused.errors.items()
    assert count == 8 and "connection refused" in message
    mixed = HEY_SAMPLE.replace("[200]\t288 responses", "[200]\t280 responses\n  [503]\t8 responses")
    assert hey.parse_summary(mixed).failed == 8 and hey.parse_summary(mixed).ok == 280
    with pytest.raises(ValueError, match="not a hey summary"):
        hey.parse_summary("connection refused")
    # hey gives each worker N // C requests: ask for a multiple of C, at least C.
    assert [hey.requests_for(n, c) for n, c in ((1000, 64), (1000, 16), (10, 64))] == [960, 992, 64]


def test_hey_body_is_one_multipart_image_in_the_field_file(tmp_path: Path) -> None:
    import email.parser
    import email.policy

    hey = _hey_module()
    image = (ROOT / "clients/python/ranet_client/samples/fmnist_test_00000.png").read_bytes()
    content_type = hey.multipart_body(image, tmp_path / "body")
    assert content_type.startswith("multipart/form-data; boundary=")
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + (tmp_path / "body").read_bytes()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    [part] = list(message.iter_parts())
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_content_type() == "image/png" and part.get_payload(decode=True) == image


def test_hey_body_holds_several_images_as_several_file_parts(tmp_path: Path) -> None:
    import email.parser
    import email.policy

    hey = _hey_module()
    _importable_benchmarks()
    from common import fmnist_samples

    images = [s.data for s in fmnist_samples(16)]
    content_type = hey.multipart_body(images, tmp_path / "body")
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + (tmp_path / "body").read_bytes()
    parts = list(email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw).iter_parts())
    assert [part.get_param("name", header="content-disposition") for part in parts] == ["file"] * 16
    assert [part.get_payload(decode=True) for part in parts] == images
    with pytest.raises(ValueError, match="at least one image"):
        hey.multipart_body([], tmp_path / "empty")


# `hey -z 2s -c 4 -o csv` against a server that sheds (shape captured from hey 0.1.4): every answered
# request, no trailing newline; transport errors never appear in this format.
HEY_CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0210,0.0013,0.0000,0.0001,0.0195,0.0001,200,0.0003
0.0012,0.0003,0.0000,0.0000,0.0008,0.0000,429,0.0004
0.0250,0.0002,0.0000,0.0000,0.0247,0.0001,200,0.0011
0.0021,0.0000,0.0000,0.0000,0.0020,0.0000,429,0.0216
0.0300,0.0000,0.0000,0.0000,0.0299,0.0001,200,0.0240
0.0035,0.0000,0.0000,0.0000,0.0034,0.0000,429,0.0251
0.0400,0.0000,0.0000,0.0000,0.0399,0.0001,503,1.9700
0.1000,0.0000,0.0000,0.0000,0.0999,0.0001,200,1.9000"""


def test_hey_csv_parser_splits_admitted_from_rejected_latency() -> None:
    hey = _hey_module()
    rows = hey.parse_csv(HEY_CSV + "\n\n")
    assert len(rows) == 8 and rows[0] == hey.CsvRow(latency_s=0.021, status=200, offset_s=0.0003)
    run = hey.CsvRun.from_rows(rows, fallback_elapsed_s=99.0)
    # The run lasts from hey's start to its last answer: 1.97 + 0.04 s.
    assert run.elapsed_s == pytest.approx(2.01)
    assert run.statuses() == {"200": 4, "429": 3, "503": 1}
    assert (run.count(200), run.count(429), run.count("5xx"), run.count("4xx")) == (4, 3, 1, 3)
    assert run.per_s(200) == pytest.approx(4 / 2.01)
    # Nearest rank over the 200s only (21, 25, 30, 100 ms): the 429s' 1-3.5 ms do not pull it down.
    assert run.percentile_ms(200, 50) == pytest.approx(25.0) and run.percentile_ms(200, 99) == pytest.approx(
        100.0
    )
    assert run.percentile_ms(429, 50) == pytest.approx(2.1) and run.percentile_ms(429, 99) == pytest.approx(
        3.5
    )
    assert run.percentile_ms(404, 99) is None
    summary = run.summary()
    assert (summary["ok"], summary["rejected_429"], summary["server_errors_5xx"]) == (4, 3, 1)
    assert summary["ok_p99_ms"] == pytest.approx(100.0) and summary["rejected_p50_ms"] == pytest.approx(2.1)
    # Nothing answered: the wall time measured around hey is the denominator; no latency is made up.
    empty = hey.CsvRun.from_rows(hey.parse_csv(HEY_CSV.splitlines()[0]), fallback_elapsed_s=2.5)
    assert empty.elapsed_s == 2.5 and empty.per_s(200) == 0.0 and empty.summary()["ok_p99_ms"] is None
    # Columns are found by name, not position.
    swapped = "status-code,offset,response-time\n200,0.5,0.010\n"
    assert hey.parse_csv(swapped) == [hey.CsvRow(latency_s=0.010, status=200, offset_s=0.5)]
    assert [hey.nearest_rank(list(range(1, 101)), q) for q in (50, 99, 100)] == [50, 99, 100]
    assert hey.nearest_rank([7.0], 99) == 7.0 and hey.nearest_rank([], 50) is None
    for bad in ("Summary:\n  Total: 1 secs", HEY_CSV + "\n0.1,200", HEY_CSV + "\n0.1,0,0,0,0,0,abc,0"):
        with pytest.raises(ValueError):
            hey.parse_csv(bad)


def test_anytime_streams_in_exit_order_and_judges_deadlines(tmp_path: Path) -> None:
    """benchmarks/anytime.py in a few seconds: a server on the default bundle, 12 images streamed at
    each point, then every deadline configuration for under a second of open-loop overload."""
    out = tmp_path / "results"
    args = [str(BENCH / "anytime.py"), "--stream-images", "12", "--stream-clients", "2", "--images", "200"]
    args += ["--warmup-seconds", "0.3", "--capacity-seconds", "1", "--unloaded-seconds", "0.5"]
    args += ["--phase-seconds", "0.7", "--settle-seconds", "0.2", "--timeout", "5", "--out", str(out)]
    done = _run(args, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "anytime.json").read_text())
    last = len(load_bundle(BUNDLE).manifest.exits) - 1

    # Part A: every image's events in exit order; at full depth every image passes every exit.
    streaming = report["streaming"]
    assert streaming["in_order"] is True and streaming["order_problems"] == []
    full, default = streaming["full_depth"], streaming["default_point"]
    for point in (full, default):
        assert point["images"] == 12 and point["out_of_order"] == 0
        assert (
            point["first_event_ms"]["p50"] <= point["final_event_ms"]["p50"] <= point["done_event_ms"]["p50"]
        )
        assert 0 < point["first_over_final_p50"] <= 1
        assert 0.0 <= point["accuracy_first_event"] <= 1.0 and 0.0 <= point["accuracy_final_event"] <= 1.0
    assert full["final_exit_counts"] == {str(last): 12} and full["mean_events_per_image"] == last + 1
    assert default["mean_events_per_image"] == pytest.approx(default["mean_final_exit"] + 1)
    deep = default["deep"]
    assert 0.0 <= deep["share"] <= 1.0 and deep["images"] == round(deep["share"] * 12)

    # Part B: the deadline follows the unloaded latency; every configuration's shares sum to 1.
    deadlines = report["deadlines"]
    assert deadlines["capacity_rps"] > 0 and deadlines["offered_rps"] == pytest.approx(
        2 * deadlines["capacity_rps"], rel=0.01
    )
    # D = 2.5 x the unloaded p50 (the report rounds both to 0.1 and 0.01 ms).
    assert deadlines["deadline_ms"] == pytest.approx(2.5 * deadlines["unloaded_p50_ms"], abs=0.06)
    configs = {c["name"]: c for c in deadlines["configs"]}
    assert len(configs) == 5
    for config in configs.values():
        assert config["requests"] > 0 and sum(config["counts"].values()) == config["requests"]
        assert sum(config["shares"].values()) == pytest.approx(1.0, abs=1e-3)
        for key in ("accuracy_answered", "accuracy_within_deadline", "accuracy_all_requests"):
            assert config[key] is None or 0.0 <= config[key] <= 1.0
        assert config["accuracy_all_requests"] <= config["shares"]["within_deadline"] + 1e-4
    error = configs["full depth, on_deadline=error"]
    best = configs["full depth, on_deadline=best"]
    reference = configs["full depth, no deadline (reference)"]
    assert error["deadline_limited_share"] in (None, 0.0) and error["mean_exit"] in (None, float(last))
    assert reference["counts"]["deadline_504"] == 0 and reference["deadline_limited_share"] in (None, 0.0)
    assert reference["mean_exit"] in (None, float(last))

    def answered(config: dict[str, Any]) -> float:
        return float(config["shares"]["within_deadline"] + config["shares"]["late_200"])

    # What best is for: under the same deadline it answers (a shallower exit) where error answers 504.
    assert answered(best) >= answered(error) - 0.02
    assert best["counts"]["deadline_504"] <= error["counts"]["deadline_504"]
    text = (out / "anytime.md").read_text()
    assert "Events in exit order for every image: **yes**" in text
    assert "| full depth, on_deadline=best |" in text

    # run_all.py: the step's goals and its section of the report.
    _importable_benchmarks()
    from run_all import anytime_goals, render_report

    rows = anytime_goals(report)
    assert [row["met"] for row in rows][:1] == [True] and rows[0]["measured"] == "0 of 24 images out of order"
    assert rows[2]["met"] is (answered(best) >= answered(error))
    context = {
        "command": "benchmarks/run_all.py",
        "finished": "now",
        "wall_s": report["wall_s"],
        "bundle": "model_store/ranet-fmnist/1",
        "machine": report["machine"],
        "versions": report["versions"],
        "steps": {"anytime": {"command": "benchmarks/anytime.py", "returncode": 0, "wall_s": 1.0}},
        "goals": rows,
        "plots": [],
    }
    rendered = render_report(context, out, tmp_path / "REPORT.md")
    assert "# Anytime prediction: streaming and deadlines (issue 18)" in rendered
    assert text.strip() in rendered and "streaming: events in exit order" in rendered


def test_process_tree_rss_covers_children(tmp_path: Path) -> None:
    _importable_benchmarks()
    from serving import process_tree, tree_rss_mib

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        assert tree_rss_mib(os.getpid()) > tree_rss_mib(child.pid) > 0
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_HEY, reason="the serving step needs hey (Debian package; make bench installs it)")
def test_serving_front_end_scaling_and_objective_run(tmp_path: Path) -> None:
    args = [str(BENCH / "serving.py"), "--parts", "frontends", "overload", "--frontends", "one", "1", "2"]
    args += ["--seconds", "1", "--warmup-seconds", "0.5", "--inprocess-seconds", "0.2"]
    args += ["--overload-clients", str(OVERLOAD_CLIENTS), "--overload-seconds", "1", "--overload-rounds", "1"]
    done = _run([*args, "--out", str(tmp_path)], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    serving = json.loads((tmp_path / "serving.json").read_text())
    runs = serving["frontends"]["runs"]
    assert set(runs) == {"one", "1", "2"}
    assert runs["one"]["frontend_pids"] == [] and [len(runs[k]["frontend_pids"]) for k in "12"] == [1, 2]
    for run in runs.values():
        assert run["ok"] > 0 and run["status_codes"] == {"200": run["ok"]}
    projection = serving["frontends"]["projection"]
    assert projection["per_frontend_rps"] == runs["1"]["ok_per_s"]
    assert projection["projected_rps"] <= projection["frontend_bound_rps"]
    assert projection["projected_rps"] <= serving["inprocess_images_per_s"]["default/1/32"]
    slo = serving["overload"]["slo"]
    assert slo["objective_ms"] == 80.0 and slo["run"]["ok"] > 0 and slo["run"]["server_errors_5xx"] == 0
    assert "Projection for 16 cores" in (tmp_path / "serving.md").read_text()


def test_litserve_peer_preprocessing_equals_ranet_serve() -> None:
    pytest.importorskip("litserve", reason="the LitServe peer needs the bench extra (make bench)")
    _importable_benchmarks()
    from full_depth import preprocess_facts
    from litserve_onnx import to_planes

    from common import fmnist_samples

    bundle = load_bundle(BUNDLE)
    spec = preprocess_facts(bundle)
    samples = fmnist_samples(48)
    reference = preprocess_batch([s.data for s in samples], bundle.manifest.input, ImageLimits())
    mine = np.stack([to_planes(s.data, spec) for s in samples])
    assert mine.dtype == np.float32
    np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5)


def _litserve_leg_missing() -> list[str]:
    _importable_benchmarks()
    from peers_http import litserve_missing

    missing = litserve_missing()
    if shutil.which("hey") is None:
        missing.append("hey (Debian package)")
    return missing


@pytest.mark.slow
def test_litserve_leg_serves_the_same_model_to_both_clients(tmp_path: Path) -> None:
    missing = _litserve_leg_missing()
    if missing:
        pytest.skip(f"LitServe leg needs {', '.join(missing)}; `make bench` installs them")
    args = [str(BENCH / "peers_http.py"), "--servers", "ranet", "litserve", "--require-litserve"]
    args += ["--requests", str(REQUESTS), "--warmup", "4", "--concurrency", *map(str, CONCURRENCY)]
    args += ["--hey-requests", str(HEY_REQUESTS), "--hey-concurrency", *map(str, CONCURRENCY)]
    args += ["--batch-requests", "0", "--versus-requests", str(VERSUS_REQUESTS), "--versus-rounds", "2"]
    done = _run([*args, "--out", str(tmp_path)], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    peers = json.loads((tmp_path / "peers.json").read_text())
    summary = peers["summary"]
    assert set(summary) == {"ranet_default", "ranet_full", "litserve"}
    for entry in summary.values():
        _check_server_summary(entry, runs=len(CONCURRENCY))
    # One model at full depth (onnxruntime stages vs one onnxruntime graph): the same answers.
    assert abs(summary["litserve"]["correct_images"] - summary["ranet_full"]["correct_images"]) <= 1
    setup = peers["servers"]["litserve"]
    assert (setup["max_batch_size"], setup["batch_timeout_ms"], setup["threads"]) == (32, 2.0, 2)
    for entry in peers["hey"]["summary"].values():
        for row in entry["by_concurrency"].values():
            assert row["status_codes"] == {"200": HEY_REQUESTS - HEY_REQUESTS % 2}
    # The ratios come from the dedicated phase: both clients, every issue-17 concurrency, two rounds of
    # the three servers, the medians of that phase's runs (not the sweep's figures).
    versus = peers["versus"]
    assert (versus["requests"], versus["rounds"], versus["concurrency"]) == (VERSUS_REQUESTS, 2, [16, 64])
    for client in ("load_generator", "hey"):
        table = versus[client]
        assert set(table) == {"ranet_default", "ranet_full", "litserve"}
        for c in ("16", "64"):
            rows = {key: table[key]["by_concurrency"][c] for key in table}
            assert all(row["rounds"] == 2 and row["throughput_rps"] > 0 for row in rows.values())
            ratios = peers["versus_litserve"][client][c]
            theirs = rows["litserve"]["throughput_rps"]
            assert ratios["ranet_full"] == pytest.approx(rows["ranet_full"]["throughput_rps"] / theirs)
            assert ratios["ranet_default"] == pytest.approx(rows["ranet_default"]["throughput_rps"] / theirs)
    assert versus["load_generator"]["litserve"]["requests_sent"] == 2 * 2 * VERSUS_REQUESTS
    assert "From the dedicated phase" in (tmp_path / "peers.md").read_text()
    assert not (ROOT / "client.py").exists()  # LitServe wrote no client file into the checkout


def test_grpc_beside_http_answers_alike(tmp_path: Path) -> None:
    """benchmarks/grpc_e2e.py (make bench step 11) in seconds: both protocols, both points, no failures,
    the same FLOPs per image and accuracy on the same images (the same server answers both)."""
    out = tmp_path / "results"
    args = [str(BENCH / "grpc_e2e.py"), "--requests", "30", "--concurrency", "2", "--images", "60"]
    done = _run([*args, "--out", str(out)], timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((out / "grpc.json").read_text())
    by = {(row["protocol"], row["budget"]): row for row in rows}
    assert set(by) == {(p, b) for p in ("http (v1)", "grpc (v2)") for b in ("default point", "full depth")}
    for budget in ("default point", "full depth"):
        http, grpc = by[("http (v1)", budget)], by[("grpc (v2)", budget)]
        assert http["requests_failed"] == grpc["requests_failed"] == 0
        assert http["throughput_rps"] > 0 and grpc["throughput_rps"] > 0
        assert grpc["mean_flops_per_image"] == pytest.approx(http["mean_flops_per_image"])
        assert grpc["accuracy"] == pytest.approx(http["accuracy"])
    last_exit_flops = load_bundle(BUNDLE).manifest.cumulative_flops[-1]
    assert by[("grpc (v2)", "full depth")]["mean_flops_per_image"] == last_exit_flops
    assert "grpc (v2)" in (out / "grpc.md").read_text()


# -- issue 21: serving at ImageNet scale -------------------------------------------------------------------


def test_imagenet_scale_checkpoint_has_the_official_layout(tmp_path: Path, official_fixture: Any) -> None:
    """The benchmark's checkpoint is what the official main.py writes (the fixture's top-level keys,
    SGD state, DataParallel `module.` keys in the official order), loads through the official-checkpoint
    path, and its re-estimated batch norm keeps the logits at a trained model's scale."""
    _importable_benchmarks()
    from imagenet.checkpoint import make_checkpoint, resolve_config
    from ranet_serve.model.checkpoint import load_model, read_checkpoint

    config = resolve_config("imagenet-model1", quick=True)
    assert (config.family, config.image_size, config.num_scales, config.num_exits) == ("imagenet", 224, 4, 8)
    path = tmp_path / "model_best.pth.tar"
    info = make_checkpoint(config, path, bn_batches=1, bn_batch_size=2)
    raw, official = read_checkpoint(path), official_fixture.checkpoint
    assert list(raw) == list(official)
    assert list(raw["optimizer"]) == list(official["optimizer"])
    assert set(raw["optimizer"]["param_groups"][0]) == set(official["optimizer"]["param_groups"][0])
    keys = list(raw["state_dict"])
    assert all(key.startswith("module.") for key in keys)
    assert keys[0].startswith("module.scale_flows.0.0.") and keys[-1].startswith("module.FirstLayer.")
    assert info["checkpoint_bytes"] == path.stat().st_size and info["parameters"] > 0
    model = load_model(path, config)  # strict: every key of the config, no extra
    assert model.num_exits == 8
    scale = info["verify_logit_max_abs"]
    assert len(scale) == 8 and all(0.1 < value < 100 for value in scale)


def test_imagenet_scale_judges_speedup_verify_and_decode_from_the_figures() -> None:
    """The arithmetic and parsing of issue 21's step on fixed inputs: realised speedup against the FLOPs
    ratio of the served FLOPs, verify's table with or without a relative column, the exit mix."""
    _importable_benchmarks()
    from imagenet.bars import BAR_NAMES, _bar, _decode_bar, bars
    from imagenet.budget import mix_choices, speedup
    from imagenet.ranet_cli import parse_verify_table, verify_summary
    from imagenet_scale import output_paths

    met = speedup(
        {"images_per_s": 10.0, "mean_flops_per_image": 300.0},
        {"images_per_s": 18.0, "mean_flops_per_image": 150.0},
    )
    assert met["realised_speedup"] == pytest.approx(1.8) and met["flops_ratio"] == pytest.approx(2.0)
    assert met["share_of_flops_ratio"] == pytest.approx(0.9) and met["met"] is True
    missed = speedup(
        {"images_per_s": 10.0, "mean_flops_per_image": 300.0},
        {"images_per_s": 16.0, "mean_flops_per_image": 150.0},
    )
    assert missed["share_of_flops_ratio"] == pytest.approx(0.8) and missed["met"] is False

    choices, expected = mix_choices([100, 200, 300, 400, 500])
    assert [c.knobs for c in choices] == [
        {"confidence": "1", "max_flops": "100"},
        {"confidence": "1", "max_flops": "400"},
        {"confidence": "1"},
    ]
    assert [c.weight for c in choices] == [0.4, 0.3, 0.3] and expected == pytest.approx(310.0)

    table = (
        "┏━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━┳━━━━━━━━━━━━┳━━━━━┓\n"
        "┃ backend     ┃ inputs ┃ exit ┃ max |diff| ┃ ok  ┃\n"
        "┡━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━╇━━━━━━━━━━━━╇━━━━━┩\n"
        "│ onnxruntime │ random │ 0    │ 2.00e-05   │ yes │\n"
        "│ torchscript │ random │ 1    │ 4.00e-05   │ NO  │\n"
        "└─────────────┴────────┴──────┴────────────┴─────┘\n"
    )
    rows = parse_verify_table(table)
    assert [r["exit"] for r in rows] == ["0", "1"]
    summary = verify_summary(rows, [2.0, 8.0])
    assert summary["worst_abs_diff"] == pytest.approx(4e-5) and summary["failed_checks"] == 1
    assert summary["worst_rel_diff_of_max_logit"] == pytest.approx(1e-5)  # 2e-5 / 2 beats 4e-5 / 8
    with_relative = table.replace("┃ ok  ┃", "┃ rel diff ┃ ok  ┃").replace("│ yes │", "│ 1.0e-05 │ yes │")
    assert verify_summary(parse_verify_table(with_relative), [2.0])["worst_rel_diff_reported"] == 1e-5

    decode = {
        "500x375": {"before_ms": 2.0, "after_ms": 2.1},
        "4000x3000": {"before_ms": 75.0, "after_ms": 12.0},
    }
    assert bars(None) == [_bar(i, None, None) for i in range(len(BAR_NAMES))]
    assert _decode_bar(decode)["met"] is True  # judged where draft decoding applies
    assert _decode_bar({**decode, "4000x3000": {"before_ms": 75.0, "after_ms": None}})["met"] is None
    assert output_paths(Path("x/r.json")) == (Path("x/r.json"), Path("x/r.md"))
    assert output_paths(Path("x")) == (Path("x/imagenet_scale.json"), Path("x/imagenet_scale.md"))


@pytest.mark.slow
def test_imagenet_scale_runs_the_whole_path_on_a_narrow_config(tmp_path: Path) -> None:
    """benchmarks/imagenet_scale.py --quick (about 50 s on 2 cores, most of it `ranet export`): the
    narrow ImageNet-shaped config through checkpoint, export, verify, serve, photos over v1 and v2,
    decode before/after, the exit mix at 1 and 4 images per request; real figures, nothing left behind."""
    out, work = tmp_path / "imagenet.json", tmp_path / "work"
    done = _run([str(BENCH / "imagenet_scale.py"), "--quick", "--out", str(out), "--workdir", str(work)], 420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(work.iterdir()) == []  # the checkpoint and bundle were deleted
    result = json.loads(out.read_text())
    last = len(result["cumulative_flops"]) - 1
    assert result["quick"] is True and result["model"]["config"]["image_size"] == 224

    export, verify, serve = result["export"], result["verify"], result["serve"]
    assert export["seconds"] > 0 and export["peak_rss_mb"] > 100 and export["bundle_bytes"] > 0
    assert verify["passed"] is True and verify["checks"] >= 2 * (last + 1) and verify["failed_checks"] == 0
    assert 0 <= verify["worst_rel_diff_of_max_logit"] < 1e-3
    assert serve["ready_seconds"] > 0 and serve["rss_after_load"]["total_mib"] > 100
    roles = {p["role"] for p in serve["rss_after_load"]["processes"]}
    assert {"supervisor", "engine", "front-end"} <= roles
    assert serve["rss_under_load_peak_mib"] >= serve["rss_under_load_mean_mib"] > 0

    assert set(result["decode"]) == {"500x375", "4000x3000"}
    for figures in result["decode"].values():
        assert figures["before_ms"] > 0 and (figures["after_ms"] is None or figures["after_ms"] > 0)
    photos = {(r["photo"], r["protocol"], r["budget"]): r for r in result["photos"]}
    assert {(p, proto) for p, proto, _ in photos} == {
        (p, proto) for p in ("500x375", "4000x3000") for proto in ("v1 multipart", "v2 binary")
    }
    for (_, _, budget), row in photos.items():
        assert row["all_200"] and row["statuses"] == [200] and row["sane"] and row["label"]
        assert row["exit"] == (0 if budget == "capped at exit 0" else last)
        assert row["latency_ms_p50"] >= row["inference_ms_p50"] > 0

    budget = result["budget"]
    assert [m["share"] for m in budget["mix"]] == [0.4, 0.3, 0.3]
    for batch in ("1", "4"):
        entry = budget["by_images_per_request"][batch]
        full, mix = entry["full"], entry["mix"]
        assert full["requests_failed"] == mix["requests_failed"] == 0
        assert full["images"] > 0 and mix["images"] > 0
        assert set(full["exit_counts"]) == {str(last)} and set(mix["exit_counts"]) <= {"0", "3", str(last)}
        assert full["mean_flops_per_image"] == result["cumulative_flops"][-1]
        assert entry["realised_speedup"] == pytest.approx(mix["images_per_s"] / full["images_per_s"])
        assert entry["flops_ratio"] == pytest.approx(
            full["mean_flops_per_image"] / mix["mean_flops_per_image"]
        )
        assert entry["share_of_flops_ratio"] == pytest.approx(
            entry["realised_speedup"] / entry["flops_ratio"]
        )
        assert entry["met"] is (entry["share_of_flops_ratio"] >= 0.85)
    projection = result["gpu_projection"]
    assert len(projection["cpu_exit_ms_batch1"]) == last + 1 and projection["gpu_full_depth_images_per_s"] > 0

    bars = result["bars"]
    assert [b["met"] for b in bars[:4]] == [True, True, True, True] and bars[5]["met"] is True
    assert [b["met"] in (True, False) for b in bars[6:]] == [True, True]

    # run_all.py: the bars join the goal table, the section joins the report.
    _importable_benchmarks()
    from run_all import imagenet_goals, render_report

    assert imagenet_goals(result) == bars
    results = out.parent
    (results / "imagenet_scale.md").write_text(out.with_suffix(".md").read_text())
    context = {
        "command": "benchmarks/run_all.py",
        "finished": "now",
        "wall_s": result["wall_s"],
        "bundle": "model_store/ranet-fmnist/1",
        "machine": result["machine"],
        "versions": result["versions"],
        "steps": {"imagenet": {"command": "benchmarks/imagenet_scale.py", "returncode": 0, "wall_s": 1.0}},
        "goals": bars,
        "plots": [],
    }
    rendered = render_report(context, results, tmp_path / "REPORT.md")
    assert "# ImageNet scale (issue 21)" in rendered and "### GPU projection (a projection" in rendered
