"""HTTP end to end: the real server on the default bundle, driven by the project's load generator.

Starts `ranet serve` on 127.0.0.1 (a separate process, so client and server do not share a GIL),
then for each concurrency level runs a fixed number of requests with Fashion-MNIST test images and
reports throughput, latency percentiles, the server-side time split (queue, inference) and the exit
distribution, at the default operating point and at full depth (`confidence=1`). Loopback only;
every run is bounded in requests and time. Usage:

    .venv/bin/python benchmarks/http_e2e.py [--requests 400] [--concurrency 1 4 16] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image
from ranet_client.image_sets import Sample
from ranet_client.load import BudgetChoice, LoadConfig, run_load_sync

from ranet_serve.data.datasets import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_samples(count: int) -> list[Sample]:
    data = load_fashion_mnist("test")
    samples = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(data.images[i, 0]).save(buffer, "PNG")
        samples.append(
            Sample(f"{i}.png", buffer.getvalue(), int(data.labels[i]), data.class_names[data.labels[i]])
        )
    return samples


def start_server(port: int, threads: int, bundle: Path) -> subprocess.Popen[bytes]:
    """`ranet serve` on the bundle's model store, the bundle's model as the default model."""
    env = {**os.environ, "OMP_WAIT_POLICY": "passive"}
    command = [sys.executable, "-m", "ranet_serve.cli", "serve", "--port", str(port)]
    command += ["--grpc-port", "0"]  # HTTP only: the default 8081 may be taken on the machine
    command += ["--threads", str(threads)]
    command += ["--model-store", str(bundle.parents[1]), "--default-model", bundle.parent.name]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    parser.add_argument("--bundle", type=Path, default=ROOT / "model_store" / "ranet-fmnist" / "1")
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images sent, cyclically")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    samples = test_samples(args.images)
    bundle = args.bundle.resolve()
    version = {"version": bundle.name}  # the bundle's own version, even when its store holds newer ones
    port = free_port()
    server = start_server(port, args.threads, bundle)
    rows = []
    try:
        for concurrency in args.concurrency:
            for name, knobs in (("default point", version), ("full depth", {**version, "confidence": "1.0"})):
                config = LoadConfig(
                    url=f"http://127.0.0.1:{port}",
                    requests=args.requests,
                    concurrency=concurrency,
                    mix=(BudgetChoice(name, knobs, 1.0),),
                    timeout=30.0,
                )
                report = run_load_sync(config, samples)
                rows.append({"concurrency": concurrency, "budget": name, **report.to_dict()})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "## HTTP end to end (ranet serve + ranet-client load, loopback, one image per request)",
        "",
        "| concurrency | budget | req/s | p50 ms | p99 ms | server queue ms | server inference ms | "
        "MFLOPs/img | accuracy % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['concurrency']} | {r['budget']} | {r['throughput_rps']:.0f} | {lat['p50']:.1f} | "
            f"{lat['p99']:.1f} | {r['server_queue_ms_mean']:.2f} | {r['server_inference_ms_mean']:.2f} | "
            f"{r['mean_flops_per_image'] / 1e6:.2f} | {100 * r['accuracy']:.1f} "
            f"| {r['requests_failed']} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "http.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
