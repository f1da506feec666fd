"""How much of the engine the HTTP server delivers, how it scales with front-end processes, and overload.

Three parts (issue 17 follow-up), each measured side by side in this one run, driven by `hey`:

1. efficiency: HTTP images/s over in-process images/s at the same operating point (default point
   and full depth), with one image per request and with 16 images per request, 16 clients. The
   in-process figures are measured here, just before, on the same images hey sends (image 0
   repeated; the first 16 test images) through the same runtime (`CascadeExecutor` on
   `OnnxRuntime` with the server's threads), at two batch sizes: the images of one request (1 or
   16), and every client's images in one batch, capped at the server's max_batch_size (16 or 32),
   the most the server's batcher could form. Report only.
2. frontends: requests/s of `ranet serve` with RANET_FRONTENDS=1, 2, 4 and of the one-process server
   (`RANET_ENGINE_PROCESS=false`) at the default point, 16 clients, one image per request, each
   server alone on the machine; and what that projects for --project-cores cores.
3. overload: 400 closed-loop clients (`hey -c 400 -z 15s`) at full depth (`confidence=1`), default
   settings, --overload-rounds times in a row: goodput (200s per second) vs the throughput at 16
   clients, p99 of the 200s only vs the p99 at 16 clients, 429 latency, 5xx count, and the RSS of the
   server's whole process tree (supervisor, engine, front-ends) before and after each round. Then
   the same overload against a fresh server with RANET_HOLD_EARLY_RETRIES=false (--overload-no-hold-
   rounds, default 1): the trade-off of holding early retries, fast 429s against CPU left for
   admitted work; the goals stay judged on the default server. Then the same overload against a
   server with RANET_SLO_P99_MS (default 80) at the default point. Beside every overload run, a
   client that honours Retry-After (benchmarks/probe.py) times the server's answers to it.

Why hey's CSV: its summary mixes 200s and 429s in one latency distribution; `hey -o csv` lists
every answered request with its status, so admitted and rejected latency are computed apart
(hey.CsvRun). hey leaves transport errors out of its CSV.

Every server runs in its own process group on 127.0.0.1 with `RANET_RUN_DIR` in a temporary
directory, so the front-end processes are known (their pid files): `py-spy record -p PID` needs
one. Writes serving.json and serving.md. Usage:

    .venv/bin/python benchmarks/serving.py [--parts efficiency frontends overload] [--seconds 5]
        [--frontends one 1 2 4] [--overload-clients 400] [--overload-seconds 15]
        [--overload-rounds 2] [--overload-no-hold-rounds 1] [--slo-objective-ms 80]
        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from servers import ManagedServer, free_port, http_ok

from common import DEFAULT_BUNDLE, ROOT, fmnist_samples
from hey import STEADY_AFTER_S, hey_executable, hey_version, multipart_body, nearest_rank, run_hey_csv
from probe import RetryAfterProbe
from ranet_serve.api.admission import EARLY_RETRY_HOLD_SECONDS
from ranet_serve.cpus import engine_threads
from ranet_serve.export.bundle import load_bundle
from ranet_serve.settings import Settings

PARTS = ("efficiency", "frontends", "overload")
CLIENTS = 16  # the ordinary load every part compares against
BATCH_IMAGES = 16  # images per request in the many-images case
ONE_PROCESS = "one"  # in --frontends: the one-process server, for reference
MAX_BATCH_SIZE = int(Settings.model_fields["max_batch_size"].default)
# The bar for the objective run: admitted p99 within this multiple of RANET_SLO_P99_MS (the
# overload goals themselves are judged in run_all.py).
SLO_P99_MULTIPLE = 2.0
# A 429 faster than this was answered at once: the server holds a request that comes back on a
# connection within the hold after its previous 429 (EARLY_RETRY_HOLD_SECONDS, 0.25-0.375 s with its
# spread; RANET_HOLD_EARLY_RETRIES, on by default) until the hold is over, and hey ignores Retry-After,
# so many of its 429s are such held retries. Slower ones were held, or answered late by a busy loop.
HELD_429_MS = 1000.0 * EARLY_RETRY_HOLD_SECONDS
# The overload variant that answers every 429 at once: early retries not held.
NO_HOLD_ENV = {"RANET_HOLD_EARLY_RETRIES": "false"}


# -- the server's processes -----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process visible in /proc (one pass)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it exited while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the supervisor, the engine, the front-ends, their helpers)."""
    children = _children()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(pid: int) -> float:
    """The sum of RSS over the server's process tree, MiB. Shared pages count once per process, so
    this overstates the memory in use, but it moves with it: what matters here is growth."""
    return sum(rss_kib(p) for p in process_tree(pid)) / 1024


class RssSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread, for the peak of a phase."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(tree_rss_mib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float | None:
        return max(self.samples) if self.samples else None


@dataclass
class Running:
    """A started `ranet serve` with what the benchmark needs to know about its processes."""

    server: ManagedServer
    run_root: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def frontend_pids(self) -> list[int]:
        """The front-end processes' pids from their pid files (none for the one-process server)."""
        return sorted(int(p.read_text()) for p in self.run_root.glob("*/frontend-*.pid"))


def start_ranet(
    bundle: Path, threads: int, work: Path, name: str, env: dict[str, str], frontends: int | None
) -> Running:
    """`ranet serve` on the bundle's store with `env` on top of the defaults, ready, and (engine
    process) with all `frontends` front-ends up: /readyz answers from the first one that is."""
    run_root = work / f"run-{name}"
    port = free_port()
    command = [sys.executable, "-m", "ranet_serve.cli", "serve", "--port", str(port)]
    command += ["--grpc-port", "0"]  # HTTP only: the default 8081 may be taken on the machine
    if threads > 0:  # else the server's own split of the cores (ranet_serve/cpus.py)
        command += ["--threads", str(threads)]
    command += ["--model-store", str(bundle.parents[1])]
    command += ["--default-model", bundle.parent.name, "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    server = ManagedServer(
        f"ranet serve ({name})",
        command,
        http_ok(f"{url}/readyz"),
        cwd=ROOT,
        env={**env, "RANET_RUN_DIR": str(run_root)},
        log=work / f"{name}.log",
        url=url,
    )
    running = Running(server.start(), run_root)
    if frontends:
        deadline = time.monotonic() + 120
        while len(running.frontend_pids()) < frontends:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{name}: {len(running.frontend_pids())} of {frontends} front-ends up")
            time.sleep(0.2)
    return running


@contextmanager
def serving(
    bundle: Path, threads: int, work: Path, name: str, env: dict[str, str], frontends: int | None = None
) -> Iterator[Running]:
    running = start_ranet(bundle, threads, work, name, env, frontends)
    try:
        yield running
    finally:
        running.server.stop()


# -- requests -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A multipart body on disk and its Content-Type: what hey posts."""

    path: Path
    content_type: str
    images: int


def classify_url(url: str, version: str, full_depth: bool) -> str:
    knobs = {"version": version, **({"confidence": "1"} if full_depth else {})}
    return f"{url}/v1/classify?{urlencode(knobs)}"


def hey_run(url: str, body: Body, seconds: float, clients: int, timeout_s: int, label: str) -> dict[str, Any]:
    """One hey CSV run, summarised, with images/s (200s x images per request), printed as it ends."""
    run = run_hey_csv(
        url, body.path, body.content_type, seconds=seconds, concurrency=clients, timeout_s=timeout_s
    )
    summary = run.summary()
    immediate = [ms for ms in run.latencies_ms(429) if ms < HELD_429_MS]
    summary["rejected_immediate"] = len(immediate)
    summary["rejected_immediate_p99_ms"] = nearest_rank(immediate, 99)
    # Past the first second: the steady state, without the burst of every client connecting at once.
    steady = [1000.0 * r.latency_s for r in run.rows if r.status == 200 and r.offset_s >= STEADY_AFTER_S]
    summary["ok_p99_steady_ms"] = nearest_rank(steady, 99)
    summary["images_per_request"] = body.images
    summary["images_per_s"] = summary["ok_per_s"] * body.images
    summary["clients"] = clients
    print(
        f"hey {label:48s} c={clients:<4d} {summary['ok_per_s']:8.1f} 200/s  "
        f"p99(200) {_fmt(summary['ok_p99_ms'])} ms  statuses {summary['status_codes']}",
        flush=True,
    )
    return summary


def overload_rounds(
    pid: int,
    url: str,
    body: Body,
    args: argparse.Namespace,
    timeout_s: int,
    label: str,
    count: int | None = None,
) -> list[dict[str, Any]]:
    """`count` (default: --overload-rounds) hey runs of --overload-clients for --overload-seconds each,
    with the server tree's memory after each run and at its peak during it."""
    rounds = []
    payload = body.path.read_bytes()
    for index in range(args.overload_rounds if count is None else count):
        probe = RetryAfterProbe(url, payload, body.content_type, seconds=args.overload_seconds)
        with RssSampler(pid) as sampler, probe:
            run = hey_run(
                url, body, args.overload_seconds, args.overload_clients, timeout_s, label.format(index + 1)
            )
        run["rss_after_mib"] = tree_rss_mib(pid)
        run["rss_peak_mib"] = sampler.peak_mib
        run["probe"] = probe.summary()
        print(f"  beside it, a client honouring Retry-After: {run['probe']}", flush=True)
        rounds.append(run)
    return rounds


def warm_up(url: str, body: Body, seconds: float, timeout_s: int) -> None:
    """Discarded traffic: the first requests pay for lazy initialisation in every process."""
    if seconds > 0:
        run_hey_csv(
            url, body.path, body.content_type, seconds=seconds, concurrency=CLIENTS, timeout_s=timeout_s
        )


# -- in process -----------------------------------------------------------------------------------------


def inprocess_rates(
    bundle_dir: Path, threads: int, cases: dict[str, tuple[list[bytes], int, bool]], seconds: float
) -> dict[str, float]:
    """Images/s of the cascade in this process for each case (images, batch size, full depth).

    The batch is the case's images tiled to the batch size, decoded and normalised by the server's
    own preprocessing, with the thresholds the server resolves for the same knobs (the default
    budget, or confidence 1). Rounds interleave the cases and the figure is the median over
    rounds, so drift on a shared machine hits every case alike.
    """
    import numpy as np
    import torch

    from ranet_serve.api.images import ImageLimits, preprocess_batch
    from ranet_serve.cascade.executor import CascadeExecutor
    from ranet_serve.cascade.policy import Budget, ExitPolicy
    from ranet_serve.cascade.runtimes import OnnxRuntime

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    executor = CascadeExecutor(OnnxRuntime(bundle, threads=threads))
    policy = ExitPolicy(manifest)
    calls: dict[str, Callable[[], object]] = {}
    sizes: dict[str, int] = {}
    for name, (images, batch, full_depth) in cases.items():
        tiled = [images[i % len(images)] for i in range(batch)]
        tensor = torch.from_numpy(preprocess_batch(tiled, manifest.input, ImageLimits()))
        plan = policy.resolve(Budget(confidence=1.0) if full_depth else Budget())
        thresholds = np.broadcast_to(plan.thresholds, (batch, len(manifest.exits))).copy()
        max_exit = np.full(batch, plan.max_exit)

        def call(
            tensor: torch.Tensor = tensor,
            thresholds: np.ndarray = thresholds,
            max_exit: np.ndarray = max_exit,
        ) -> object:
            return executor.run(tensor, thresholds, max_exit)

        calls[name], sizes[name] = call, batch
    rounds = 3
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up: session creation and first-call allocations
    for _ in range(rounds):
        for name, call in calls.items():
            count, started = 0, time.perf_counter()
            while count < 2 or time.perf_counter() - started < seconds / rounds:
                call()
                count += 1
            rates[name].append(count * sizes[name] / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


# -- the three parts ------------------------------------------------------------------------------------


def efficiency_cases(one: list[bytes], many: list[bytes]) -> dict[str, tuple[list[bytes], int, bool]]:
    """In-process cases: per point, batch = images per request and = every client's images (capped)."""
    cases = {}
    for point, full in (("default", False), ("full", True)):
        for images, per_request in ((one, 1), (many, BATCH_IMAGES)):
            for batch in sorted({per_request, min(CLIENTS * per_request, MAX_BATCH_SIZE)}):
                cases[f"{point}/{per_request}/{batch}"] = (images, batch, full)
    # The engine's own ceiling at the default point (front-end projection): a full batch of image 0.
    cases[f"default/1/{MAX_BATCH_SIZE}"] = (one, MAX_BATCH_SIZE, False)
    return cases


def efficiency_rows(http: dict[str, Any], inprocess: dict[str, float]) -> list[dict[str, Any]]:
    """Per (point, images per request): HTTP images/s over in-process at both batch sizes."""
    rows = []
    for key, run in http.items():
        point, per_request = key.split("/")
        request_batch = int(per_request)
        flight_batch = min(CLIENTS * request_batch, MAX_BATCH_SIZE)
        at_request = inprocess.get(f"{point}/{per_request}/{request_batch}")
        at_flight = inprocess.get(f"{point}/{per_request}/{flight_batch}")
        images = run["images_per_s"]
        rows.append(
            {
                "point": "default point" if point == "default" else "full depth",
                "images_per_request": request_batch,
                "http_images_per_s": images,
                "http_p99_ms": run["ok_p99_ms"],
                "inprocess_batch": request_batch,
                "inprocess_images_per_s": at_request,
                "ratio": images / at_request if at_request else None,
                "inprocess_flight_batch": flight_batch,
                "inprocess_flight_images_per_s": at_flight,
                "ratio_flight": images / at_flight if at_flight else None,
            }
        )
    return rows


def parse_frontends(values: list[str]) -> list[int | str]:
    """`--frontends` tokens: front-end counts, or `one` for the one-process server."""
    out: list[int | str] = []
    for value in values:
        if value == ONE_PROCESS:
            out.append(ONE_PROCESS)
        elif value.isdigit() and int(value) >= 1:
            out.append(int(value))
        else:
            raise argparse.ArgumentTypeError(
                f"--frontends: {value!r} is neither a count >= 1 nor {ONE_PROCESS!r}"
            )
    return out


def projection(
    frontends: dict[str, Any], engine_images_per_s: float | None, cores: int, threads: int
) -> dict[str, Any] | None:
    """What the measured scaling projects for `cores` cores, under the stated assumption.

    Assumption: the server is front-end bound, one front-end process per core does what the one
    front-end measured here does, and the engine process keeps `threads` cores for its runtimes,
    until the engine saturates; its in-process images/s at batch max_batch_size bounds it.
    """
    one = (frontends.get("1") or {}).get("ok_per_s")
    if not one:
        return None
    frontend_cores = max(cores - threads, 1)
    bound = frontend_cores * one
    projected = min(bound, engine_images_per_s) if engine_images_per_s else bound
    return {
        "cores": cores,
        "engine_threads": threads,
        "frontend_cores": frontend_cores,
        "per_frontend_rps": one,
        "frontend_bound_rps": bound,
        "engine_bound_images_per_s": engine_images_per_s,
        "projected_rps": projected,
        "limited_by": "engine" if engine_images_per_s and engine_images_per_s < bound else "front-ends",
    }


def overload_figures(baseline: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The overload goals' figures: ratios to the 16-client run, worst over rounds; memory growth."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def probe_worst(key: str) -> float | None:
        """The worst (highest) of a probe figure over the rounds that had a probe."""
        values = [(r.get("probe") or {}).get(key) for r in rounds]
        return max((v for v in values if v is not None), default=None)

    goodput = [ratio(r["ok_per_s"], baseline["ok_per_s"]) for r in rounds]
    p99 = [ratio(r["ok_p99_ms"], baseline["ok_p99_ms"]) for r in rounds]
    steady = [ratio(r.get("ok_p99_steady_ms"), baseline["ok_p99_ms"]) for r in rounds]
    rejected = [r["rejected_p99_ms"] for r in rounds if r["rejected_p99_ms"] is not None]
    immediate = [r.get("rejected_immediate_p99_ms") for r in rounds]
    after = [r["rss_after_mib"] for r in rounds]
    return {
        "goodput_ratio": goodput,
        "goodput_ratio_worst": min((g for g in goodput if g is not None), default=None),
        "admitted_p99_ratio": p99,
        "admitted_p99_ratio_worst": max((p for p in p99 if p is not None), default=None),
        "admitted_p99_steady_ratio": steady,
        "admitted_p99_steady_ratio_worst": max((p for p in steady if p is not None), default=None),
        "rejected_p99_ms_worst": max(rejected) if rejected else None,
        "rejected_immediate_p99_ms_worst": max((v for v in immediate if v is not None), default=None),
        # The client that honours Retry-After beside the storm (benchmarks/probe.py).
        "probe_rejected_p50_ms_worst": probe_worst("rejected_p50_ms"),
        "probe_rejected_p99_ms_worst": probe_worst("rejected_p99_ms"),
        "probe_rejected_p99_steady_ms_worst": probe_worst("rejected_p99_steady_ms"),
        "probe_rejected": sum((r.get("probe") or {}).get("status_codes", {}).get("429", 0) for r in rounds),
        "server_errors_5xx": sum(r["server_errors_5xx"] for r in rounds),
        # Flat memory: from the end of the first round to the end of the last (None with one round).
        "memory_growth_after_first": (after[-1] / after[0] - 1) if len(after) > 1 and after[0] else None,
    }


# -- report ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _immediate(run: dict[str, Any]) -> str:
    """The 429s answered at once (not held): their count and p99."""
    return f"{run.get('rejected_immediate', 0)}, {_fmt(run.get('rejected_immediate_p99_ms'))}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rejected_per_s(run: dict[str, Any]) -> float | None:
    """429 answers per second of the run (the elapsed time every rate here uses)."""
    return run["rejected_429"] / run["elapsed_s"] if run.get("elapsed_s") else None


def _overload_row(label: str, run: dict[str, Any], goodput: float | None, p99: float | None) -> str:
    """One row of the overload table; `goodput` and `p99` are the ratios to the 16-client run."""
    return (
        f"| {label} | {run['elapsed_s']:.1f} | {_fmt(run['ok_per_s'], 0)} | {_ratio(goodput)} | "
        f"{_fmt(run['ok_p50_ms'])} | {_fmt(run['ok_p99_ms'])} | {_ratio(p99)} | {run['rejected_429']} | "
        f"{_fmt(_rejected_per_s(run), 0)} | {_fmt(run['rejected_p50_ms'])} | "
        f"{_fmt(run['rejected_p99_ms'])} | "
        f"{_immediate(run)} | {run['server_errors_5xx']} | {run['status_codes']} | "
        f"{_fmt(run.get('rss_after_mib'), 0)} | {_fmt(run.get('rss_peak_mib'), 0)} |"
    )


def hold_trade_off(overload: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Holding early retries (the default server's rounds) against not holding them (the
    RANET_HOLD_EARLY_RETRIES=false rounds): per figure, the median over each side's rounds."""

    def median(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return statistics.median(values) if values else None

    sides = {"held": overload["rounds"], "not_held": (overload.get("no_hold") or {}).get("rounds") or []}
    figures: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "ok_per_s": lambda r: r["ok_per_s"],
        "ok_p50_ms": lambda r: r["ok_p50_ms"],
        "ok_p99_ms": lambda r: r["ok_p99_ms"],
        "rejected_per_s": _rejected_per_s,
        "rejected_p50_ms": lambda r: r["rejected_p50_ms"],
        "rejected_p99_ms": lambda r: r["rejected_p99_ms"],
    }
    return {side: {name: median(runs, get) for name, get in figures.items()} for side, runs in sides.items()}


def probe_lines(servers: list[tuple[str, dict[str, Any]]], slo: dict[str, Any] | None) -> list[str]:
    """The client that honoured Retry-After beside every overload run (benchmarks/probe.py)."""
    runs = [
        (f"{prefix}round {i + 1}", run)
        for prefix, server in servers
        for i, run in enumerate(server["rounds"])
    ]
    if slo:
        runs.append((f"RANET_SLO_P99_MS={slo['objective_ms']:g}, default point", slo["run"]))
    runs = [(label, run) for label, run in runs if run.get("probe")]
    if not runs:
        return []
    connections = runs[0][1]["probe"]["connections"]
    lines = [
        f"A client that honours Retry-After beside each run ({connections} keep-alive connections started "
        "over the first second, the same "
        "request as hey's; after a 429 a connection waits its Retry-After, after a 200 50 ms; "
        "benchmarks/probe.py): how fast the server answers a 429, where hey's own 429 latency is set by "
        "its clients resending at once (Little's law: 400 clients, about 55 admitted, the rest waiting on "
        "429s).",
        "",
        "| run | statuses | 429 p50 ms | 429 p99 ms | 429 p99 after 1 s, ms | 429 max ms | 200 p50 ms "
        "| 200 p99 ms | transport errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in runs:
        probe = run["probe"]
        lines.append(
            f"| {label} | {probe['status_codes']} | {_fmt(probe['rejected_p50_ms'])} | "
            f"{_fmt(probe['rejected_p99_ms'])} | {_fmt(probe.get('rejected_p99_steady_ms'))} | "
            f"{_fmt(probe['rejected_max_ms'])} | "
            f"{_fmt(probe['ok_p50_ms'])} | {_fmt(probe['ok_p99_ms'])} | {probe['errors']} |"
        )
    return [*lines, ""]


def no_hold_lines(overload: dict[str, Any]) -> list[str]:
    """The hold-early-retries trade-off in one paragraph under the overload table."""
    trade = hold_trade_off(overload)
    held, free = trade["held"], trade["not_held"]

    def pair(key: str, digits: int = 1, unit: str = " ms") -> str:
        return f"{_fmt(held[key], digits)} vs {_fmt(free[key], digits)}{unit}"

    return [
        "Holding early retries (default, rounds above) vs not (`RANET_HOLD_EARLY_RETRIES=false`, a fresh "
        "server, same clients and duration; its ratios are to the default server's 16-client run), medians "
        f"over rounds: goodput {pair('ok_per_s', 0, ' 200/s')}, admitted p50 {pair('ok_p50_ms')}, "
        f"admitted p99 {pair('ok_p99_ms')}, {pair('rejected_per_s', 0, ' 429/s')}, 429 p50 "
        f"{pair('rejected_p50_ms')}, 429 p99 {pair('rejected_p99_ms')}. Held 429s are slow on purpose: "
        "a client that ignores Retry-After waits it out instead of asking again, which leaves the CPU "
        "to admitted requests; not holding answers every 429 at once, and the retries that follow can "
        "take CPU from them: the figures above say how much. The goals are judged on the default "
        "server only.",
        "",
    ]


def render(result: dict[str, Any]) -> str:
    lines = [
        "## Serving: efficiency, front-end processes, overload",
        "",
        f"`hey` {result['hey_version'] or '(version unknown)'}, {CLIENTS} clients unless stated, "
        f"{result['seconds']:g} s per run; server threads {result['threads']}, every other setting at "
        "its default. Latencies of 200 answers only, from hey's CSV (nearest rank).",
        "",
    ]
    efficiency = result.get("efficiency")
    if efficiency:
        lines += [
            "### Server efficiency: HTTP images/s / in-process images/s",
            "",
            "In process: the same images hey sends (image 0 repeated; the first 16 test images), the "
            "server's preprocessing and thresholds, `CascadeExecutor` on onnxruntime with the server's "
            "threads, at the batch of one request and at the batch every client's images would make "
            f"(capped at max_batch_size {MAX_BATCH_SIZE}). Report only.",
            "",
            "| point | images/request | HTTP img/s | HTTP p99 ms | in-process img/s (batch) | efficiency "
            "| in-process img/s (batch) | efficiency |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in efficiency["rows"]:
            lines.append(
                f"| {row['point']} | {row['images_per_request']} | {_fmt(row['http_images_per_s'], 0)} | "
                f"{_fmt(row['http_p99_ms'])} | {_fmt(row['inprocess_images_per_s'], 0)} "
                f"({row['inprocess_batch']}) | {_ratio(row['ratio'])} | "
                f"{_fmt(row['inprocess_flight_images_per_s'], 0)} ({row['inprocess_flight_batch']}) | "
                f"{_ratio(row['ratio_flight'])} |"
            )
        lines.append("")
    frontends = result.get("frontends")
    if frontends:
        lines += [
            "### Throughput at 1, 2 and 4 front-end processes",
            "",
            f"Default point, {CLIENTS} clients, one image per request (hey), each server alone on the "
            "machine; ratio to one front-end.",
            "",
            "| server | req/s | ratio | p50 ms | p99 ms | non-200 | tree RSS MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        base = (frontends["runs"].get("1") or {}).get("ok_per_s")
        for key, run in frontends["runs"].items():
            label = "one process (--one-process)" if key == ONE_PROCESS else f"{key} front-end(s) + engine"
            other = run["answered"] - run["ok"]
            scaling = run["ok_per_s"] / base if base else None
            lines.append(
                f"| {label} | {_fmt(run['ok_per_s'], 0)} | {_ratio(scaling)} | "
                f"{_fmt(run['ok_p50_ms'])} | {_fmt(run['ok_p99_ms'])} | {other} | {_fmt(run['rss_mib'], 0)} |"
            )
        project = frontends.get("projection")
        if project:
            engine = project["engine_bound_images_per_s"]
            lines += [
                "",
                f"Projection for {project['cores']} cores: about {_fmt(project['projected_rps'], 0)} req/s "
                f"(limited by the {project['limited_by']}). Assumption: front-end bound, each front-end "
                f"process on its own core does what the one front-end did here "
                f"({_fmt(project['per_frontend_rps'], 0)} req/s, measured on this {result['cores']}-core "
                f"machine next to the engine and hey), the engine keeps {project['engine_threads']} cores, "
                f"so {project['frontend_cores']} front-ends give {_fmt(project['frontend_bound_rps'], 0)} "
                f"req/s, until the engine saturates: its in-process images/s at the default point, batch "
                f"{MAX_BATCH_SIZE} (image 0), {_fmt(engine, 0)}, bounds it. Not measured.",
            ]
        lines.append("")
    overload = result.get("overload")
    if overload:
        base = overload["baseline"]
        lines += [
            f"### Overload: {overload['clients']} closed-loop clients, full depth, default settings",
            "",
            f"Baseline at {CLIENTS} clients on the same server: {_fmt(base['ok_per_s'], 0)} req/s, p99 "
            f"{_fmt(base['ok_p99_ms'])} ms. Tree RSS (supervisor and children) before the overload: "
            f"{_fmt(overload['rss_before_mib'], 0)} MiB.",
            "",
            "| run | s | 200/s | goodput / 16 clients | p50 (200) ms | p99 (200) ms | p99 / 16 clients "
            f"| 429s | 429/s | 429 p50 ms | 429 p99 ms | 429s < {HELD_429_MS:.0f} ms: count, p99 ms | 5xx "
            "| statuses | RSS after MiB | RSS peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        figures = overload["figures"]
        no_hold = overload.get("no_hold")
        servers = [("", overload)] + ([("RANET_HOLD_EARLY_RETRIES=false, ", no_hold)] if no_hold else [])
        for prefix, server in servers:
            ratios = server["figures"]
            for index, run in enumerate(server["rounds"]):
                lines.append(
                    _overload_row(
                        f"{prefix}round {index + 1}",
                        run,
                        ratios["goodput_ratio"][index],
                        ratios["admitted_p99_ratio"][index],
                    )
                )
        slo = overload.get("slo")
        if slo:
            label = f"RANET_SLO_P99_MS={slo['objective_ms']:g}, default point"
            lines.append(_overload_row(label, slo["run"], None, None))
        growth = figures["memory_growth_after_first"]
        lines += [
            "",
            "Memory from the end of the first round to the end of the last: "
            + ("- (one round)" if growth is None else f"{100 * growth:+.1f}%")
            + ". hey's CSV lists answered requests only: transport errors are not counted here. hey "
            "ignores Retry-After, and the server holds a request that comes back on a connection within "
            f"{HELD_429_MS:.0f}-{1.5 * HELD_429_MS:.0f} ms of its last 429 until then, a while that "
            "doubles up to the Retry-After while the connection keeps coming back early "
            "(RANET_HOLD_EARLY_RETRIES, on by default): 429s faster than "
            f"{HELD_429_MS:.0f} ms were answered at once, slower ones were held or answered late.",
            "",
        ]
        if no_hold:
            lines += no_hold_lines(overload)
        lines += probe_lines(servers, slo)
    return "\n".join(lines).rstrip() + "\n"


# -- main -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ranet serve's engine threads (0: its default split of the cores, as a user runs it); the "
        "in-process rates use the same number",
    )
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seconds", type=float, default=5.0, help="each hey run at 16 clients")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="discarded hey run per server")
    parser.add_argument("--inprocess-seconds", type=float, default=1.0, help="per in-process case")
    parser.add_argument("--frontends", nargs="*", default=[ONE_PROCESS, "1", "2", "4"])
    parser.add_argument("--project-cores", type=int, default=16)
    parser.add_argument("--overload-clients", type=int, default=400)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument("--overload-rounds", type=int, default=2)
    parser.add_argument(
        "--overload-no-hold-rounds",
        type=int,
        default=1,
        help="rounds of the same overload on a server with RANET_HOLD_EARLY_RETRIES=false (0: none)",
    )
    parser.add_argument(
        "--slo-objective-ms", type=float, default=80.0, help="RANET_SLO_P99_MS of the last run (0: none)"
    )
    parser.add_argument("--timeout", type=int, default=30, help="hey's per-request timeout, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    try:
        frontend_configs = parse_frontends(args.frontends)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if hey_executable() is None:
        raise SystemExit("hey is not installed (Debian package `hey`; make bench installs it)")

    bundle = args.bundle.resolve()
    version = load_bundle(bundle).manifest.version
    samples = fmnist_samples(BATCH_IMAGES)
    one, many = [samples[0].data], [s.data for s in samples]
    engine_thread_count = engine_threads(Settings(threads=args.threads))
    result: dict[str, Any] = {
        "bundle": f"{bundle.parent.name}/{version}",
        "threads": engine_thread_count,
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "hey_version": hey_version(),
        "parts": args.parts,
    }
    started = time.monotonic()
    timeout = args.timeout
    inprocess: dict[str, float] = {}
    if "efficiency" in args.parts or "frontends" in args.parts:
        # Before any server starts: the engine's own rates, with the machine to itself.
        cases = efficiency_cases(one, many)
        if "efficiency" not in args.parts:
            cases = {k: v for k, v in cases.items() if k == f"default/1/{MAX_BATCH_SIZE}"}
        inprocess = inprocess_rates(bundle, engine_thread_count, cases, args.inprocess_seconds)
        result["inprocess_images_per_s"] = inprocess
    with tempfile.TemporaryDirectory(prefix="ranet-serving-") as tmp:
        work = Path(tmp)
        body_one = Body(work / "one.multipart", multipart_body(one, work / "one.multipart"), 1)
        body_many = Body(work / "many.multipart", multipart_body(many, work / "many.multipart"), BATCH_IMAGES)
        if "efficiency" in args.parts or "overload" in args.parts:
            with serving(bundle, args.threads, work, "default", {}) as server:
                result["default_server"] = {"frontend_pids": server.frontend_pids(), "pid": server.pid}
                default_url = classify_url(server.url, version, full_depth=False)
                full_url = classify_url(server.url, version, full_depth=True)
                warm_up(default_url, body_one, args.warmup_seconds, timeout)
                warm_up(full_url, body_many, args.warmup_seconds, timeout)
                if "efficiency" in args.parts:
                    http = {}
                    for point, url in (("default", default_url), ("full", full_url)):
                        for body in (body_one, body_many):
                            label = f"{point}, {body.images} image(s)/request"
                            http[f"{point}/{body.images}"] = hey_run(
                                url, body, args.seconds, CLIENTS, timeout, label
                            )
                    result["efficiency"] = {"http": http, "rows": efficiency_rows(http, inprocess)}
                if "overload" in args.parts:
                    baseline = hey_run(full_url, body_one, args.seconds, CLIENTS, timeout, "full depth")
                    before = tree_rss_mib(server.pid)
                    rounds = overload_rounds(
                        server.pid, full_url, body_one, args, timeout, "overload round {}, full depth"
                    )
                    result["overload"] = {
                        "clients": args.overload_clients,
                        "seconds": args.overload_seconds,
                        "baseline": baseline,
                        "rss_before_mib": before,
                        "processes": len(process_tree(server.pid)),
                        "rounds": rounds,
                        "figures": overload_figures(baseline, rounds),
                    }
            if "overload" in args.parts and args.overload_no_hold_rounds > 0:
                # The same overload, every 429 answered at once: what holding early retries trades.
                with serving(bundle, args.threads, work, "no-hold", NO_HOLD_ENV) as server:
                    url = classify_url(server.url, version, full_depth=True)
                    warm_up(url, body_one, args.warmup_seconds, timeout)
                    rounds = overload_rounds(
                        server.pid,
                        url,
                        body_one,
                        args,
                        timeout,
                        "overload, early retries not held, round {}",
                        count=args.overload_no_hold_rounds,
                    )
                    result["overload"]["no_hold"] = {
                        "env": NO_HOLD_ENV,
                        "rounds": rounds,
                        # Ratios to the default server's 16-client run: the setting acts only on
                        # requests that are shed, and 16 clients are not.
                        "figures": overload_figures(result["overload"]["baseline"], rounds),
                    }
                    result["overload"]["hold_trade_off"] = hold_trade_off(result["overload"])
            if "overload" in args.parts and args.slo_objective_ms > 0:
                env = {"RANET_SLO_P99_MS": f"{args.slo_objective_ms:g}"}
                with serving(bundle, args.threads, work, "slo", env) as server:
                    url = classify_url(server.url, version, full_depth=False)
                    warm_up(url, body_one, args.warmup_seconds, timeout)
                    with RssSampler(server.pid) as sampler:
                        run = hey_run(
                            url,
                            body_one,
                            args.overload_seconds,
                            args.overload_clients,
                            timeout,
                            f"overload, RANET_SLO_P99_MS={args.slo_objective_ms:g}",
                        )
                    run["rss_after_mib"] = tree_rss_mib(server.pid)
                    run["rss_peak_mib"] = sampler.peak_mib
                    result["overload"]["slo"] = {
                        "objective_ms": args.slo_objective_ms,
                        "run": run,
                        "p99_limit_ms": SLO_P99_MULTIPLE * args.slo_objective_ms,
                    }
        if "frontends" in args.parts and frontend_configs:
            runs: dict[str, Any] = {}
            for config in frontend_configs:
                if config == ONE_PROCESS:
                    env, count, name = {"RANET_ENGINE_PROCESS": "false"}, None, "one-process"
                else:
                    env, count, name = {"RANET_FRONTENDS": str(config)}, int(config), f"frontends-{config}"
                with serving(bundle, args.threads, work, name, env, count) as server:
                    url = classify_url(server.url, version, full_depth=False)
                    warm_up(url, body_one, args.warmup_seconds, timeout)
                    run = hey_run(url, body_one, args.seconds, CLIENTS, timeout, f"{name}, default point")
                    run["rss_mib"] = tree_rss_mib(server.pid)
                    run["frontend_pids"] = server.frontend_pids()
                    runs[str(config)] = run
            engine = inprocess.get(f"default/1/{MAX_BATCH_SIZE}")
            result["frontends"] = {
                "runs": runs,
                "projection": projection(runs, engine, args.project_cores, engine_thread_count),
            }
    result["wall_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (args.out / "serving.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
