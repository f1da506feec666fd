"""Survivor re-batching versus per-batch cascades, in process, on the default bundle.

The same `Batcher` runs twice side by side (interleaved repetitions, medians): once with
`rebatch_delay=None` (every batch runs all its stages before the next batch starts) and once with
survivors parked per stage and merged across batches. Two loads:

* high: every request (one Fashion-MNIST test image each) is queued at once, so the worker always
  has a backlog: throughput in images/s, and the mean batch size each stage ran at;
* low: one request at a time, nothing else queued: median and p99 latency per request.

At each operating point given (default: the bundle's default point and the most accurate calibrated
point). Then the same over HTTP (unless --http-requests 0): two `ranet serve` processes on loopback,
`RANET_REBATCH=true` and `false`, driven in turn by the project's load generator at high concurrency
(throughput) and at concurrency 1 (p50). Usage:

    .venv/bin/python benchmarks/rebatch.py [--requests 4000] [--repeats 3] [--points NAME ...]
        [--http-requests 600] [--http-concurrency 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from ranet_client.load import BudgetChoice, LoadConfig, run_load_sync

from http_e2e import free_port, start_server, test_samples
from ranet_serve.cascade.executor import BatchResult, CascadeExecutor
from ranet_serve.cascade.policy import Budget, ExitPolicy
from ranet_serve.cascade.runtimes import OnnxRuntime
from ranet_serve.data.datasets import load_fashion_mnist
from ranet_serve.data.transforms import normalize
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.export.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]


class StageSizes:
    """Observer: images and calls per stage, for the mean batch size each stage ran at."""

    def __init__(self, exits: int) -> None:
        self.images = np.zeros(exits, dtype=np.int64)
        self.calls = np.zeros(exits, dtype=np.int64)

    def __call__(self, result: BatchResult) -> None:
        sizes = np.asarray(result.stage_batch_sizes)
        self.images += sizes
        self.calls += sizes > 0


def high_load(
    executor: CascadeExecutor, images: torch.Tensor, thresholds: np.ndarray, delay: float | None, batch: int
) -> tuple[float, StageSizes, list[int]]:
    """Queue every image as its own request at once; images/s until the last answer."""
    sizes = StageSizes(executor.num_exits)
    batcher = Batcher(
        executor,
        max_batch_size=batch,
        max_queue_delay=0.002,
        max_queue_size=images.shape[0] + 1,
        rebatch_delay=delay,
        observer=sizes,
    )
    cap = np.array([executor.num_exits - 1])
    try:
        started = time.perf_counter()
        futures = [
            batcher.submit(images[i : i + 1], thresholds[None, :], cap) for i in range(images.shape[0])
        ]
        classes = [f.result(120).images[0].class_index for f in futures]
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    return images.shape[0] / elapsed, sizes, classes


def low_load(
    executor: CascadeExecutor, images: torch.Tensor, thresholds: np.ndarray, delay: float | None, batch: int
) -> list[float]:
    """One request at a time: per-request latency in seconds."""
    batcher = Batcher(executor, max_batch_size=batch, max_queue_delay=0.002, rebatch_delay=delay)
    cap = np.array([executor.num_exits - 1])
    latencies = []
    try:
        for i in range(images.shape[0]):
            started = time.perf_counter()
            batcher.submit(images[i : i + 1], thresholds[None, :], cap).result(30)
            latencies.append(time.perf_counter() - started)
    finally:
        batcher.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=ROOT / "model_store" / "ranet-fmnist" / "1")
    parser.add_argument("--requests", type=int, default=4000, help="images in the high-load run")
    parser.add_argument(
        "--low-requests", type=int, default=300, help="requests in the low-load run (<= --requests)"
    )
    parser.add_argument("--batch", type=int, default=32, help="max batch size (the server's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", nargs="*", help="operating points (default: default + most accurate)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="re-batching delay bound (the server's)")
    parser.add_argument("--http-requests", type=int, default=600, help="requests per HTTP run (0: skip)")
    parser.add_argument("--http-concurrency", type=int, default=32, help="client concurrency under load")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.low_requests = min(args.low_requests, args.requests)
    torch.set_num_threads(args.threads)
    modes: dict[str, float | None] = {"per-batch": None, "rebatch": args.delay_ms / 1000.0}
    bundle = load_bundle(args.bundle)
    manifest = bundle.manifest
    test = load_fashion_mnist("test")
    images = normalize(
        torch.from_numpy(test.images[: args.requests]), manifest.input.mean, manifest.input.std
    )
    labels = test.labels[: args.requests]
    policy = ExitPolicy(manifest)
    names = args.points or [policy.default_point, max(policy.points, key=lambda p: p.val_accuracy).name]
    executor = CascadeExecutor(OnnxRuntime(bundle, threads=args.threads))
    report: dict[str, object] = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "machine": f"{platform.machine()}, {args.threads} threads, onnxruntime {ort.__version__}",
        "requests": args.requests,
        "low_requests": args.low_requests,
        "max_batch_size": args.batch,
        "repeats": args.repeats,
        "rebatch_delay_ms": args.delay_ms,
        "points": {},
    }
    for name in names:
        point = policy.point(name)
        thresholds = policy.resolve(Budget(operating_point=name)).thresholds
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        stage_sizes: dict[str, list[float]] = {}
        accuracy: dict[str, float] = {}
        for _ in range(args.repeats):
            for mode, delay in modes.items():
                rate, sizes, classes = high_load(executor, images, thresholds, delay, args.batch)
                rates[mode].append(rate)
                stage_sizes[mode] = (sizes.images / np.maximum(sizes.calls, 1)).round(2).tolist()
                accuracy[mode] = 100.0 * float(np.mean(np.asarray(classes) == labels))
        latency: dict[str, dict[str, float]] = {}
        low_images = images[: args.low_requests]
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode, delay in modes.items():
                samples[mode] += low_load(executor, low_images, thresholds, delay, args.batch)
        for mode, values in samples.items():
            latency[mode] = {
                "p50_ms": 1000 * statistics.median(values),
                "p99_ms": 1000 * float(np.percentile(values, 99)),
            }
        medians = {mode: statistics.median(values) for mode, values in rates.items()}
        report["points"][name] = {  # type: ignore[index]
            "expected_mflops": point.expected_flops / 1e6,
            "high_load_images_per_s": medians,
            "high_load_runs": rates,
            "throughput_ratio": medians["rebatch"] / medians["per-batch"],
            "mean_stage_batch_size": stage_sizes,
            "accuracy": accuracy,
            "low_load": latency,
            "p50_ratio": latency["rebatch"]["p50_ms"] / latency["per-batch"]["p50_ms"],
        }
        print(json.dumps({name: report["points"][name]}, indent=1))  # type: ignore[index]
    if args.http_requests > 0:
        report["http"] = http_comparison(args, names, modes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rebatch.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "rebatch.md").write_text(render(report))
    print(render(report))


@contextlib.contextmanager
def servers(args: argparse.Namespace, modes: dict[str, float | None]) -> Iterator[dict[str, str]]:
    """One `ranet serve` per mode, all up at once (only the one being measured gets traffic)."""
    running: list[object] = []
    urls: dict[str, str] = {}
    try:
        for mode, delay in modes.items():
            os.environ["RANET_REBATCH"] = "false" if delay is None else "true"
            os.environ["RANET_REBATCH_DELAY_MS"] = str(1000 * (delay or 0.0))
            port = free_port()
            running.append(start_server(port, args.threads, args.bundle.resolve()))
            urls[mode] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for process in running:
            process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
            process.wait(30)  # type: ignore[attr-defined]


def http_comparison(args: argparse.Namespace, names: list[str], modes: dict[str, float | None]) -> dict:
    """Throughput at high concurrency and p50 at concurrency 1, per point and mode (medians of repeats)."""
    samples = test_samples(min(args.http_requests, 1000))
    version = {"version": args.bundle.resolve().name}
    results: dict[str, dict] = {}
    with servers(args, modes) as urls:
        for name in names:
            knobs = {**version, "operating_point": name}
            rates: dict[str, list[float]] = {mode: [] for mode in modes}
            p50: dict[str, list[float]] = {mode: [] for mode in modes}
            accuracy: dict[str, float] = {}
            for _ in range(args.repeats):
                for mode, url in urls.items():
                    for concurrency in (args.http_concurrency, 1):
                        config = LoadConfig(
                            url=url,
                            requests=args.http_requests
                            if concurrency > 1
                            else max(args.http_requests // 4, 1),
                            concurrency=concurrency,
                            mix=(BudgetChoice(name, knobs, 1.0),),
                            timeout=30.0,
                            retries=3,  # a 429 of the adaptive limit is retried after its Retry-After
                        )
                        load = run_load_sync(config, samples)
                        if load.requests_failed:
                            raise RuntimeError(f"{mode}: {load.requests_failed} requests failed")
                        if concurrency > 1:
                            rates[mode].append(load.throughput_rps)
                            accuracy[mode] = 100.0 * float(load.accuracy or 0.0)
                        else:
                            p50[mode].append(float(load.latency_ms["p50"] or 0.0))
            rate = {mode: statistics.median(v) for mode, v in rates.items()}
            latency = {mode: statistics.median(v) for mode, v in p50.items()}
            results[name] = {
                "requests_per_s": rate,
                "throughput_ratio": rate["rebatch"] / rate["per-batch"],
                "p50_ms": latency,
                "p50_ratio": latency["rebatch"] / latency["per-batch"],
                "accuracy": accuracy,
            }
            print(json.dumps({f"http {name}": results[name]}, indent=1))
    return {"requests": args.http_requests, "concurrency": args.http_concurrency, "points": results}


def render(report: dict) -> str:
    lines = [
        "# Survivor re-batching vs per-batch cascades (in process)",
        "",
        f"Bundle {report['bundle']}; {report['machine']}; max batch {report['max_batch_size']}; "
        f"high load = {report['requests']} one-image requests queued at once; low load = "
        f"{report['low_requests']} requests one at a time; re-batching delay bound "
        f"{report['rebatch_delay_ms']} ms; medians of {report['repeats']} interleaved runs.",
        "",
        "| point | MFLOPs/img | images/s per-batch | images/s rebatch | ratio | p50 ms per-batch | "
        "p50 ms rebatch | p50 ratio | accuracy (both) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["points"].items():
        rate, low = r["high_load_images_per_s"], r["low_load"]
        lines.append(
            f"| {name} | {r['expected_mflops']:.2f} | {rate['per-batch']:.0f} | {rate['rebatch']:.0f} | "
            f"{r['throughput_ratio']:.2f} | {low['per-batch']['p50_ms']:.2f} | "
            f"{low['rebatch']['p50_ms']:.2f} | "
            f"{r['p50_ratio']:.2f} | {r['accuracy']['per-batch']:.2f} / {r['accuracy']['rebatch']:.2f} |"
        )
    lines += ["", "Mean batch size each stage ran at under high load:", ""]
    for name, r in report["points"].items():
        for mode, sizes in r["mean_stage_batch_size"].items():
            lines.append(f"- {name}, {mode}: {sizes}")
    http = report.get("http")
    if http:
        lines += [
            "",
            "Over HTTP (two `ranet serve` processes on loopback, `RANET_REBATCH` true / false; the "
            f"project's load generator, one image per request: {http['requests']} requests at concurrency "
            f"{http['concurrency']} for throughput, a quarter as many at concurrency 1 for p50):",
            "",
            "| point | req/s per-batch | req/s rebatch | ratio | p50 ms per-batch | p50 ms rebatch "
            "| p50 ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in http["points"].items():
            rate, p50 = r["requests_per_s"], r["p50_ms"]
            lines.append(
                f"| {name} | {rate['per-batch']:.0f} | {rate['rebatch']:.0f} | {r['throughput_ratio']:.2f} | "
                f"{p50['per-batch']:.2f} | {p50['rebatch']:.2f} | {r['p50_ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
