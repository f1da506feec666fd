"""Overload: drive `ranet serve` past capacity with an open-loop arrival process and watch it shed.

Why open loop: a closed-loop client (N workers, each waiting for its answer before sending the next)
slows down with the server, so it never offers more than the server sustains and hides overload. Here
requests start on a fixed schedule whatever the server does, the way independent users arrive, and
latency counts from the scheduled start, so time spent waiting on the client side counts too.

Phases run back to back, each bounded in time:

    capacity   closed loop at --capacity-concurrency: the sustainable rate R (answers 200 per second)
    baseline   open loop at --low-fraction x R: latency at low load ("normal")
    1x 2x 4x   open loop at that multiple of R for --phase-seconds each
    recovery   open loop at the baseline rate again, right after 4x: when does the server answer 200,
               when is p99 back to normal
    (1x 2x 4x recovery again, --rounds times: memory must level off, not climb with every overload)

Per phase: offered rate (target and achieved), admitted (200) rate, 429s and whether every one carried
Retry-After, other statuses, admitted latency p50/p99, server RSS (VmRSS from /proc/<pid>/status,
sampled every 0.5 s) and the client's own CPU time (a client that cannot keep up shows here). After the
run: `ranet_inflight_requests` from /metrics (0 means nothing leaked) and ERROR lines in the server log.

The client is a minimal HTTP/1.1 client on asyncio streams with pre-encoded requests: httpx costs
several times more CPU per request, and on a small machine the client would saturate before the server.
Loopback only: it starts its own server on 127.0.0.1 unless --url names one (then RSS needs --pid).
Writes stress.json and stress.md to --out. Usage:

    .venv/bin/python benchmarks/stress.py [--phase-seconds 10] [--server-env RANET_MAX_QUEUE_SIZE=64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from ranet_client.image_sets import Sample, bundled_samples
from ranet_client.rawhttp import Answer, Pool

ROOT = Path(__file__).resolve().parents[1]
RSS_INTERVAL_S = 0.5
DRAIN_LIMIT_S = 20.0  # after the last phase, requests still running get this long, then count as timeouts


# The minimal HTTP/1.1 client lives in ranet_client.rawhttp (the load generator's raw wire uses it too).


def encode_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")


def encode_classify(host: str, port: int, path: str, sample: Sample) -> bytes:
    """A multipart POST with one image, the encoding the project's client sends by default."""
    boundary = "ranet-stress-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{sample.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + sample.data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


# -- records and summaries ------------------------------------------------------------------------------


@dataclass
class Shot:
    """One request. `status` is the HTTP status, or "timeout", "connection_error", "client_dropped"."""

    phase: str
    sample: int
    scheduled: float  # perf_counter at which it was due (open loop) or sent (closed loop)
    finished: float
    status: str
    retry_after: str | None = None
    class_index: int | None = None
    server_ms: float | None = None  # the server's own timings.total_ms: from its handler's start
    started: float | None = None  # when the client's task actually began sending (lag: client-side)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class PhaseResult:
    name: str
    mode: str
    target_rate: float | None
    seconds: float
    started: float  # perf_counter
    client_cpu_s: float = 0.0
    shots: list[Shot] = field(default_factory=list)

    def summary(self, rss: Sequence[tuple[float, int]], reference: dict[int, int]) -> dict[str, Any]:
        shots = self.shots
        ok = [s for s in shots if s.status == "200"]
        shed = [s for s in shots if s.status == "429"]
        latencies = [1000.0 * (s.finished - s.scheduled) for s in ok]
        mine = [kib for t, kib in rss if self.started <= t <= self.started + self.seconds]
        before = [kib for t, kib in rss if t <= self.started]
        judged = [s for s in ok if s.class_index is not None and s.sample in reference]
        sent = [s for s in shots if s.status != "client_dropped"]
        return {
            "phase": self.name,
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "target_rate_rps": None if self.target_rate is None else round(self.target_rate, 1),
            "offered_rate_rps": round(len(sent) / self.seconds, 1),
            "admitted_rate_rps": round(len(ok) / self.seconds, 1),
            "requests": len(shots),
            "ok_200": len(ok),
            "shed_429": len(shed),
            "shed_429_with_retry_after": sum(1 for s in shed if s.retry_after),
            "all_429_have_retry_after": all(s.retry_after for s in shed),
            "statuses": dict(sorted(Counter(s.status for s in shots).items())),
            "admitted_p50_ms": _round(percentile(latencies, 50)),
            "admitted_p99_ms": _round(percentile(latencies, 99)),
            "admitted_max_ms": _round(max(latencies) if latencies else None),
            "client_lag_p99_ms": _round(
                percentile([1000.0 * (s.started - s.scheduled) for s in shots if s.started is not None], 99)
            ),
            "admitted_server_p99_ms": _round(
                percentile([s.server_ms for s in ok if s.server_ms is not None], 99)
            ),
            "wrong_class": sum(1 for s in judged if s.class_index != reference[s.sample]),
            "rss_start_mib": _mib(before[-1] if before else (mine[0] if mine else None)),
            "rss_max_mib": _mib(max(mine) if mine else None),
            "rss_end_mib": _mib(mine[-1] if mine else None),
            "client_cpu_s": round(self.client_cpu_s, 2),
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024.0, 1)


def recovery_figures(recovery: PhaseResult, normal_p99_ms: float | None) -> dict[str, Any]:
    """How soon after the overload the server answers 200 again, and when latency is normal again.

    `p99_normal_after_s`: the earliest send offset from which every request of the recovery phase was
    answered 200 within the normal threshold (2x the baseline p99); None if that never happened.
    """
    start = recovery.started
    ok = [s for s in recovery.shots if s.status == "200"]
    first_ok = min((s.finished for s in ok), default=None)
    threshold = None if normal_p99_ms is None else 2.0 * normal_p99_ms
    settled: float | None = None
    if threshold is not None:
        shots = sorted(recovery.shots, key=lambda s: s.scheduled)
        settled_index = len(shots)
        for index in range(len(shots) - 1, -1, -1):
            shot = shots[index]
            if shot.status != "200" or 1000.0 * (shot.finished - shot.scheduled) > threshold:
                break
            settled_index = index
        if settled_index < len(shots):
            settled = max(0.0, shots[settled_index].scheduled - start)
    return {
        "first_200_after_s": _round(None if first_ok is None else first_ok - start, 3),
        "normal_p99_threshold_ms": _round(threshold),
        "p99_normal_after_s": _round(settled, 3),
    }


# -- load ------------------------------------------------------------------------------------------------

Shoot = Callable[[int, float], Awaitable[None]]  # send request number i, scheduled at perf_counter t


async def closed_loop(shoot: Shoot, concurrency: int, end: float) -> None:
    """`concurrency` workers, each sending its next request as soon as its last one is answered."""
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < end:
            counter += 1
            await shoot(counter, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(
    shoot: Shoot,
    rate: float,
    started: float,
    seconds: float,
    pending: set[asyncio.Task[None]],
    admit: Callable[[int, float], bool] = lambda index, due: True,
) -> None:
    """Request i due at `started + i / rate`, sent whether or not earlier ones were answered (unless
    `admit(i, due)` says no); returns at the end of the phase with the stragglers left in `pending`."""
    for index in range(max(1, int(rate * seconds))):
        due = started + index / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))  # sleep(0) still yields when behind
        if not admit(index, due):
            continue
        task = asyncio.create_task(shoot(index, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.sleep(max(0.0, started + seconds - time.perf_counter()))


class Driver:
    """Sends the pre-encoded requests, records every answer, samples the server's RSS."""

    def __init__(self, url: str, path: str, samples: Sequence[Sample], timeout: float, max_inflight: int):
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing to load {url}: this benchmark only targets loopback")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.pool = Pool(self.host, self.port)
        self.requests = [encode_classify(self.host, self.port, path, s) for s in samples]
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.pending: set[asyncio.Task[None]] = set()
        self.rss: list[tuple[float, int]] = []

    async def shoot(self, phase: PhaseResult, index: int, scheduled: float) -> None:
        sample = index % len(self.requests)
        started = time.perf_counter()
        status, retry_after, class_index, server_ms = "connection_error", None, None, None
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self.pool.request(self.requests[sample])
        except TimeoutError:
            status = "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        else:
            status = str(answer.status)
            retry_after = answer.headers.get("retry-after")
            if answer.status == 200:
                body = json.loads(answer.body)
                class_index = int(body["results"][0]["class_index"])
                server_ms = float(body["timings"]["total_ms"])
        phase.shots.append(
            Shot(
                phase.name,
                sample,
                scheduled,
                time.perf_counter(),
                status,
                retry_after,
                class_index,
                server_ms,
                started,
            )
        )

    async def closed_loop(self, name: str, concurrency: int, seconds: float) -> PhaseResult:
        phase = PhaseResult(name, "closed-loop", None, seconds, time.perf_counter())
        cpu = time.process_time()
        await closed_loop(partial(self.shoot, phase), concurrency, phase.started + seconds)
        phase.seconds = time.perf_counter() - phase.started
        phase.client_cpu_s = time.process_time() - cpu
        return phase

    async def open_loop(self, name: str, rate: float, seconds: float) -> PhaseResult:
        """Requests due at start + i / rate; one that finds `max_inflight` pending is dropped client-side."""
        phase = PhaseResult(name, "open-loop", rate, seconds, time.perf_counter())
        cpu = time.process_time()

        def admit(index: int, due: float) -> bool:
            if len(self.pending) < self.max_inflight:
                return True
            phase.shots.append(Shot(name, index, due, due, "client_dropped"))
            return False

        await open_loop(partial(self.shoot, phase), rate, phase.started, seconds, self.pending, admit)
        phase.client_cpu_s = time.process_time() - cpu
        return phase

    async def drain(self) -> None:
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=DRAIN_LIMIT_S + self.timeout)
        for task in list(self.pending):
            task.cancel()

    async def sample_rss(self, pid: int | None, stop: asyncio.Event) -> None:
        if pid is None:
            return
        status = Path(f"/proc/{pid}/status")
        while not stop.is_set():
            try:
                match = re.search(r"^VmRSS:\s+(\d+) kB", status.read_text(), re.MULTILINE)
            except OSError:
                return
            if match:
                self.rss.append((time.perf_counter(), int(match.group(1))))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_INTERVAL_S)

    async def get(self, path: str) -> Answer:
        return await self.pool.request(encode_get(self.host, self.port, path))


async def reference_classes(driver: Driver) -> dict[int, int]:
    """Each sample once, alone on an idle server: the class every later answer must repeat."""
    phase = PhaseResult("reference", "sequential", None, 0.0, time.perf_counter())
    for index in range(len(driver.requests)):
        await driver.shoot(phase, index, time.perf_counter())
    bad = [s.status for s in phase.shots if s.status != "200"]
    if bad:
        raise SystemExit(f"the reference run failed: statuses {bad}")
    return {s.sample: int(s.class_index) for s in phase.shots if s.class_index is not None}


def inflight_gauge(metrics_text: str) -> float | None:
    values = [
        float(m.group(1))
        for m in re.finditer(r"^ranet_inflight_requests\{[^}]*\}\s+(\S+)$", metrics_text, re.MULTILINE)
    ]
    return sum(values) if values else None


async def run(args: argparse.Namespace, url: str, pid: int | None) -> dict[str, Any]:
    samples = bundled_samples()
    query = f"?{urlencode(args.query)}" if args.query else ""
    path = (f"/v1/models/{args.model}/classify" if args.model else "/v1/classify") + query
    driver = Driver(url, path, samples, args.timeout, args.max_inflight)
    stop = asyncio.Event()
    sampler = asyncio.create_task(driver.sample_rss(pid, stop))
    phases: list[PhaseResult] = []
    try:
        reference = await reference_classes(driver)
        await driver.closed_loop("warmup", 4, args.warmup_seconds)
        if args.rate:
            rate = args.rate
        else:
            capacity = await driver.closed_loop("capacity", args.capacity_concurrency, args.capacity_seconds)
            phases.append(capacity)
            rate = sum(1 for s in capacity.shots if s.status == "200") / capacity.seconds
            if rate <= 0:
                raise SystemExit("the capacity phase got no 200 answers")
        low = max(1.0, args.low_fraction * rate)
        phases.append(await driver.open_loop("baseline", low, args.baseline_seconds))
        recoveries: list[PhaseResult] = []
        for round_number in range(1, args.rounds + 1):
            suffix = "" if round_number == 1 else f" #{round_number}"
            for multiple in args.multipliers:
                phases.append(
                    await driver.open_loop(f"{multiple:g}x{suffix}", multiple * rate, args.phase_seconds)
                )
            recoveries.append(await driver.open_loop(f"recovery{suffix}", low, args.recovery_seconds))
            phases.append(recoveries[-1])
        await driver.drain()
        await asyncio.sleep(RSS_INTERVAL_S)
        metrics = await driver.get("/metrics")
        after = await driver.get("/readyz")
    finally:
        stop.set()
        await sampler
        driver.pool.close()
    baseline = next(p for p in phases if p.name == "baseline")
    normal = percentile(
        [1000.0 * (s.finished - s.scheduled) for s in baseline.shots if s.status == "200"], 99
    )
    summaries = [p.summary(driver.rss, reference) for p in phases]
    by_name = {s["phase"]: s for s in summaries}
    rss_values = [kib for _, kib in driver.rss]
    return {
        "sustainable_rate_rps": round(rate, 1),
        "low_rate_rps": round(low, 1),
        "phases": summaries,
        "recovery": [
            {
                "round": number,
                **recovery_figures(phase, normal),
                "rss_end_mib": by_name[phase.name]["rss_end_mib"],
            }
            for number, phase in enumerate(recoveries, start=1)
        ],
        "after": {
            "inflight_requests": inflight_gauge(metrics.body.decode()),
            "readyz_status": after.status,
            "client_connections_opened": driver.pool.opened,
        },
        "rss": {
            "source": f"VmRSS of /proc/{pid}/status every {RSS_INTERVAL_S} s" if pid else "not sampled",
            "before_load_mib": _mib(rss_values[0] if rss_values else None),
            "max_mib": _mib(max(rss_values) if rss_values else None),
            "after_recovery_mib": _mib(rss_values[-1] if rss_values else None),
            "samples": len(rss_values),
        },
        "reference_classes": {samples[i].name: c for i, c in sorted(reference.items())},
    }


# -- the server --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "passive", "RANET_HOST": "127.0.0.1", "RANET_PORT": str(port)}
    env["RANET_GRPC_PORT"] = "0"  # HTTP only: 8081 may be taken
    env["RANET_MODEL_STORE"] = str(args.model_store)
    if args.model:
        env["RANET_DEFAULT_MODEL"] = args.model
    env.update(args.server_env)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ranet_serve.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(
                    encode_get("127.0.0.1", port, "/readyz").replace(
                        b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
                    )
                )
                if s.recv(64).split(b" ")[1:2] == [b"200"]:
                    return process, url
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server was not ready after {args.start_timeout} s:\n{log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def log_errors(log: Path) -> list[str]:
    """ERROR/CRITICAL lines and tracebacks the server logged: overload must not produce any."""
    lines = log.read_text(errors="replace").splitlines()
    return [
        line for line in lines if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
    ]


# -- report ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("ranet-serve", "torch", "onnxruntime", "fastapi", "starlette", "uvicorn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
    }


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "## Overload (open-loop arrivals at 1x, 2x, 4x the sustainable rate, then recovery)",
        "",
        f"Run {report['finished_utc']} with `{report['command']}`.",
        f"Machine: {m['cpus']} CPUs ({m['cpu'] or 'unknown'}), load average at start "
        f"{', '.join(str(x) for x in m['load_average_at_start'])}; Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + ".",
        *(
            ["**The machine was busy (load average above its CPU count): latencies are not representative.**"]
            if m["cpus"] and m["load_average_at_start"][0] > m["cpus"]
            else []
        ),
        f"Server settings overridden: {report['server_env'] or 'none (defaults)'}; "
        f"query: {report['query'] or 'none (default operating point)'}.",
        "",
        f"Sustainable rate (closed loop, {report['capacity_concurrency']} concurrent): "
        f"**{report['sustainable_rate_rps']} req/s**; "
        f"low (baseline and recovery) rate {report['low_rate_rps']} req/s.",
        "",
        "| phase | target req/s | offered req/s | admitted (200) req/s | 429 | 429 with Retry-After "
        "| other statuses | admitted p50 ms | admitted p99 ms | in-server p99 ms | client lag p99 ms "
        "| wrong class "
        "| RSS start / max / end MiB | client CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["phases"]:
        other = {k: v for k, v in p["statuses"].items() if k not in ("200", "429")}
        lines.append(
            f"| {p['phase']} | {p['target_rate_rps'] or 'closed loop'} | {p['offered_rate_rps']} | "
            f"{p['admitted_rate_rps']} | {p['shed_429']} | {p['shed_429_with_retry_after']} | "
            f"{', '.join(f'{k}: {v}' for k, v in other.items()) or '-'} | {p['admitted_p50_ms']} | "
            f"{p['admitted_p99_ms']} | {p['admitted_server_p99_ms']} | "
            f"{p['client_lag_p99_ms']} | {p['wrong_class']} | "
            f"{p['rss_start_mib']} / {p['rss_max_mib']} / "
            f"{p['rss_end_mib']} | {p['client_cpu_s']} |"
        )
    a, rss = report["after"], report["rss"]
    lines.append("")
    for r in report["recovery"]:
        lines.append(
            f"Recovery, round {r['round']}: first 200 {r['first_200_after_s']} s after the load dropped; "
            f"every request answered 200 within the normal threshold ({r['normal_p99_threshold_ms']} ms = "
            f"2x the baseline p99) from {r['p99_normal_after_s']} s on; RSS then {r['rss_end_mib']} MiB."
        )
    lines += [
        f"Memory ({rss['source']}): {rss['before_load_mib']} MiB before load, {rss['max_mib']} MiB peak, "
        f"{rss['after_recovery_mib']} MiB after the last recovery.",
        f"After the run: ranet_inflight_requests = {a['inflight_requests']}, /readyz {a['readyz_status']}, "
        f"server log errors: {len(report['server_log_errors'])}, "
        f"server exit code {report['server_exit_code']}.",
        "",
        "Latency counts from each request's scheduled start; in-server is the server's own `total_ms` "
        "(from its handler's start), so the difference is time before the handler ran (accept backlog, "
        "event loop) or in the client; client lag is how late the client's own loop started a request "
        "(large values: the client, not the server, was short of CPU). `client_dropped` means the client "
        f"already had {report['max_inflight']} requests pending (it bounds itself rather than the "
        "server's backlog).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an already running server on loopback (default: start one)")
    parser.add_argument("--pid", type=int, help="that server's process id, for RSS")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default=None, help="model to classify with (default: the server's)")
    parser.add_argument(
        "--server-env", nargs="*", default=[], metavar="RANET_X=V", help="settings for the started server"
    )
    parser.add_argument(
        "--query", nargs="*", default=[], metavar="KNOB=V", help="knobs sent with every request"
    )
    parser.add_argument("--rate", type=float, help="the sustainable rate, req/s (skips measuring it)")
    parser.add_argument("--capacity-concurrency", type=int, default=32)
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--recovery-seconds", type=float, default=10.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="overload+recovery rounds: RSS must plateau, not climb per round",
    )
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument(
        "--low-fraction", type=float, default=0.25, help="baseline/recovery rate as a share of R"
    )
    parser.add_argument("--timeout", type=float, default=35.0, help="client timeout per request, s")
    parser.add_argument(
        "--max-inflight", type=int, default=2000, help="client-side bound on pending requests"
    )
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for name in ("server_env", "query"):
        pairs = {}
        for item in getattr(args, name):
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--{name.replace('_', '-')}: expected KEY=VALUE, got {item!r}")
            pairs[key] = value
        setattr(args, name, pairs)
    total = (
        args.warmup_seconds
        + (0 if args.rate else args.capacity_seconds)
        + args.baseline_seconds
        + (args.phase_seconds * len(args.multipliers) + args.recovery_seconds) * args.rounds
    )
    if total > 600:
        parser.error(f"the phases add up to {total:.0f} s; keep a run under 10 minutes")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = machine()
    process: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="ranet-stress-") as tmp:
        log = Path(tmp) / "server.log"
        if args.url:
            url, pid = args.url, args.pid
        else:
            process, url = start_server(args, log)
            pid = process.pid
        try:
            figures = asyncio.run(run(args, url, pid))
        finally:
            exit_code = stop_server(process) if process is not None else None
        errors = log_errors(log) if process is not None else []
    report = {
        "command": " ".join(["benchmarks/stress.py", *(argv if argv is not None else sys.argv[1:])]),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": started,
        "url": url if args.url else "started by the script on 127.0.0.1",
        "server_env": args.server_env,
        "query": args.query,
        "capacity_concurrency": args.capacity_concurrency,
        "max_inflight": args.max_inflight,
        **figures,
        "server_log_errors": errors[:50],
        "server_exit_code": exit_code,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stress.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (args.out / "stress.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
