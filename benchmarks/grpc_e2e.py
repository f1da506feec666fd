"""gRPC beside HTTP: the same server, the same images, KServe v2 over gRPC next to HTTP (v1).

Starts `ranet serve` on 127.0.0.1 with its gRPC port (a separate process, as in http_e2e.py), then at
each concurrency sends a fixed number of one-image requests (Fashion-MNIST test PNGs) twice: over HTTP
with the project's load generator (`POST /v1/classify`), and over gRPC with a grpc.aio loop of as many
clients, each on its own channel (one HTTP/2 connection per client, as the HTTP clients have), sending
`ModelInfer` with the PNG as a BYTES tensor in `raw_input_contents` (what tritonclient.grpc sends).
Both at the default operating point and at full depth (`confidence=1`). Loopback only; every run is
bounded in requests. Step 11 of `make bench` (run_all.py); alone:

    .venv/bin/python benchmarks/grpc_e2e.py [--requests 400] [--concurrency 1 4 16] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from ranet_client.image_sets import Sample
from ranet_client.load import BudgetChoice, LoadConfig, run_load_sync

from http_e2e import ROOT, free_port, test_samples
from ranet_serve.api.grpc.protos import grpc_service_pb2 as pb
from ranet_serve.api.grpc.protos import grpc_service_pb2_grpc as pb_grpc


def start_server(port: int, grpc_port: int, threads: int, bundle: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "ranet_serve.cli", "serve", "--port", str(port)]
    command += ["--grpc-port", str(grpc_port), "--threads", str(threads)]
    command += ["--model-store", str(bundle.parents[1]), "--default-model", bundle.parent.name]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def infer_request(model: str, version: str, png: bytes, knobs: dict[str, str]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(png)) + png)
    for key, value in knobs.items():
        request.parameters[key].string_param = value
    return request


async def grpc_load(
    target: str, requests: Sequence[pb.ModelInferRequest], concurrency: int, labels: Sequence[int | None]
) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, each on its own channel, until every request was sent."""
    latencies: list[float] = []
    correct = failed = 0
    flops: list[int] = []
    cursor = 0

    async def client() -> None:
        nonlocal cursor, correct, failed
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while cursor < len(requests):
                index = cursor
                cursor += 1
                started = time.perf_counter()
                try:
                    answer = await stub.ModelInfer(requests[index], timeout=30)
                except grpc.aio.AioRpcError:
                    failed += 1
                    continue
                latencies.append(time.perf_counter() - started)
                outputs = dict(zip((o.name for o in answer.outputs), answer.raw_output_contents, strict=True))
                correct += int(np.frombuffer(outputs["class_index"], "<i8")[0] == labels[index])
                flops.append(int(np.frombuffer(outputs["flops"], "<i8")[0]))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "throughput_rps": len(latencies) / seconds,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))},
        "mean_flops_per_image": float(np.mean(flops)) if flops else 0.0,
        "accuracy": correct / max(1, len(latencies)),
        "requests_failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0: the server's own split)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "model_store" / "ranet-fmnist" / "1")
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images sent, cyclically")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    samples: list[Sample] = test_samples(args.images)
    bundle = args.bundle.resolve()
    model, version = bundle.parent.name, bundle.name
    port, grpc_port = free_port(), free_port()
    server = start_server(port, grpc_port, args.threads, bundle)
    rows = []
    try:
        for concurrency in args.concurrency:
            for name, knobs in (("default point", {}), ("full depth", {"confidence": "1.0"})):
                http = run_load_sync(
                    LoadConfig(
                        url=f"http://127.0.0.1:{port}",
                        requests=args.requests,
                        concurrency=concurrency,
                        mix=(BudgetChoice(name, {"version": version, **knobs}, 1.0),),
                        timeout=30.0,
                    ),
                    samples,
                ).to_dict()
                rows.append({"protocol": "http (v1)", "concurrency": concurrency, "budget": name, **http})
                picked = [samples[i % len(samples)] for i in range(args.requests)]
                requests = [infer_request(model, version, s.data, knobs) for s in picked]
                labels = [s.class_index for s in picked]
                measured = asyncio.run(grpc_load(f"127.0.0.1:{grpc_port}", requests, concurrency, labels))
                rows.append({"protocol": "grpc (v2)", "concurrency": concurrency, "budget": name, **measured})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grpc.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "## gRPC beside HTTP (ranet serve, loopback, one PNG per request)",
        "",
        "| concurrency | budget | protocol | req/s | p50 ms | p99 ms | MFLOPs/img | accuracy % | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['concurrency']} | {r['budget']} | {r['protocol']} | {r['throughput_rps']:.0f} | "
            f"{lat['p50']:.1f} | {lat['p99']:.1f} | {r['mean_flops_per_image'] / 1e6:.2f} | "
            f"{100 * r['accuracy']:.1f} | {r['requests_failed']} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "grpc.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
