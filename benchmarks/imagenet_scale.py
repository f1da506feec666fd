"""Serving at ImageNet scale (issue 21): the whole path for an ImageNet-class RANet, measured.

Every other benchmark serves the 17-MFLOPs Fashion-MNIST bundle; RANet's users serve ImageNet models
(0.25 to 3.3 GFLOPs per 224x224 image) on photos of any size. This step takes the path a new user
takes with `imagenet-model1` (131 M parameters), with nothing large committed:

  a. the model with random weights, its batch-norm running statistics re-estimated on smooth random
     224x224 images (train mode, momentum=None: a cumulative average), so activations and logits stay
     in a realistic range (fresh statistics let later exits' logits grow without bound, which would
     make any parity check meaningless); saved as the official `main.py` saves it (a DataParallel
     state_dict with `module.` keys, epoch, arch, best_prec1, the SGD state);
  b. `ranet export` of that checkpoint in a child process: wall time, peak RSS, bundle size;
  c. `ranet verify` of the bundle in a child process: pass/fail and the worst difference per exit,
     also relative to the largest logit of the same input (computed here in step a on verify's own
     random batch);
  d. `ranet serve --model-store`: time from process start to /readyz 200, RSS of the process tree
     (supervisor, engine, front-ends) after load and under load;
  e. photo-like JPEGs (smooth gradients + texture, quality 90) of 500x375 and 4000x3000 classified
     over v1 (multipart) and v2 (binary `image_bytes`), with the bundle's `resize_shorter_center_crop`
     input spec: status, label, exit, client latency, server inference time and the rest;
  f. decode + preprocess ms per image for both photo sizes, full decode (before) and JPEG draft mode
     (after), with `benchmarks/decode.py`'s `measure_decode`;
  g. budgets that mean something without trained weights: a stated exit mix driven by per-request
     `max_flops` caps (with `confidence=1`, so every image runs exactly to its cap) against full depth,
     over HTTP with a few closed-loop clients, one and four 224x224 JPEGs per request (small images so
     decoding does not dominate); realised speedup (mix images/s over full-depth images/s) against the
     FLOPs ratio of what the server reports it spent, bar >= 0.85;
  h. a GPU projection from the measured CPU per-exit times and FLOPs, and what decoding then costs in
     CPU cores: a projection, labelled as one.

This file is the entry point (options, the steps in order, the files written); the steps themselves
live in the `imagenet` package beside it (benchmarks/imagenet/, one module per job: see its
__init__.py). run_all.py imports `bars` from here.

`--quick` runs the same path on a narrow ImageNet-shaped config (224 input, 4 resolutions, small growth
rates) with tiny durations: the smoke test. `make bench` runs it as run_all.py's step `imagenet`.
Writes the JSON to --out (a .json path, or a folder: imagenet_scale.json and imagenet_scale.md there).
Usage:

    .venv/bin/python benchmarks/imagenet_scale.py [--config imagenet-model1] [--out FILE|DIR]
        [--workdir DIR] [--phase-seconds 30] [--clients 4] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import machine_facts, versions
from imagenet.bars import bars  # also run_all.py's: `from imagenet_scale import bars`
from imagenet.budget import IMAGES_PER_REQUEST, budget_samples, budget_step
from imagenet.checkpoint import make_checkpoint, resolve_config
from imagenet.classify import exit_times, photo_runs
from imagenet.photos import decode_figures, photos_by_size, server_decodes_with_draft
from imagenet.projection import gpu_projection
from imagenet.ranet_cli import export_bundle, verify_bundle
from imagenet.report import render
from imagenet.server import rss_breakdown, serving_store

if TYPE_CHECKING:
    from ranet_serve.export.manifest import Manifest

HERE = Path(__file__).resolve().parent


def serve_and_measure(
    store: Path,
    name: str,
    manifest: Manifest,
    photos: Mapping[str, bytes],
    work: Path,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[float], dict[str, Any]]:
    """Steps d, e, g on one server: start-up, RSS, photos, per-exit times, the budget phases."""
    from serving import RssSampler

    cumulative = manifest.cumulative_flops
    last = len(cumulative) - 1
    photo_budgets = {
        "capped at exit 0": {"knobs": {"max_flops": cumulative[0], "confidence": 1}, "exit": 0},
        "full depth": {"knobs": {"confidence": 1}, "exit": last},
    }
    samples = budget_samples(8)
    with serving_store(store, name, work / "server.log", args.start_timeout) as running:
        after_load = rss_breakdown(running)
        with RssSampler(running.pid) as sampler:
            photos_rows = photo_runs(running.url, name, photos, photo_budgets, args.photo_repeats)
            cpu_ms = exit_times(running.url, name, samples[0].data, cumulative, args.exit_repeats)
            budget = budget_step(
                running.url,
                name,
                samples,
                cumulative,
                args.clients,
                args.warmup_seconds,
                args.phase_seconds,
            )
        loaded = [s for s in sampler.samples if s > 0]
        ready_seconds = running.server.ready_seconds
    assert ready_seconds is not None  # set by the start the context waited for
    serve = {
        "ready_seconds": round(ready_seconds, 2),
        "rss_after_load": after_load,
        "rss_under_load_peak_mib": round(max(loaded), 1) if loaded else None,
        "rss_under_load_mean_mib": round(statistics.fmean(loaded), 1) if loaded else None,
        "rss_samples": len(loaded),
    }
    return serve, photos_rows, cpu_ms, budget


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every step in order, the large files under `work`."""
    from ranet_serve.export.bundle import load_bundle

    config = resolve_config(args.config, args.quick)
    config_arg = args.config
    if args.quick or Path(args.config).suffix == ".json":
        config_arg = str(work / f"{config.name}.json")
        Path(config_arg).write_text(config.to_json())
    print(f"[imagenet] a. {config.name}: building, re-estimating batch norm, saving", flush=True)
    checkpoint = work / "checkpoint" / "model_best.pth.tar"
    model = make_checkpoint(config, checkpoint, args.bn_batches, args.bn_batch_size)
    store = work / "store"
    bundle = store / config.name / "1"
    print("[imagenet] b. ranet export", flush=True)
    export = export_bundle(checkpoint, config_arg, bundle, args.child_timeout)
    print(
        f"[imagenet]    {export['seconds']} s, peak {export['peak_rss_mb']} MiB; c. ranet verify", flush=True
    )
    verify = verify_bundle(bundle, model["verify_logit_max_abs"], args.child_timeout)
    manifest = load_bundle(bundle, verify_checksums=False).manifest
    photos = photos_by_size()
    print("[imagenet] f. decode before/after", flush=True)
    server_draft = server_decodes_with_draft()
    decode = {
        size: decode_figures(data, manifest.input, args.decode_repeats) for size, data in photos.items()
    }
    print("[imagenet] d, e, g. ranet serve: start-up, photos, budgets", flush=True)
    serve, photo_rows, cpu_ms, budget = serve_and_measure(store, config.name, manifest, photos, work, args)
    flops_ratio = budget["by_images_per_request"][str(IMAGES_PER_REQUEST[0])]["flops_ratio"]
    return {
        "model": model,
        "input_spec": manifest.input.model_dump(mode="json"),
        "cumulative_flops": manifest.cumulative_flops,
        "export": export,
        "verify": verify,
        "decode": decode,
        "server_draft_decoding": server_draft,
        "serve": serve,
        "photos": photo_rows,
        "budget": budget,
        "gpu_projection": gpu_projection(manifest.cumulative_flops, cpu_ms, decode, flops_ratio),
    }


def output_paths(out: Path) -> tuple[Path, Path]:
    """(JSON, markdown): a .json path and the .md beside it, or imagenet_scale.{json,md} in a folder."""
    if out.suffix == ".json":
        return out, out.with_suffix(".md")
    return out / "imagenet_scale.json", out / "imagenet_scale.md"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="imagenet-model1", help="registered config name or JSON file")
    parser.add_argument("--workdir", type=Path, help="where the checkpoint and bundle live (a temp folder)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="JSON path, or a results folder")
    parser.add_argument("--quick", action="store_true", help="narrow ImageNet-shaped config, tiny durations")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and bundle")
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="step g: each measured phase")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="step g: before each phase")
    parser.add_argument("--clients", type=int, default=4, help="step g: closed-loop clients")
    parser.add_argument("--photo-repeats", type=int, default=5, help="step e: requests per case")
    parser.add_argument("--decode-repeats", type=int, default=7, help="step f: timed decodes per mode")
    parser.add_argument("--exit-repeats", type=int, default=3, help="step h: requests per exit")
    parser.add_argument("--bn-batches", type=int, default=4)
    parser.add_argument("--bn-batch-size", type=int, default=4)
    parser.add_argument("--child-timeout", type=float, default=1800.0, help="export and verify, each")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="ranet serve until ready")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in (
            ("phase_seconds", 1.5),
            ("warmup_seconds", 0.3),
            ("photo_repeats", 1),
            ("decode_repeats", 2),
            ("exit_repeats", 1),
            ("bn_batches", 2),
            ("bn_batch_size", 2),
            ("start_timeout", 90.0),
        ):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    peers = str(HERE / "peers")  # peers/servers.py: how every benchmark starts and stops a server
    if peers not in sys.path:
        sys.path.insert(0, peers)
    machine = machine_facts()
    started = time.monotonic()
    parent = args.workdir.resolve() if args.workdir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ranet-imagenet-", dir=parent))
    try:
        result = measure(args, work)
    finally:
        if args.keep:
            print(f"[imagenet] kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["bars"] = bars(result)
    result.update(
        {
            "quick": args.quick,
            "wall_s": round(time.monotonic() - started, 1),
            "command": " ".join(
                ["benchmarks/imagenet_scale.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": machine,
            "versions": versions(),
        }
    )
    json_path, md_path = output_paths(args.out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    text = render(result)
    md_path.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
