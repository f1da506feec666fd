"""Live exit-quality monitoring against the calibration data (issue 11, part 3).

Serves the Fashion-MNIST test images through a `Batcher` at the bundle's default operating point with
an `AgreementMonitor` that samples every early exit (fraction 1.0; the server's default is 1%), lets
the idle-time re-runs finish, and compares each exit's live agreement with the last exit to what the
validation split (the data the thresholds were fitted on) predicts, with the sampling error of both.

Then the delay the audit adds to requests (issue 17, item 4): the audit runs in slices of one stage on
at most `slice_images` samples, so a request that arrives while the worker audits waits one slice at
most. One client sends single-image requests one at a time, with short random gaps so they land at
random points of the slices, first with no audit and then with an audit that always has samples to
check; the report gives both latency distributions, the longest slice measured, and, for comparison,
what one unsliced audit batch (32 samples through every stage, the old way) takes.
Writes agreement.json and agreement.md. Usage:

    .venv/bin/python benchmarks/agreement.py [--images 10000] [--delay-requests 200]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from common import DEFAULT_BUNDLE, ROOT
from ranet_serve.cascade.calibration import exit_indices
from ranet_serve.cascade.executor import CascadeExecutor
from ranet_serve.cascade.runtimes import OnnxRuntime
from ranet_serve.data.sources import load_splits
from ranet_serve.data.transforms import normalize
from ranet_serve.engine.agreement import AgreementMonitor
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.export.bundle import Bundle, load_bundle
from ranet_serve.train.bundle_eval import bundle_probabilities

BATCH = 128
UNSLICED_AUDIT_IMAGES = 32  # what one idle-time audit ran through every stage before slicing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--images", type=int, default=10_000, help="test images served")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--delay-requests", type=int, default=200, help="single-image requests per audit setting"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    manifest = bundle.manifest
    calibration = manifest.calibration
    if calibration is None:
        raise SystemExit("the bundle is not calibrated")
    point = calibration.point(calibration.default_point)
    thresholds = np.asarray(point.thresholds, dtype=np.float32)
    exits = len(manifest.exits)
    splits = load_splits("fashion-mnist", val_size=5000, seed=0)

    val = bundle_probabilities(bundle, splits.val, threads=args.threads)
    val_exits = exit_indices(val.max(axis=2), thresholds)
    val_pred = val.argmax(axis=2)

    monitor = AgreementMonitor(1.0, max_pending=args.images)
    batcher = Batcher(
        CascadeExecutor(OnnxRuntime(bundle, threads=args.threads)), max_batch_size=BATCH, agreement=monitor
    )
    test = splits.test.subset(np.arange(min(args.images, len(splits.test))))
    images = normalize(torch.from_numpy(test.images), manifest.input.mean, manifest.input.std)
    started = time.perf_counter()
    try:
        futures = [
            batcher.submit(
                images[i : i + BATCH],
                np.tile(thresholds, (min(BATCH, len(test) - i), 1)),
                np.full(min(BATCH, len(test) - i), exits - 1),
            )
            for i in range(0, len(test), BATCH)
        ]
        for future in futures:
            future.result(120)
        served_s = time.perf_counter() - started
        deadline = time.monotonic() + 300
        while monitor.pending and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        batcher.close()
    delay = audit_delay(bundle, thresholds, images, args.threads, args.delay_requests)
    delay["serving_run_longest_slice_ms"] = round(1000 * monitor.longest_slice_seconds, 3)
    delay["serving_run_slices"] = monitor.slices
    rows = []
    for k in range(exits - 1):
        on_val = val_exits == k
        checked = int(monitor.checked[k]) if monitor.checked.size else 0
        if not on_val.any() or not checked:
            continue
        expected = float(np.mean(val_pred[k, on_val] == val_pred[-1, on_val]))
        measured = float(monitor.agreed[k] / checked)
        stderr = math.sqrt(
            expected * (1 - expected) / checked + expected * (1 - expected) / int(on_val.sum())
        )
        rows.append(
            {
                "exit": k,
                "checked_live": checked,
                "live_agreement": round(100 * measured, 2),
                "validation_images": int(on_val.sum()),
                "validation_agreement": round(100 * expected, 2),
                "difference_in_standard_errors": None
                if stderr == 0
                else round((measured - expected) / stderr, 2),
            }
        )
    report = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "operating_point": point.name,
        "images": len(test),
        "served_seconds": round(served_s, 2),
        "exits": rows,
        "audit_delay": delay,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agreement.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "agreement.md").write_text(render(report))
    print(render(report))


class TimedMonitor(AgreementMonitor):
    """An `AgreementMonitor` that keeps the duration of every slice, for the distribution."""

    def __init__(self, fraction: float, max_pending: int) -> None:
        super().__init__(fraction, max_pending=max_pending)
        self.slice_ms: list[float] = []

    def run_slice(self, executor: CascadeExecutor) -> int:
        started = time.perf_counter()
        try:
            return super().run_slice(executor)
        finally:
            self.slice_ms.append(1000 * (time.perf_counter() - started))


def audit_delay(
    bundle: Bundle, thresholds: np.ndarray, images: torch.Tensor, threads: int, requests: int
) -> dict:
    """Latency of single-image requests at low load with the audit off and on (see the module doc)."""
    exits = len(bundle.manifest.exits)
    executor = CascadeExecutor(OnnxRuntime(bundle, threads=threads))
    latency_ms: dict[str, list[float]] = {}
    monitor: TimedMonitor | None = None
    for setting in ("off", "on"):
        monitor = TimedMonitor(1.0, max_pending=100_000) if setting == "on" else None
        batcher = Batcher(executor, max_batch_size=BATCH, agreement=monitor)
        gaps = random.Random(0)
        try:
            # Every setting serves the same warm-up; with the audit on, it leaves a backlog of
            # samples, so the audit is busy whenever the worker would otherwise be idle.
            prefill = images[: 4 * BATCH]
            for start in range(0, prefill.shape[0], BATCH):
                part = prefill[start : start + BATCH]
                serve(batcher, part, thresholds, exits).result(120)
            times = []
            for i in range(requests):
                time.sleep(gaps.uniform(0.0, 0.002))  # land at a random point of a slice
                sent = time.perf_counter()
                serve(batcher, images[i % images.shape[0]][None], thresholds, exits).result(60)
                times.append(1000 * (time.perf_counter() - sent))
            latency_ms[setting] = times
        finally:
            batcher.close(drain=False)
    assert monitor is not None
    unsliced = []
    batch = images[:UNSLICED_AUDIT_IMAGES]
    for _ in range(5):
        started = time.perf_counter()
        executor.run(batch, np.ones((batch.shape[0], exits), np.float32), np.full(batch.shape[0], exits - 1))
        unsliced.append(1000 * (time.perf_counter() - started))
    summary = {setting: percentiles(times) for setting, times in latency_ms.items()}
    return {
        "requests_per_setting": requests,
        "slice_images": monitor.slice_images,
        "slices_during_requests": monitor.slices,
        "samples_left_unchecked": monitor.pending,  # > 0: the audit never ran dry while measuring
        "longest_slice_ms": round(1000 * monitor.longest_slice_seconds, 3),
        "slice_ms": percentiles(monitor.slice_ms),
        "latency_ms": summary,
        "added_p50_ms": round(summary["on"]["p50"] - summary["off"]["p50"], 3),
        "added_p99_ms": round(summary["on"]["p99"] - summary["off"]["p99"], 3),
        "added_max_ms": round(summary["on"]["max"] - summary["off"]["max"], 3),
        "unsliced_audit_batch_images": batch.shape[0],
        "unsliced_audit_batch_ms": round(statistics.median(unsliced), 3),
    }


def serve(batcher: Batcher, images: torch.Tensor, thresholds: np.ndarray, exits: int) -> Future:
    count = images.shape[0]
    return batcher.submit(images, np.tile(thresholds, (count, 1)), np.full(count, exits - 1))


def percentiles(times_ms: list[float]) -> dict[str, float]:
    ordered = np.asarray(times_ms)
    return {
        "p50": round(float(np.percentile(ordered, 50)), 3),
        "p99": round(float(np.percentile(ordered, 99)), 3),
        "max": round(float(ordered.max()), 3),
    }


def render(report: dict) -> str:
    lines = [
        "## Live exit agreement vs the calibration data",
        "",
        f"Bundle {report['bundle']} at `{report['operating_point']}`: {report['images']} Fashion-MNIST test "
        "images served through the batcher; every early exit sampled and re-run to the last exit in idle "
        "time. Validation = the split the thresholds were fitted on.",
        "",
        "| exit | checked live | live agreement % | validation images | validation agreement % | "
        "difference (standard errors) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["exits"]:
        lines.append(
            f"| {r['exit']} | {r['checked_live']} | {r['live_agreement']} | {r['validation_images']} | "
            f"{r['validation_agreement']} | {r['difference_in_standard_errors']} |"
        )
    delay = report.get("audit_delay")
    if delay:
        off, on = delay["latency_ms"]["off"], delay["latency_ms"]["on"]
        lines += [
            "",
            "### Delay the audit adds to a request",
            "",
            f"The audit runs in slices of one stage on at most {delay['slice_images']} samples; the worker "
            "looks at its queue between slices. One client, single-image requests one at a time "
            f"({delay['requests_per_setting']} per setting), audit always busy "
            f"({delay['samples_left_unchecked']} samples still unchecked at the end).",
            "",
            "| audit | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
            f"| off | {off['p50']} | {off['p99']} | {off['max']} |",
            f"| on | {on['p50']} | {on['p99']} | {on['max']} |",
            "",
            f"Audit slice while measuring: p50 {delay['slice_ms']['p50']} ms, "
            f"p99 {delay['slice_ms']['p99']} ms, longest {delay['longest_slice_ms']} ms; longest "
            f"{delay['serving_run_longest_slice_ms']} ms over the serving run above "
            f"({delay['serving_run_slices']} slices): the worst wait the audit can add to a request. "
            f"Before slicing, one audit batch ({delay['unsliced_audit_batch_images']} samples through "
            f"every stage) took {delay['unsliced_audit_batch_ms']} ms.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
