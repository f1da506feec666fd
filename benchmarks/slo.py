"""A latency objective under overload: the load-adaptive default point versus a fixed one (issue 11).

Two `ranet serve` processes on loopback serve the default bundle with the same default operating
point (the "ceiling", by default full depth): one keeps it fixed, the other
has `RANET_SLO_P99_MS` set and may move down the calibrated curve. Only one gets traffic at a time.

1. capacity: closed loop on the fixed server: the sustainable rate R at the ceiling point, and the
   same at the cheapest calibrated point (through the `operating_point` knob), the most any operating
   point can give. The overload is capped at 0.8 x that rate when --multiple x R would exceed it.
2. baseline: open loop at --low-fraction x R on the fixed server: normal latency. The objective is
   --objective-ms, or --objective-factor x that baseline p99 when not given.
3. for each server in turn: overload at --multiple x R (open loop, --phase-seconds), then recovery at
   the baseline rate. Per phase: admitted p99 (from each request's scheduled start), 429s, accuracy
   of the answers on the Fashion-MNIST test images, mean FLOPs per image, and which operating points
   answered (the adaptive server's moves).

Requests carry --images-per-request test images each, so inference rather than HTTP parsing is the
bulk of a request's cost, as in a batch client; every image is scored against its label. Uses
stress.py's open-loop HTTP client. Writes slo.json and slo.md. Usage:

    .venv/bin/python benchmarks/slo.py [--phase-seconds 15] [--multiple 2] [--objective-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ranet_client.image_sets import Sample

from common import DEFAULT_BUNDLE, ROOT, fmnist_samples, machine_facts, versions
from ranet_serve.cascade.policy import ExitPolicy
from ranet_serve.export.bundle import load_bundle
from stress import Pool, closed_loop, open_loop, percentile, start_server, stop_server

BOUNDARY = "ranet-slo-boundary"
FLOOR_HEADROOM = 0.8  # the overload offered stays below this share of the cheapest point's capacity


def encode_request(host: str, port: int, path: str, samples: list[Sample]) -> bytes:
    """A multipart POST carrying several images (one `files` part each)."""
    body = b""
    for sample in samples:
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{sample.name}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + sample.data
            + b"\r\n"
        )
    body += f"--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass
class Outcome:
    scheduled: float
    finished: float
    status: int | None  # None: connection error or client timeout
    point: str | None = None
    correct: int = 0
    images: int = 0
    flops: float = 0.0


@dataclass
class Phase:
    name: str
    server: str
    rate: float | None
    seconds: float
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self, objective_ms: float) -> dict[str, Any]:
        ok = [o for o in self.outcomes if o.status == 200]
        latencies = [1000.0 * (o.finished - o.scheduled) for o in ok]
        images = sum(o.images for o in ok)
        p99 = percentile(latencies, 99)
        # Order of first appearance: for the adaptive server, the path it took down and back up.
        points = Counter(o.point for o in sorted(ok, key=lambda o: o.finished))
        return {
            "phase": self.name,
            "server": self.server,
            "offered_rps": None if self.rate is None else round(self.rate, 1),
            "requests": len(self.outcomes),
            "ok_200": len(ok),
            "shed_429": sum(1 for o in self.outcomes if o.status == 429),
            "other": sum(1 for o in self.outcomes if o.status not in (200, 429)),
            "admitted_p50_ms": None if not latencies else round(percentile(latencies, 50) or 0.0, 1),
            "admitted_p99_ms": None if p99 is None else round(p99, 1),
            "within_objective": None if p99 is None else p99 <= objective_ms,
            "images": images,
            "accuracy": None if not images else round(100.0 * sum(o.correct for o in ok) / images, 2),
            "mean_mflops_per_image": None
            if not images
            else round(sum(o.flops for o in ok) / images / 1e6, 3),
            "points": dict(points),
        }


class Client:
    """Open- and closed-loop load of multi-image requests on one server, scored against the labels."""

    def __init__(self, url: str, path: str, groups: list[list[Sample]], timeout: float):
        host, port = url.removeprefix("http://").split(":")
        self.pool = Pool(host, int(port))
        self.requests = [encode_request(host, int(port), path, group) for group in groups]
        self.labels = [[s.class_index for s in group] for group in groups]
        self.timeout = timeout
        self.pending: set[asyncio.Task[None]] = set()

    async def shoot(self, phase: Phase, index: int, scheduled: float) -> None:
        which = index % len(self.requests)
        outcome = Outcome(scheduled, 0.0, None)
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self.pool.request(self.requests[which])
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        else:
            outcome.status = answer.status
            if answer.status == 200:
                body = json.loads(answer.body)
                results = body["results"]
                outcome.point = body["operating_point"]
                outcome.images = len(results)
                outcome.correct = sum(
                    int(r["class_index"] == label)
                    for r, label in zip(results, self.labels[which], strict=True)
                )
                outcome.flops = float(sum(r["flops"] for r in results))
        outcome.finished = time.perf_counter()
        phase.outcomes.append(outcome)

    async def closed_loop(self, phase: Phase, concurrency: int) -> Phase:
        await closed_loop(partial(self.shoot, phase), concurrency, phase.started + phase.seconds)
        phase.seconds = time.perf_counter() - phase.started
        return phase

    async def open_loop(self, phase: Phase) -> Phase:
        assert phase.rate is not None
        await open_loop(partial(self.shoot, phase), phase.rate, phase.started, phase.seconds, self.pending)
        if self.pending:  # the phase's stragglers finish before the next phase starts
            await asyncio.wait(set(self.pending), timeout=self.timeout)
        return phase


async def measure(
    args: argparse.Namespace, ceiling: str, floor: str, groups: list[list[Sample]]
) -> dict[str, Any]:
    path = "/v1/classify"
    store_args = argparse.Namespace(
        model_store=args.bundle.resolve().parents[1],
        model=args.bundle.resolve().parent.name,
        start_timeout=120.0,
        server_env={"RANET_DEFAULT_OPERATING_POINT": ceiling, "RANET_THREADS": str(args.threads)},
    )
    logs = Path(tempfile.mkdtemp(prefix="ranet-slo-"))
    fixed_process, fixed_url = start_server(store_args, logs / "fixed.log")
    adaptive_process = None
    try:
        fixed = Client(fixed_url, path, groups, args.timeout)
        await fixed.closed_loop(Phase("warmup", "fixed", None, 2.0), 4)
        capacity = await fixed.closed_loop(Phase("capacity", "fixed", None, args.capacity_seconds), 16)
        rate = sum(1 for o in capacity.outcomes if o.status == 200) / capacity.seconds
        # What the adaptive server can reach at best: the same closed loop at the cheapest point. Early
        # exit cuts model compute, not HTTP and decoding, so on a host where those dominate the floor may
        # not absorb the requested multiple; the overload is then capped below the floor's capacity,
        # since beyond it only shedding helps, and that is the admission gate's job, not this one.
        floor_client = Client(fixed_url, f"{path}?operating_point={floor}", groups, args.timeout)
        floor_phase = await floor_client.closed_loop(
            Phase("floor capacity", "fixed", None, args.capacity_seconds), 16
        )
        floor_client.pool.close()
        floor_rate = sum(1 for o in floor_phase.outcomes if o.status == 200) / floor_phase.seconds
        multiple = min(args.multiple, FLOOR_HEADROOM * floor_rate / rate)
        low = max(1.0, args.low_fraction * rate)
        baseline = await fixed.open_loop(Phase("baseline", "fixed", low, args.baseline_seconds))
        baseline_p99 = percentile(
            [1000.0 * (o.finished - o.scheduled) for o in baseline.outcomes if o.status == 200], 99
        )
        objective = args.objective_ms or round(args.objective_factor * (baseline_p99 or 10.0), 1)
        store_args.server_env = {**store_args.server_env, "RANET_SLO_P99_MS": str(objective)}
        adaptive_process, adaptive_url = start_server(store_args, logs / "adaptive.log")
        adaptive = Client(adaptive_url, path, groups, args.timeout)
        await adaptive.closed_loop(Phase("warmup", "adaptive", None, 2.0), 4)
        phases = [capacity, floor_phase, baseline]
        for name, client in (("fixed", fixed), ("adaptive", adaptive)):
            phases.append(
                await client.open_loop(Phase("overload", name, multiple * rate, args.phase_seconds))
            )
            phases.append(await client.open_loop(Phase("recovery", name, low, args.recovery_seconds)))
        for client in (fixed, adaptive):
            client.pool.close()
    finally:
        stop_server(fixed_process)
        if adaptive_process is not None:
            stop_server(adaptive_process)
    return {
        "ceiling_point": ceiling,
        "sustainable_rps": round(rate, 1),
        "floor_point": floor,
        "floor_sustainable_rps": round(floor_rate, 1),
        "requested_multiple": args.multiple,
        "multiple": round(multiple, 2),
        "baseline_p99_ms": None if baseline_p99 is None else round(baseline_p99, 1),
        "objective_ms": objective,
        "phases": [p.summary(objective) for p in phases],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--ceiling", help="the default point both servers start at (default: full-depth)")
    parser.add_argument("--images-per-request", type=int, default=8)
    parser.add_argument("--images", type=int, default=2000, help="Fashion-MNIST test images, cyclically")
    parser.add_argument("--multiple", type=float, default=2.0, help="overload as a multiple of R")
    parser.add_argument("--low-fraction", type=float, default=0.25)
    parser.add_argument("--objective-ms", type=float, help="the p99 objective (default: factor x baseline)")
    parser.add_argument("--objective-factor", type=float, default=4.0)
    parser.add_argument("--phase-seconds", type=float, default=15.0, help="overload phase length")
    parser.add_argument("--capacity-seconds", type=float, help="default: half the phase")
    parser.add_argument("--baseline-seconds", type=float, help="default: a third of the phase")
    parser.add_argument("--recovery-seconds", type=float, help="default: half the phase")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.capacity_seconds = args.capacity_seconds or args.phase_seconds / 2
    args.baseline_seconds = args.baseline_seconds or args.phase_seconds / 3
    args.recovery_seconds = args.recovery_seconds or args.phase_seconds / 2
    bundle = load_bundle(args.bundle)
    policy = ExitPolicy(bundle.manifest)
    # The accurate point an operator serves when not overloaded: full depth where it is calibrated.
    names = {p.name for p in policy.points}
    ceiling = args.ceiling or ("full-depth" if "full-depth" in names else policy.default_point)
    samples = fmnist_samples(args.images)
    k = args.images_per_request
    groups = [samples[i : i + k] for i in range(0, len(samples) - k + 1, k)]
    started = time.monotonic()
    floor = min(policy.points, key=lambda p: p.expected_flops).name  # where the adaptive server can go
    report = asyncio.run(measure(args, ceiling, floor, groups))
    report.update(
        {
            "bundle": f"{bundle.manifest.name}/{bundle.manifest.version}",
            "images_per_request": k,
            "wall_s": round(time.monotonic() - started, 1),
            "machine": machine_facts(),
            "versions": versions(),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slo.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "slo.md").write_text(render(report))
    print(render(report))


def render(report: dict[str, Any]) -> str:
    lines = [
        "## Latency objective under overload: load-adaptive vs fixed operating point",
        "",
        f"Bundle {report['bundle']}; both servers start at `{report['ceiling_point']}`; "
        f"{report['images_per_request']} Fashion-MNIST test images per request. Sustainable rate at that "
        f"point R = {report['sustainable_rps']} req/s (closed loop); baseline p99 at low load "
        f"{report['baseline_p99_ms']} ms; objective p99 <= {report['objective_ms']} ms "
        f"(`RANET_SLO_P99_MS` on the adaptive server). The cheapest point, `{report['floor_point']}`, "
        f"sustains {report['floor_sustainable_rps']} req/s on the same closed loop. Overload = "
        f"{report['multiple']:g} x R, open loop"
        + (
            "."
            if report["multiple"] >= report["requested_multiple"]
            else f" (the {report['requested_multiple']:g} x R asked for is capped at "
            f"{FLOOR_HEADROOM:g} x the cheapest point's rate: beyond it no operating point helps, only "
            "shedding)."
        ),
        "",
        "| server | phase | offered req/s | 200 | 429 | admitted p50 ms | admitted p99 ms | within objective "
        "| accuracy % | MFLOPs/img | points that answered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["phases"]:
        points = ", ".join(f"{name} ({count})" for name, count in p["points"].items())
        lines.append(
            f"| {p['server']} | {p['phase']} | {p['offered_rps'] or 'closed loop'} | {p['ok_200']} | "
            f"{p['shed_429']} | {p['admitted_p50_ms']} | {p['admitted_p99_ms']} | {p['within_objective']} | "
            f"{p['accuracy']} | {p['mean_mflops_per_image']} | {points} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
