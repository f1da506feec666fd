"""HTTP against peers: ranet serve next to TorchServe and a hand-written FastAPI + eager server.

All servers serve the same trained model (the bundle's checkpoint) on 127.0.0.1 of this machine and
are driven by the same client, the project's load generator (`ranet_client.load`; plain servers
through its `PlainTarget`), with the same images, request counts and concurrency:

- ranet serve at its default operating point (early exit) and at full depth (`confidence=1`);
- TorchServe at full depth (TorchScript, custom handler, its own batching set like ours, 1 worker);
- FastAPI + uvicorn + PyTorch eager at full depth, no batching (benchmarks/peers/fastapi_eager.py).

Every server is started once and kept up; the runs are interleaved (for each round and concurrency,
every server in turn) so drift on a shared machine hits all alike. Run k of every server sends the
same slice of the Fashion-MNIST test set (images k*requests onwards), so accuracy is judged on
identical images and pooled over all runs. Figures are medians over rounds. Usage:

    .venv/bin/python benchmarks/peers_http.py [--requests 800] [--concurrency 1 4 16] [--rounds 1]
        [--servers ranet torchserve fastapi] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ranet_client.image_sets import Sample
from ranet_client.load import BudgetChoice, LoadConfig, run_load_sync

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from servers import ManagedServer, free_port, http_ok
from torchserve import missing_requirements, queue_and_inference_us, torchserve_server

from common import DEFAULT_BUNDLE, ROOT, fmnist_samples
from ranet_serve.export.bundle import load_bundle

SERVERS = ("ranet", "torchserve", "fastapi")


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

    def config(self, requests: int, concurrency: int, timeout: float) -> LoadConfig:
        return LoadConfig(
            url=self.url,
            requests=requests,
            concurrency=concurrency,
            mix=(BudgetChoice(self.key, self.knobs, 1.0),),
            timeout=timeout,
            plain_path=self.plain_path,
            plain_body="multipart" if self.plain_body == "multipart" else "raw",
        )


def start_ranet(bundle: Path, threads: int, log: Path) -> ManagedServer:
    port = free_port()
    command = [sys.executable, "-m", "ranet_serve.cli", "serve", "--port", str(port)]
    command += ["--threads", str(threads), "--model-store", str(bundle.parents[1])]
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


def run_one(variant: Variant, config: LoadConfig, samples: list[Sample]) -> dict[str, Any]:
    """One load run; TorchServe's own queue / inference split from its counters around the run."""
    before = queue_and_inference_us(variant.metrics_url) if variant.metrics_url else {}
    report = run_load_sync(config, samples).to_dict()
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


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
        "| MFLOPs/img | accuracy % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
                f"{_fmt(None if accuracy is None else 100 * accuracy, 2)} | {row['requests_failed']} |"
            )
    lines += [
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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--requests", type=int, default=800, help="requests per run (server x concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (medians over them)")
    parser.add_argument("--warmup", type=int, default=64, help="requests per server before measuring")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every server")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--require-torchserve", action="store_true", help="fail instead of skipping it")
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
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ranet-peers-") as tmp:
        work = Path(tmp)
        try:
            if "ranet" in args.servers:
                server = start_ranet(bundle_dir, args.threads, work / "ranet.log").start()
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
                setups["ranet"] = {"url": url, "threads": args.threads, "batching": "server defaults"}
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
                warm = variant.config(args.warmup, max(args.concurrency), args.timeout)
                run_load_sync(warm, samples)
            runs: list[dict[str, Any]] = []
            for round_index in range(args.rounds):
                for k, concurrency in enumerate(args.concurrency):
                    run_index = round_index * len(args.concurrency) + k
                    run_samples = rotated(samples, run_index * args.requests)
                    for variant in variants:
                        config = variant.config(args.requests, concurrency, args.timeout)
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
        finally:
            for server in reversed(servers):
                server.stop()
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
        "summary": summarize(variants, runs),
        "runs": runs,
    }
    (args.out / "peers.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (args.out / "peers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
