"""Live exit-quality monitoring against the calibration data (issue 11, part 3).

Serves the Fashion-MNIST test images through a `Batcher` at the bundle's default operating point with
an `AgreementMonitor` that samples every early exit (fraction 1.0; the server's default is 1%), lets
the idle-time re-runs finish, and compares each exit's live agreement with the last exit to what the
validation split (the data the thresholds were fitted on) predicts, with the sampling error of both.
Writes agreement.json and agreement.md. Usage:

    .venv/bin/python benchmarks/agreement.py [--images 10000]
"""

from __future__ import annotations

import argparse
import json
import math
import time
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
from ranet_serve.export.bundle import load_bundle
from ranet_serve.train.bundle_eval import bundle_probabilities

BATCH = 128


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--images", type=int, default=10_000, help="test images served")
    parser.add_argument("--threads", type=int, default=2)
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
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agreement.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "agreement.md").write_text(render(report))
    print(render(report))


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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
