"""HTTP against peers: ranet serve next to LitServe, TorchServe and a hand-written FastAPI + eager server.

All servers serve the same trained model (the bundle's checkpoint) on 127.0.0.1 of this machine:

- ranet serve at its default operating point (early exit) and at full depth (`confidence=1`);
- LitServe at full depth: the whole network as one onnxruntime graph, LitServe's batching (32 / 2 ms),
  2 intra-op threads (benchmarks/peers/litserve_onnx.py);
- TorchServe at full depth (TorchScript, custom handler, its own batching set like ours, 1 worker);
- FastAPI + uvicorn + PyTorch eager at full depth, no batching (benchmarks/peers/fastapi_eager.py).

Two clients drive every server, in the same run:

1. the project's load generator (`ranet_client.load`; plain servers through its `PlainTarget`), with
   the same images, request counts and concurrency, which also judges accuracy;
2. `hey` (benchmarks/hey.py): one multipart image per request at 16 and 64 concurrent clients, an
   independent client that costs far less CPU than the Python one (both share the 2 cores).

Then the ratios the issue-17 goals judge (ranet serve at both points over LitServe, at 16 and 64
clients) get a phase of their own: only those three servers, longer runs (`--versus-requests`, 3,000 by
default: two to five seconds each, where the sweep's 800 requests at 1,500 req/s last half a second and
one stall moves a ratio by 20%), `--versus-rounds` interleaved rounds (3), both clients in every
round, medians over rounds. The ratios come from that phase (from the sweep only when it is off).

Then ranet serve alone with 16 images per request from 4 clients, by both clients (the load generator
on the test-set mix; hey repeating one body of 16 distinct test images): images/s at the default point
over full depth, next to the FLOPs ratio from the manifest's calibration.

Client CPU: the load generator is Python on the same 2 cores as the servers, so every load-generator
run also records this process's CPU time (`getrusage(RUSAGE_SELF)`, user + system, every thread)
over the run, per request sent; every hey run records hey's (`RUSAGE_CHILDREN` around it: hey is
the only child that exits, and is waited for, during the run). What the client takes of the cores
is not left to the servers.

Every server is started once and kept up; the runs are interleaved (for each round and concurrency,
every server in turn) so drift on a shared machine hits all alike. Run k of every server sends the
same slice of the Fashion-MNIST test set (images k*requests onwards), so accuracy is judged on
identical images and pooled over all runs. Figures are medians over rounds. Usage:

    .venv/bin/python benchmarks/peers_http.py [--requests 800] [--concurrency 1 4 16 64] [--rounds 1]
        [--hey-requests 1000] [--hey-concurrency 16 64] [--versus-requests 3000] [--versus-rounds 3]
        [--batch-requests 100] [--batch-hey-requests 400]
        [--servers ranet litserve torchserve fastapi] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from ranet_client.image_sets import Sample
from ranet_client.load import BudgetChoice, LoadConfig, Wire, run_load_sync

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from full_depth import export_onnx
from servers import ManagedServer, free_port, http_ok
from torchserve import missing_requirements, queue_and_inference_us, torchserve_server

from common import DEFAULT_BUNDLE, ROOT, fmnist_samples
from hey import hey_executable, hey_version, multipart_body, run_hey
from ranet_serve.export.bundle import load_bundle
from ranet_serve.export.manifest import Manifest

PEERS = Path(__file__).resolve().parent / "peers"
SERVERS = ("ranet", "litserve", "torchserve", "fastapi")
# The clients at which ranet serve is compared with LitServe (issue 17), by both clients.
VERSUS_LITSERVE_CONCURRENCY = (16, 64)
HEY_MISSING = "hey is not installed (Debian package `hey`; make bench installs it)"


@dataclass
class Variant:
    """One thing measured: a server and how it is asked (knobs for ranet serve, a path for plain ones)."""

    key: str
    label: str
    server: str
    url: str
    knobs: dict[str, str] = field(default_factory=dict)
    plain_path: str | None = None
    plain_body: str = "raw"
    metrics_url: str | None = None  # TorchServe's Prometheus endpoint, for its own time split
    # A plain server at full depth does not report FLOPs, but its cost per image is known: the whole
    # network, i.e. the bundle's last-exit cumulative FLOPs. Quoted so the table compares like with like.
    model_flops: int | None = None

    def config(
        self, requests: int, concurrency: int, timeout: float, batch: int = 1, wire: Wire = "raw"
    ) -> LoadConfig:
        return LoadConfig(
            url=self.url,
            requests=requests,
            concurrency=concurrency,
            batch=batch,
            mix=(BudgetChoice(self.key, self.knobs, 1.0),),
            timeout=timeout,
            plain_path=self.plain_path,
            plain_body="multipart" if self.plain_body == "multipart" else "raw",
            wire=wire,
        )

    @property
    def hey_url(self) -> str:
        """Where hey posts its multipart image: the plain path, or ranet serve's v1 route with the
        variant's knobs in the query string (the form carries only the image)."""
        if self.plain_path is not None:
            return f"{self.url}{self.plain_path}"
        query = f"?{urlencode(self.knobs)}" if self.knobs else ""
        return f"{self.url}/v1/classify{query}"


def start_ranet(bundle: Path, threads: int, log: Path) -> ManagedServer:
    port = free_port()
    command = [sys.executable, "-m", "ranet_serve.cli", "serve", "--port", str(port)]
    command += ["--grpc-port", "0"]  # HTTP only: the default 8081 may be taken on the machine
    if threads > 0:  # else the server's own split of the cores (ranet_serve/cpus.py)
        command += ["--threads", str(threads)]
    command += ["--model-store", str(bundle.parents[1])]
    command += ["--default-model", bundle.parent.name, "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    return ManagedServer("ranet serve", command, http_ok(f"{url}/readyz"), cwd=ROOT, log=log, url=url)


def start_fastapi(bundle: Path, threads: int, log: Path) -> ManagedServer:
    port = free_port()
    command = [sys.executable, str(ROOT / "benchmarks" / "peers" / "fastapi_eager.py"), "--port", str(port)]
    command += ["--bundle", str(bundle), "--threads", str(threads)]
    url = f"http://127.0.0.1:{port}"
    return ManagedServer("fastapi", command, http_ok(f"{url}/health"), cwd=ROOT, log=log, url=url)


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (software missing) or did not start; the message says which and why."""


def litserve_missing() -> list[str]:
    """What the LitServe peer needs that this environment lacks (empty when it can run)."""
    missing = []
    if importlib.util.find_spec("litserve") is None:
        missing.append("litserve (pip install -e '.[bench]')")
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        missing.append("python-multipart (pip install -e '.[bench]')")
    return missing


def start_litserve(bundle: Path, workdir: Path, threads: int) -> tuple[ManagedServer, dict[str, Any]]:
    """LitServe serving the bundle's full-depth ONNX graph, started and ready, with its setup facts.

    The graph is exported here (ranet_serve's model code and the in-process benchmark's exporter), so
    the server process itself needs no torch. PeerUnavailable when LitServe is missing or fails.
    """
    missing = litserve_missing()
    if missing:
        raise PeerUnavailable(f"missing {', '.join(missing)} (make bench installs them)")
    model_path, preprocess_path = export_onnx(bundle, workdir)
    port = free_port()
    command = [sys.executable, str(PEERS / "litserve_onnx.py"), "--port", str(port)]
    command += ["--model", str(model_path), "--preprocess", str(preprocess_path), "--threads", str(threads)]
    url = f"http://127.0.0.1:{port}"
    # cwd: the work directory, so nothing LitServe writes lands in the checkout.
    server = ManagedServer(
        "litserve", command, http_ok(f"{url}/health"), cwd=workdir, log=workdir / "log", url=url
    )
    try:
        server.start()
    except RuntimeError as exc:
        raise PeerUnavailable(f"failed to start: {exc}"[:1500]) from exc
    import litserve_onnx  # only now: it imports litserve, which was checked above

    setup = {
        "url": url,
        "path": litserve_onnx.API_PATH,
        "max_batch_size": litserve_onnx.MAX_BATCH_SIZE,
        "batch_timeout_ms": 1000 * litserve_onnx.BATCH_TIMEOUT_S,
        "workers": 1,
        "threads": threads,
        "graph": "the whole network as one ONNX graph (full_depth.export_onnx), onnxruntime CPU",
    }
    return server, setup


def start_torchserve(bundle: Path, workdir: Path, threads: int) -> tuple[ManagedServer, dict[str, Any]]:
    """TorchServe for the bundle, started and ready, with its setup facts; PeerUnavailable otherwise."""
    missing = missing_requirements()
    if missing:
        raise PeerUnavailable(f"missing {', '.join(missing)} (make bench installs them)")
    try:
        server, setup = torchserve_server(bundle, workdir, threads=threads)
        return server.start(), setup
    except RuntimeError as exc:
        raise PeerUnavailable(f"failed to start: {exc}"[:1500]) from exc


def rotated(samples: list[Sample], offset: int) -> list[Sample]:
    offset %= len(samples)
    return samples[offset:] + samples[:offset]


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds: of this process, every thread (RUSAGE_SELF), or of its children
    that have exited and been waited for (RUSAGE_CHILDREN: a finished hey run; the servers, also
    children, count only once stopped)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def per_request_us(cpu_s: float, requests: int) -> float | None:
    return 1e6 * cpu_s / requests if requests > 0 else None


def run_one(variant: Variant, config: LoadConfig, samples: list[Sample]) -> dict[str, Any]:
    """One load run; TorchServe's own queue / inference split from its counters around the run; the
    load generator's own CPU (this process, user + system) per request sent, `client_cpu_us_per_request`."""
    before = queue_and_inference_us(variant.metrics_url) if variant.metrics_url else {}
    cpu = cpu_seconds()
    report = run_load_sync(config, samples).to_dict()
    report["client_cpu_us_per_request"] = per_request_us(cpu_seconds() - cpu, report["requests_sent"])
    if variant.metrics_url and before:
        after = queue_and_inference_us(variant.metrics_url)
        served = after.get("requests", 0.0) - before["requests"]
        if served > 0:
            queue_ms = (after["queue_us"] - before["queue_us"]) / served / 1000
            total_ms = (after["inference_us"] - before["inference_us"]) / served / 1000
            # TorchServe's inference latency counter runs from arrival to answer: queue included.
            report["server_queue_ms_mean"] = queue_ms
            report["server_inference_ms_mean"] = total_ms - queue_ms
    return report


def run_hey_measured(
    url: str, body: Path, content_type: str, *, requests: int, concurrency: int, timeout_s: int
) -> dict[str, Any]:
    """One hey run (hey.run_hey), summarised, with hey's own CPU per request it sent
    (`client_cpu_us_per_request`, from RUSAGE_CHILDREN around the run)."""
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    summary = run_hey(
        url, body, content_type, requests=requests, concurrency=concurrency, timeout_s=timeout_s
    )
    out = summary.to_dict()
    sent = summary.ok + summary.failed
    out["client_cpu_us_per_request"] = per_request_us(cpu_seconds(resource.RUSAGE_CHILDREN) - cpu, sent)
    return out


def summarize(variants: list[Variant], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: pooled accuracy and request counts, and per concurrency the medians over rounds."""
    out: dict[str, Any] = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant.key]
        if not mine:
            continue
        labelled = sum(r["labelled_images"] for r in mine)
        correct = sum(r["correct_images"] for r in mine)
        by_concurrency: dict[str, Any] = {}
        for concurrency in sorted({r["concurrency"] for r in mine}):
            these = [r for r in mine if r["concurrency"] == concurrency]

            def median(get: Any, these: list[dict[str, Any]] = these) -> float | None:
                values = [v for v in (get(r) for r in these) if v is not None]
                return statistics.median(values) if values else None

            by_concurrency[str(concurrency)] = {
                "rounds": len(these),
                "throughput_rps": median(lambda r: r["throughput_rps"]),
                "p50_ms": median(lambda r: r["latency_ms"]["p50"]),
                "p99_ms": median(lambda r: r["latency_ms"]["p99"]),
                "server_queue_ms": median(lambda r: r["server_queue_ms_mean"]),
                "server_inference_ms": median(lambda r: r["server_inference_ms_mean"]),
                "mean_flops_per_image": median(lambda r: r["mean_flops_per_image"]) or variant.model_flops,
                "accuracy": (
                    sum(r["correct_images"] for r in these) / sum(r["labelled_images"] for r in these)
                    if sum(r["labelled_images"] for r in these)
                    else None
                ),
                "requests_failed": sum(r["requests_failed"] for r in these),
                "client_cpu_us_per_request": median(lambda r: r.get("client_cpu_us_per_request")),
            }
        out[variant.key] = {
            "label": variant.label,
            "server": variant.server,
            "requests_sent": sum(r["requests_sent"] for r in mine),
            "requests_ok": sum(r["requests_ok"] for r in mine),
            "requests_failed": sum(r["requests_failed"] for r in mine),
            "labelled_images": labelled,
            "correct_images": correct,
            "accuracy": correct / labelled if labelled else None,
            "by_concurrency": by_concurrency,
        }
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize_hey(variants: list[Variant], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and concurrency: hey's figures, medians over rounds; counts summed over them.

    `throughput_rps` is 2xx answers per second (hey's own requests/s counts failures too), so a
    server that answers errors fast is not credited for them.
    """
    out: dict[str, Any] = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant.key]
        if not mine:
            continue
        by_concurrency: dict[str, Any] = {}
        for concurrency in sorted({r["concurrency"] for r in mine}):
            these = [r for r in mine if r["concurrency"] == concurrency]
            codes: dict[str, int] = {}
            errors: dict[str, int] = {}
            for run in these:
                for code, count in run["status_codes"].items():
                    codes[code] = codes.get(code, 0) + count
                for message, count in run["errors"].items():
                    errors[message] = errors.get(message, 0) + count
            by_concurrency[str(concurrency)] = {
                "rounds": len(these),
                "throughput_rps": _median([r["ok_per_s"] for r in these]),
                "p50_ms": _median([r["p50_ms"] for r in these]),
                "p99_ms": _median([r["p99_ms"] for r in these]),
                "requests_ok": sum(r["ok"] for r in these),
                "requests_failed": sum(r["failed"] for r in these),
                "status_codes": codes,
                "errors": errors,
                "client_cpu_us_per_request": _median([r.get("client_cpu_us_per_request") for r in these]),
            }
        out[variant.key] = {
            "label": variant.label,
            "server": variant.server,
            "by_concurrency": by_concurrency,
        }
    return out


def versus_litserve(summary: dict[str, Any], hey_summary: dict[str, Any]) -> dict[str, Any]:
    """Throughput of ranet serve (default point, full depth) over LitServe's, per client and concurrency.

    Both sides of each ratio come from the same client in the same run; a concurrency one side lacks
    is left out rather than compared with another run's figure.
    """
    out: dict[str, Any] = {}
    for client, table in (("load_generator", summary), ("hey", hey_summary)):
        base = table.get("litserve")
        if not base:
            continue
        rows: dict[str, dict[str, float]] = {}
        for concurrency, theirs in base["by_concurrency"].items():
            if not theirs["throughput_rps"]:
                continue
            row = {}
            for key in ("ranet_default", "ranet_full"):
                mine = (table.get(key) or {}).get("by_concurrency", {}).get(concurrency)
                if mine and mine["throughput_rps"] is not None:
                    row[key] = mine["throughput_rps"] / theirs["throughput_rps"]
            if row:
                rows[concurrency] = row
        out[client] = rows
    return out


VERSUS_VARIANTS = ("ranet_default", "ranet_full", "litserve")


def versus_source(
    summary: dict[str, Any], hey_summary: dict[str, Any], versus: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tables the LitServe ratios are taken from: the dedicated phase's, per client, where it ran;
    else the sweep's (a client the phase did not measure keeps the sweep's figures)."""
    if not versus:
        return summary, hey_summary
    return versus.get("load_generator") or summary, versus.get("hey") or hey_summary


def default_point_flops_ratio(manifest: Manifest) -> tuple[str, float] | None:
    """The default point's name and full-depth FLOPs / its expected FLOPs (validation calibration)."""
    calibration = manifest.calibration
    if calibration is None:
        return None
    point = next(p for p in calibration.points if p.name == calibration.default_point)
    return point.name, manifest.exits[-1].cumulative_flops / point.expected_flops


def _images_ratio(by_variant: dict[str, Any]) -> float | None:
    """images/s at the default point over images/s at full depth (None unless both were measured)."""
    default, full = by_variant.get("ranet_default"), by_variant.get("ranet_full")
    if default and full and default["images_per_s"] and full["images_per_s"]:
        return default["images_per_s"] / full["images_per_s"]
    return None


def summarize_batch(
    runs: list[dict[str, Any]],
    hey_runs: list[dict[str, Any]],
    manifest: Manifest,
    *,
    images_per_request: int,
    concurrency: int,
    requests: int,
    hey_requests: int,
    hey_body: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """ranet serve with many images per request, per client: images/s per variant (medians over
    rounds), default point / full depth, and the FLOPs ratio it is judged against (the goal itself is
    run_all's). `ratio` is the load generator's (kept for older readers); `ratios` has both clients'.
    `hey_body` is what probing hey's body found (its images, FLOPs per image at each variant)."""
    if not runs and not hey_runs:
        return None
    by_variant: dict[str, Any] = {}
    for key in sorted({r["variant"] for r in runs}):
        these = [r for r in runs if r["variant"] == key]
        labelled = sum(r["labelled_images"] for r in these)
        by_variant[key] = {
            "rounds": len(these),
            "images_per_s": _median([r["images_per_s"] for r in these]),
            "throughput_rps": _median([r["throughput_rps"] for r in these]),
            "p50_ms": _median([r["latency_ms"]["p50"] for r in these]),
            "p99_ms": _median([r["latency_ms"]["p99"] for r in these]),
            "mean_flops_per_image": _median([r["mean_flops_per_image"] for r in these]),
            "accuracy": sum(r["correct_images"] for r in these) / labelled if labelled else None,
            "images_ok": sum(r["images_ok"] for r in these),
            "requests_failed": sum(r["requests_failed"] for r in these),
            "client_cpu_us_per_request": _median([r.get("client_cpu_us_per_request") for r in these]),
        }
    hey: dict[str, Any] | None = None
    if hey_runs:
        probed = (hey_body or {}).get("mean_flops_per_image") or {}
        hey_by_variant: dict[str, Any] = {}
        for key in sorted({r["variant"] for r in hey_runs}):
            these = [r for r in hey_runs if r["variant"] == key]
            codes: dict[str, int] = {}
            for run in these:
                for code, count in run["status_codes"].items():
                    codes[code] = codes.get(code, 0) + count
            hey_by_variant[key] = {
                "rounds": len(these),
                # 2xx requests per second x images per request: failed requests deliver no image.
                "images_per_s": _median([r["ok_per_s"] * images_per_request for r in these]),
                "throughput_rps": _median([r["ok_per_s"] for r in these]),
                "p50_ms": _median([r["p50_ms"] for r in these]),
                "p99_ms": _median([r["p99_ms"] for r in these]),
                "mean_flops_per_image": probed.get(key),
                "requests_ok": sum(r["ok"] for r in these),
                "requests_failed": sum(r["failed"] for r in these),
                "status_codes": codes,
                "client_cpu_us_per_request": _median([r.get("client_cpu_us_per_request") for r in these]),
            }
        default_flops, full_flops = probed.get("ranet_default"), probed.get("ranet_full")
        hey = {
            "by_variant": hey_by_variant,
            "ratio": _images_ratio(hey_by_variant),
            "images": (hey_body or {}).get("images", []),
            # The FLOPs ratio of the very images hey repeats, for reading its ratio (not the goal's).
            "body_flops_ratio": full_flops / default_flops if default_flops and full_flops else None,
        }
    ratio = _images_ratio(by_variant)
    flops = default_point_flops_ratio(manifest)
    return {
        "images_per_request": images_per_request,
        "concurrency": concurrency,
        "requests": requests,
        "hey_requests": hey_requests,
        "by_variant": by_variant,
        "ratio": ratio,
        "hey": hey,
        "ratios": {"load_generator": ratio, "hey": None if hey is None else hey["ratio"]},
        "default_point": None if flops is None else flops[0],
        "flops_ratio": None if flops is None else flops[1],
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(result: dict[str, Any]) -> str:
    summary = result["summary"]
    config = result["config"]
    lines = [
        "## Against peers: same model, same machine, same client (HTTP on loopback, one image per request)",
        "",
        f"{config['requests']} requests per run, concurrency {', '.join(map(str, config['concurrency']))}, "
        f"{config['rounds']} round(s), medians over rounds; accuracy pooled over every run of a server "
        f"({config['images']} distinct Fashion-MNIST test images, the same for every server).",
        "",
        "| concurrency | server | req/s | p50 ms | p99 ms | server queue ms | server inference ms "
        "| MFLOPs/img | accuracy % | errors | client CPU us/request |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    concurrencies = sorted({int(c) for s in summary.values() for c in s["by_concurrency"]})
    for concurrency in concurrencies:
        for entry in summary.values():
            row = entry["by_concurrency"].get(str(concurrency))
            if row is None:
                continue
            flops = row["mean_flops_per_image"]
            mflops = None if flops is None else flops / 1e6
            accuracy = row["accuracy"]
            lines.append(
                f"| {concurrency} | {entry['label']} | {_fmt(row['throughput_rps'], 0)} | "
                f"{_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | {_fmt(row['server_queue_ms'], 2)} | "
                f"{_fmt(row['server_inference_ms'], 2)} | {_fmt(mflops, 2)} | "
                f"{_fmt(None if accuracy is None else 100 * accuracy, 2)} | {row['requests_failed']} | "
                f"{_fmt(row.get('client_cpu_us_per_request'), 0)} |"
            )
    lines += [
        "",
        "client CPU us/request: the load generator's own CPU time (this benchmark process, user + system, "
        "`getrusage`) over the run, per request sent, median over rounds: the share of the 2 cores the "
        "client takes from the servers it measures.",
        "",
        "| server | requests sent | answered | failed | accuracy % (pooled) |",
        "|---|---|---|---|---|",
    ]
    for entry in summary.values():
        accuracy = entry["accuracy"]
        lines.append(
            f"| {entry['label']} | {entry['requests_sent']} | {entry['requests_ok']} | "
            f"{entry['requests_failed']} | {_fmt(None if accuracy is None else 100 * accuracy, 2)} "
            f"({entry['correct_images']}/{entry['labelled_images']}) |"
        )
    for server, reason in result.get("skipped", {}).items():
        lines += ["", f"{server}: not measured: {reason}"]
    lines += [
        "",
        "ranet serve's server times come from its answers (`timings`); TorchServe's from its Prometheus "
        "counters around each run (queue; inference = arrival-to-answer minus queue, handler included); "
        "the FastAPI baseline reports none. MFLOPs/img of the plain servers is the model's full-depth "
        "cost from the bundle (they report none).",
        "",
    ]
    lines += render_hey(result) + render_versus_litserve(result) + render_batch(result)
    return "\n".join(lines)


def render_hey(result: dict[str, Any]) -> list[str]:
    """The hey table: every server, one multipart image per request, 2xx answers per second."""
    hey = result.get("hey") or {}
    summary = hey.get("summary") or {}
    if not summary:
        return []
    image = hey.get("image") or {}
    lines = [
        "### The same servers driven by hey (one multipart image per request)",
        "",
        f"`hey -n {hey['requests']} -c C -m POST -D body -T 'multipart/form-data; boundary=...' URL`, "
        f"hey {hey.get('version') or '?'}; req/s counts 2xx answers only. hey sends one body every time: "
        f"test image `{image.get('name', '?')}`"
        + (
            f", which ranet serve's default point answers at exit {image['ranet_default_exit']} "
            f"({image['ranet_default_flops'] / 1e6:.2f} MFLOPs; the load generator's test-set mix averages "
            "the MFLOPs/img above)"
            if image.get("ranet_default_exit") is not None
            else ""
        )
        + ".",
        "",
        "| clients | server | req/s | p50 ms | p99 ms | answered 2xx | failed | status codes "
        "| hey CPU us/request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    concurrencies = sorted({int(c) for s in summary.values() for c in s["by_concurrency"]})
    for concurrency in concurrencies:
        for entry in summary.values():
            row = entry["by_concurrency"].get(str(concurrency))
            if row is None:
                continue
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(row["status_codes"].items())) or "-"
            if row["errors"]:
                codes += f"; errors: {sum(row['errors'].values())}"
            lines.append(
                f"| {concurrency} | {entry['label']} | {_fmt(row['throughput_rps'], 0)} | "
                f"{_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | {row['requests_ok']} | "
                f"{row['requests_failed']} | {codes} | {_fmt(row.get('client_cpu_us_per_request'), 0)} |"
            )
    lines += [
        "",
        "hey CPU us/request: hey's own CPU time (user + system, `RUSAGE_CHILDREN` around the run) per "
        "request it sent, next to the load generator's client CPU above.",
    ]
    return [*lines, ""]


def render_versus_litserve(result: dict[str, Any]) -> list[str]:
    """ranet serve over LitServe, per client, side by side (both from this run)."""
    versus = result.get("versus_litserve") or {}
    if not any(versus.values()):
        return []
    lines = [
        "### ranet serve over LitServe (full depth, one ONNX graph), requests/s, same run",
        "",
        "| clients | default point / LitServe, load generator | default point / LitServe, hey "
        "| full depth / LitServe, load generator | full depth / LitServe, hey |",
        "|---|---|---|---|---|",
    ]
    phase = result.get("versus") or {}
    if phase.get("rounds"):
        lines[1:1] = [
            "",
            f"From the dedicated phase: ranet serve (both points) and LitServe only, {phase['requests']} "
            f"requests per run, {phase['rounds']} interleaved rounds (load generator, then hey, every "
            "server in turn), medians over rounds:",
            "",
            "| clients | server | load generator req/s | p99 ms | hey req/s | p99 ms |",
            "|---|---|---|---|---|---|",
            *_versus_rows(phase),
        ]
    load, hey = versus.get("load_generator") or {}, versus.get("hey") or {}
    for concurrency in sorted(set(load) | set(hey), key=int):
        mine_load, mine_hey = load.get(concurrency, {}), hey.get(concurrency, {})
        lines.append(
            f"| {concurrency} | {_ratio(mine_load.get('ranet_default'))} | "
            f"{_ratio(mine_hey.get('ranet_default'))} | {_ratio(mine_load.get('ranet_full'))} | "
            f"{_ratio(mine_hey.get('ranet_full'))} |"
        )
    return [*lines, ""]


def _versus_rows(phase: dict[str, Any]) -> list[str]:
    load, hey = phase.get("load_generator") or {}, phase.get("hey") or {}
    rows = []
    for concurrency in phase["concurrency"]:
        for key in VERSUS_VARIANTS:
            mine = (load.get(key) or {}).get("by_concurrency", {}).get(str(concurrency)) or {}
            theirs = (hey.get(key) or {}).get("by_concurrency", {}).get(str(concurrency)) or {}
            label = (load.get(key) or hey.get(key) or {}).get("label")
            if label is None:
                continue
            rows.append(
                f"| {concurrency} | {label} | {_fmt(mine.get('throughput_rps'), 0)} | "
                f"{_fmt(mine.get('p99_ms'))} | {_fmt(theirs.get('throughput_rps'), 0)} | "
                f"{_fmt(theirs.get('p99_ms'))} |"
            )
    return rows


def render_batch(result: dict[str, Any]) -> list[str]:
    """Many images per request, both clients: default point over full depth, next to the FLOPs ratio."""
    batch = result.get("batch")
    if not batch:
        return []
    hey = batch.get("hey")
    clients = " and ".join(name for name, on in (("load generator", batch["by_variant"]), ("hey", hey)) if on)
    about = []
    if batch["by_variant"]:
        about.append(f"load generator: {batch['requests']} requests per run, the test-set mix")
    if hey:
        names = hey["images"]
        shown = f"`{names[0]}` to `{names[-1]}`" if names else "?"
        about.append(
            f"hey: `hey -n {batch['hey_requests']} -c {batch['concurrency']}`, one body of "
            f"{len(names)} distinct test images ({shown}) every time; its MFLOPs/img from one probe "
            "request of that body, it cannot judge accuracy"
        )
    lines = [
        f"### ranet serve, {batch['images_per_request']} images per request, {batch['concurrency']} "
        f"clients ({clients})",
        "",
        "; ".join(about) + ". FLOPs ratio: full depth / the default point's expected FLOPs from the "
        f"manifest's calibration ({batch['default_point']}): {_fmt(batch['flops_ratio'], 2)}"
        + (
            f"; of the {len(hey['images'])} images hey sends: {_fmt(hey['body_flops_ratio'], 2)}"
            if hey and hey.get("body_flops_ratio")
            else ""
        )
        + ". images/s = 2xx requests/s x images per request.",
        "",
        "| client | variant | images/s | req/s | p50 ms | p99 ms | MFLOPs/img | accuracy % | failed requests "
        "| client CPU us/request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"ranet_default": "ranet serve, default point", "ranet_full": "ranet serve, full depth"}
    tables = (("load generator", batch["by_variant"]), ("hey", (hey or {}).get("by_variant") or {}))
    for client, table in tables:
        for key, row in table.items():
            flops, accuracy = row["mean_flops_per_image"], row.get("accuracy")
            lines.append(
                f"| {client} | {labels.get(key, key)} | {_fmt(row['images_per_s'], 0)} | "
                f"{_fmt(row['throughput_rps'], 0)} | {_fmt(row.get('p50_ms'))} | {_fmt(row['p99_ms'])} | "
                f"{_fmt(None if flops is None else flops / 1e6, 2)} | "
                f"{_fmt(None if accuracy is None else 100 * accuracy, 2)} | {row['requests_failed']} | "
                f"{_fmt(row.get('client_cpu_us_per_request'), 0)} |"
            )
    ratios = batch.get("ratios") or {"load_generator": batch["ratio"]}
    shown_ratios = ", ".join(
        f"{name} {_ratio(ratios.get(key))}"
        for key, name in (("load_generator", "load generator"), ("hey", "hey"))
    )
    lines += [
        "",
        f"images/s, default point / full depth: {shown_ratios} (FLOPs ratio {_fmt(batch['flops_ratio'], 2)}; "
        "the goal wants 80% of it with both clients). client CPU us/request: the client's own CPU time "
        "(user + system) per request sent.",
        "",
    ]
    return lines


def probe_hey_batch(variants: list[Variant], body: bytes, content_type: str) -> dict[str, float]:
    """FLOPs per image each ranet variant spends on the many-images body hey repeats (one request)."""
    out = {}
    for variant in variants:
        response = httpx.post(
            variant.hey_url, content=body, headers={"Content-Type": content_type}, timeout=60
        )
        response.raise_for_status()
        results = response.json()["results"]
        out[variant.key] = statistics.fmean(r["flops"] for r in results)
    return out


def run_versus(
    args: argparse.Namespace,
    variants: list[Variant],
    samples: list[Sample],
    work: Path,
    skipped: dict[str, str],
) -> dict[str, Any] | None:
    """The phase the LitServe ratios come from: ranet serve (both points) and LitServe at the issue's
    concurrencies, `versus_requests` per run, `versus_rounds` interleaved rounds, each round the load
    generator then hey, every server in turn. Raw runs under `runs` / `hey_runs`; None when the phase
    is off or LitServe did not run (nothing to compare with)."""
    chosen = [v for v in variants if v.key in VERSUS_VARIANTS]
    if args.versus_requests <= 0 or args.versus_rounds <= 0 or "litserve" not in {v.key for v in chosen}:
        return None
    use_hey = hey_executable() is not None
    if not use_hey:
        skipped.setdefault("hey", HEY_MISSING)
    body_path = work / "versus-body.multipart"
    content_type = multipart_body(samples[0].data, body_path)
    runs: list[dict[str, Any]] = []
    hey_runs: list[dict[str, Any]] = []
    for round_index in range(args.versus_rounds):
        for k, concurrency in enumerate(VERSUS_LITSERVE_CONCURRENCY):
            # Every server gets the same slice of the test set in a run; slices differ across runs.
            offset = (round_index * len(VERSUS_LITSERVE_CONCURRENCY) + k) * args.versus_requests
            run_samples = rotated(samples, offset)
            for variant in chosen:
                config = variant.config(args.versus_requests, concurrency, args.timeout, wire=args.wire)
                report = run_one(variant, config, run_samples)
                where = {"variant": variant.key, "round": round_index, "concurrency": concurrency}
                runs.append({**where, **report})
                print(
                    f"[versus] {variant.label:40s} c={concurrency:<3d} {report['throughput_rps']:8.1f} req/s",
                    flush=True,
                )
            for variant in chosen if use_hey else []:
                measured = run_hey_measured(
                    variant.hey_url,
                    body_path,
                    content_type,
                    requests=args.versus_requests,
                    concurrency=concurrency,
                    timeout_s=int(args.timeout),
                )
                where = {"variant": variant.key, "round": round_index, "concurrency": concurrency}
                hey_runs.append({**where, **measured})
                _print_hey(f"[versus] {variant.label}", f"c={concurrency:<3d}", measured)
    return {
        "requests": args.versus_requests,
        "rounds": args.versus_rounds,
        "concurrency": list(VERSUS_LITSERVE_CONCURRENCY),
        "runs": runs,
        "hey_runs": hey_runs,
    }


def _print_hey(label: str, case: str, summary: dict[str, Any]) -> None:
    print(
        f"hey {label:40s} {case} {summary['ok_per_s']:8.1f} req/s  p99 {_fmt(summary['p99_ms'])} ms  "
        f"2xx {summary['ok']}/{summary['ok'] + summary['failed']}  hey CPU "
        f"{_fmt(summary['client_cpu_us_per_request'], 0)} us/request",
        flush=True,
    )


def probe_hey_image(variant: Variant, body: bytes, content_type: str) -> dict[str, Any]:
    """How ranet serve's default point answers the one image hey repeats (its exit and FLOPs)."""
    response = httpx.post(variant.hey_url, content=body, headers={"Content-Type": content_type}, timeout=30)
    response.raise_for_status()
    answer = response.json()["results"][0]
    return {"ranet_default_exit": answer["exit"], "ranet_default_flops": answer["flops"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--requests", type=int, default=800, help="requests per run (server x concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (medians over them)")
    parser.add_argument("--warmup", type=int, default=64, help="requests per server before measuring")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the peer servers")
    parser.add_argument(
        "--ranet-threads",
        type=int,
        default=0,
        help="ranet serve's engine threads (0: its default split of the cores, as a user runs it)",
    )
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--require-torchserve", action="store_true", help="fail instead of skipping it")
    parser.add_argument("--require-litserve", action="store_true", help="fail instead of skipping it")
    parser.add_argument("--hey-requests", type=int, default=1000, help="requests per hey run (0: no hey)")
    parser.add_argument(
        "--wire",
        choices=("raw", "aiohttp", "httpx"),
        default="raw",
        help="the load generator's wire: raw (pre-encoded requests, about hey's client CPU) by default",
    )
    parser.add_argument("--hey-concurrency", type=int, nargs="+", default=list(VERSUS_LITSERVE_CONCURRENCY))
    parser.add_argument(
        "--versus-requests",
        type=int,
        default=3000,
        help="requests per run of the phase the LitServe ratios come from (0: take them from the sweep)",
    )
    parser.add_argument("--versus-rounds", type=int, default=3, help="interleaved rounds of that phase")
    parser.add_argument(
        "--batch-requests", type=int, default=100, help="requests per many-images run (0: none)"
    )
    parser.add_argument(
        "--batch-hey-requests", type=int, default=400, help="requests per many-images hey run (0: none)"
    )
    parser.add_argument("--batch-images", type=int, default=16, help="images per request in that run")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    bundle_dir = args.bundle.resolve()
    manifest = load_bundle(bundle_dir).manifest
    full_flops = manifest.exits[-1].cumulative_flops
    runs_per_server = args.rounds * len(args.concurrency)
    samples = fmnist_samples(args.requests * runs_per_server)
    args.out.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    servers: list[ManagedServer] = []
    variants: list[Variant] = []
    setups: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    hey_runs: list[dict[str, Any]] = []
    batch_runs: list[dict[str, Any]] = []
    batch_hey_runs: list[dict[str, Any]] = []
    hey_facts: dict[str, Any] = {}
    batch_hey_facts: dict[str, Any] = {}
    versus: dict[str, Any] | None = None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ranet-peers-") as tmp:
        work = Path(tmp)
        try:
            if "ranet" in args.servers:
                server = start_ranet(bundle_dir, args.ranet_threads, work / "ranet.log").start()
                servers.append(server)
                url = server.url
                version = {"version": manifest.version}
                variants.append(Variant("ranet_default", "ranet serve, default point", "ranet", url, version))
                variants.append(
                    Variant(
                        "ranet_full",
                        "ranet serve, full depth",
                        "ranet",
                        url,
                        {**version, "confidence": "1.0"},
                    )
                )
                setups["ranet"] = {
                    "url": url,
                    "threads": args.ranet_threads or "server default",
                    "batching": "server defaults",
                }
            if "litserve" in args.servers:
                try:
                    server, setup = start_litserve(bundle_dir, work / "litserve", args.threads)
                except PeerUnavailable as exc:
                    if args.require_litserve:
                        raise SystemExit(f"LitServe cannot run: {exc}") from exc
                    skipped["litserve"] = str(exc)
                else:
                    servers.append(server)
                    setups["litserve"] = setup
                    variants.append(
                        Variant(
                            "litserve",
                            "LitServe, full depth (one ONNX graph)",
                            "litserve",
                            str(setup["url"]),
                            plain_path=str(setup["path"]),
                            plain_body="multipart",
                            model_flops=full_flops,
                        )
                    )
            if "torchserve" in args.servers:
                try:
                    server, setup = start_torchserve(bundle_dir, work / "torchserve", args.threads)
                except PeerUnavailable as exc:
                    if args.require_torchserve:
                        raise SystemExit(f"TorchServe cannot run: {exc}") from exc
                    skipped["torchserve"] = str(exc)
                else:
                    servers.append(server)
                    setups["torchserve"] = setup
                    variants.append(
                        Variant(
                            "torchserve",
                            "TorchServe, full depth (TorchScript)",
                            "torchserve",
                            str(setup["url"]),
                            plain_path=str(setup["path"]),
                            metrics_url=str(setup["metrics_url"]),
                            model_flops=full_flops,
                        )
                    )
            if "fastapi" in args.servers:
                server = start_fastapi(bundle_dir, args.threads, work / "fastapi.log").start()
                servers.append(server)
                url = server.url
                setups["fastapi"] = {"url": url, "threads": args.threads, "batching": "none"}
                variants.append(
                    Variant(
                        "fastapi",
                        "FastAPI + eager, full depth",
                        "fastapi",
                        url,
                        plain_path="/predict",
                        plain_body="multipart",
                        model_flops=full_flops,
                    )
                )
            for variant in variants:  # warm-up, discarded: first calls pay for lazy init everywhere
                warm = variant.config(args.warmup, max(args.concurrency), args.timeout, wire=args.wire)
                run_load_sync(warm, samples)

            # 1. The project's load generator, every server, every concurrency.
            for round_index in range(args.rounds):
                for k, concurrency in enumerate(args.concurrency):
                    run_index = round_index * len(args.concurrency) + k
                    run_samples = rotated(samples, run_index * args.requests)
                    for variant in variants:
                        config = variant.config(args.requests, concurrency, args.timeout, wire=args.wire)
                        report = run_one(variant, config, run_samples)
                        runs.append(
                            {
                                "variant": variant.key,
                                "round": round_index,
                                "concurrency": concurrency,
                                **report,
                            }
                        )
                        print(
                            f"{variant.label:40s} c={concurrency:<3d} {report['throughput_rps']:8.1f} req/s  "
                            f"p99 {report['latency_ms']['p99'] or float('nan'):7.1f} ms  "
                            f"ok {report['requests_ok']}/{report['requests_sent']}",
                            flush=True,
                        )

            # 2. hey, every server, one multipart image per request, the same body every time.
            if args.hey_requests > 0 and args.hey_concurrency and variants:
                if hey_executable() is None:
                    skipped["hey"] = HEY_MISSING
                else:
                    body_path = work / "hey-body.multipart"
                    content_type = multipart_body(samples[0].data, body_path)
                    hey_facts = {"name": samples[0].name, "label": samples[0].label}
                    ranet_default = next((v for v in variants if v.key == "ranet_default"), None)
                    if ranet_default is not None:
                        hey_facts |= probe_hey_image(ranet_default, body_path.read_bytes(), content_type)
                    for round_index in range(args.rounds):
                        for concurrency in args.hey_concurrency:
                            for variant in variants:
                                measured = run_hey_measured(
                                    variant.hey_url,
                                    body_path,
                                    content_type,
                                    requests=args.hey_requests,
                                    concurrency=concurrency,
                                    timeout_s=int(args.timeout),
                                )
                                hey_runs.append(
                                    {
                                        "variant": variant.key,
                                        "round": round_index,
                                        "concurrency": concurrency,
                                        **measured,
                                    }
                                )
                                _print_hey(variant.label, f"c={concurrency:<3d}", measured)

            # 3. The LitServe ratios: ranet serve at both points and LitServe only, longer runs.
            versus = run_versus(args, variants, samples, work, skipped)

            # 4. ranet serve with many images per request: default point vs full depth, both clients,
            # interleaved within each round (load generator: both variants, then hey: both variants).
            ranet_variants = [v for v in variants if v.server == "ranet"]
            batch_body: tuple[Path, str] | None = None
            if args.batch_hey_requests > 0 and ranet_variants:
                if hey_executable() is None:
                    skipped.setdefault("hey", HEY_MISSING)
                else:
                    # Distinct images: the first `batch_images` of the test set, one `file` part each.
                    pool = samples if len(samples) >= args.batch_images else fmnist_samples(args.batch_images)
                    chosen = pool[: args.batch_images]
                    batch_path = work / "hey-batch-body.multipart"
                    batch_body = (batch_path, multipart_body([s.data for s in chosen], batch_path))
                    batch_hey_facts = {
                        "images": [s.name for s in chosen],
                        "mean_flops_per_image": probe_hey_batch(
                            ranet_variants, batch_path.read_bytes(), batch_body[1]
                        ),
                    }
            load_variants = ranet_variants if args.batch_requests > 0 else []
            for round_index in range(args.rounds):
                for variant in load_variants:
                    config = variant.config(
                        args.batch_requests,
                        args.batch_concurrency,
                        args.timeout,
                        batch=args.batch_images,
                        wire=args.wire,
                    )
                    report = run_one(variant, config, rotated(samples, round_index))
                    batch_runs.append({"variant": variant.key, "round": round_index, **report})
                    print(
                        f"{variant.label:40s} {args.batch_images} img/request c={args.batch_concurrency}"
                        f" {report['images_per_s']:8.1f} img/s  ok {report['requests_ok']}/"
                        f"{report['requests_sent']}  client CPU "
                        f"{_fmt(report['client_cpu_us_per_request'], 0)} us/request",
                        flush=True,
                    )
                if batch_body is None:
                    continue
                for variant in ranet_variants:
                    measured = run_hey_measured(
                        variant.hey_url,
                        *batch_body,
                        requests=args.batch_hey_requests,
                        concurrency=args.batch_concurrency,
                        timeout_s=int(args.timeout),
                    )
                    batch_hey_runs.append({"variant": variant.key, "round": round_index, **measured})
                    case = f"{args.batch_images} img/request c={args.batch_concurrency}"
                    _print_hey(variant.label, case, measured)
        finally:
            for server in reversed(servers):
                server.stop()
    summary = summarize(variants, runs)
    hey_summary = summarize_hey(variants, hey_runs)
    if versus is not None:
        versus = {
            **versus,
            "load_generator": summarize(variants, versus.pop("runs")),
            "hey": summarize_hey(variants, versus.pop("hey_runs")),
        }
    result = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "config": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "threads": args.threads,
            "images": len(samples),
            "servers": args.servers,
        },
        "servers": setups,
        "skipped": skipped,
        "wall_s": time.monotonic() - started,
        "summary": summary,
        "hey": {
            "requests": args.hey_requests,
            "concurrency": args.hey_concurrency,
            "version": hey_version(),
            "image": hey_facts,
            "summary": hey_summary,
        },
        "versus": versus,
        "versus_litserve": versus_litserve(*versus_source(summary, hey_summary, versus)),
        "batch": summarize_batch(
            batch_runs,
            batch_hey_runs,
            manifest,
            images_per_request=args.batch_images,
            concurrency=args.batch_concurrency,
            requests=args.batch_requests,
            hey_requests=args.batch_hey_requests,
            hey_body=batch_hey_facts,
        ),
        "runs": runs,
        "hey_runs": hey_runs,
        "batch_runs": batch_runs,
        "batch_hey_runs": batch_hey_runs,
    }
    (args.out / "peers.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (args.out / "peers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
