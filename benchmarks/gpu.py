"""The short GPU benchmark of `make gpu-check` (issue 19): the serving path on one device, in minutes.

On the default bundle (model_store/ranet-fmnist/1) and the Fashion-MNIST test images, on `--device`
(`cuda` by default; `cuda:N`; `cpu`, which with `--quick` is this file's smoke test):

1. split: the stage-split cascade vs the whole model as one ONNX graph, full depth, batch 1 and 64
   (inprocess.py's `measure_split_cost` and `MonolithicSessions` on the device), with how far their
   logits differ relative to the logits' scale (verify.py's rule);
2. in process: the default operating point vs full depth through the cascade executor, images/s at
   a few batch sizes, with accuracy and the FLOPs ratio;
3. HTTP: `ranet serve` with RANET_DEVICE set to the device (serving.py's `serving`), the project's
   load generator with 16 clients for a few seconds per point: images/s, latency, errors;
4. ImageNet-shaped: a bundle of an ImageNet config if one is present (`--imagenet-bundle`, a
   model_store bundle with input size >= 224, or one an earlier run made in `--imagenet-workdir`),
   else made with benchmark step 12's code (imagenet/checkpoint.py, imagenet/ranet_cli.py: random
   weights, `ranet export`) when the time budget allows: per-exit batch-1 latency, full-depth images/s,
   and step 12's exit mix (imagenet/budget.py's MIX, by FLOPs caps) against full depth.

Each section runs on its own: one that fails is reported with its error and the others still run
(the exit status is then 1); one skipped says why in a line. Writes the JSON (`--out`) and the
Markdown section (`--report`) that scripts/gpu_check.py puts into benchmarks/GPU_REPORT.md.
`--probe` instead writes the environment as JSON (versions, providers, the GPU, a CUDA session).

    .venv/bin/python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu.json --report /tmp/gpu.md
    python3 benchmarks/gpu.py --device cuda --budget-seconds 240      # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))  # peers/servers.py, as serving.py and imagenet/ import it

import numpy as np  # noqa: E402
import torch  # noqa: E402  (before onnxruntime: the CUDA libraries torch loads serve onnxruntime-gpu too)

from common import DEFAULT_BUNDLE, fmnist_samples, machine_facts  # noqa: E402

SECTIONS = ("split", "inprocess", "http", "imagenet")
CLIENTS = 16
# Making imagenet-model1 (random weights, batch-norm re-estimation, `ranet export`) and measuring it:
# what the budget must still hold for `--imagenet auto` to make one (export alone is about 60 s on
# 2 cores, benchmarks/README.md step 12).
IMAGENET_MAKE_SECONDS = 150.0
IMAGENET_MEASURE_SECONDS = 45.0
DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "onnx",
    "pillow",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "msgspec",
    "grpcio",
    "protobuf",
    "httpx",
    "pytest",
)


@dataclass(frozen=True)
class Sizes:
    """How much each section measures: `--quick` (seconds on a CPU) or the GPU run's (a few minutes)."""

    split_repeats: int
    batches: tuple[int, ...]
    images_per_batch_size: dict[int, int]
    repeats: int
    http_seconds: float
    http_warmup_seconds: float
    imagenet_batches: tuple[int, ...]
    imagenet_images: int
    imagenet_exit_repeats: int


QUICK = Sizes(1, (1, 64), {1: 100, 64: 1024}, 2, 1.0, 0.3, (1, 4), 8, 2)
FULL = Sizes(3, (1, 64, 256), {1: 1000, 64: 10000, 256: 10000}, 3, 5.0, 2.0, (1, 32), 128, 5)


class Deadline:
    """The time budget of the whole run (None: unlimited)."""

    def __init__(self, seconds: float | None):
        self.started = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.monotonic() - self.started)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# -- the environment --------------------------------------------------------------------------------


def nvidia_smi() -> str | None:
    """`name, driver, memory` of each GPU as nvidia-smi says, or None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def probe(device: str, bundle: Path) -> dict[str, Any]:
    """What the run stands on: Python, torch and its CUDA, onnxruntime (which build, from where, its
    providers), the versions of the serving stack, the machine, and whether a stage of the bundle
    really gets a CUDA session (onnxruntime-gpu lists the provider even where it cannot create one)."""
    from importlib import metadata

    import onnxruntime as ort

    versions: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    found: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "nvidia_smi": nvidia_smi(),
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "onnxruntime_providers": ort.get_available_providers(),
        "distributions": versions,
        "machine": machine_facts(),
    }
    if device != "cpu":
        from ranet_serve.cascade.runtimes import OnnxRuntime
        from ranet_serve.export.bundle import load_bundle

        try:
            runtime = OnnxRuntime(load_bundle(bundle, backend="onnxruntime"), device=device)
            found["cuda_session_providers"] = runtime.sessions[0].get_providers()
        except Exception as exc:
            found["cuda_session_error"] = f"{type(exc).__name__}: {exc}"
    return found


# -- 1. split cost ------------------------------------------------------------------------------------


def split_section(
    bundle: Any, runtime: Any, images: torch.Tensor, device: str, sizes: Sizes
) -> dict[str, Any]:
    """Stages vs the monolithic graph at full depth, batch 1 and 64, on the device."""
    from inprocess import MonolithicSessions, export_monolithic, measure_split_cost
    from ranet_serve.cascade.verify import TOLERANCE, compare_exit, run_all_stages

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "monolithic.onnx"
        export_monolithic(bundle, path)
        # The stage sessions' cuDNN algorithm search, so both graphs pick convolutions the same way.
        search = str(getattr(runtime, "cudnn_conv_search", "exhaustive")).upper()
        mono = MonolithicSessions(path, device=device, cuda_options={"cudnn_conv_algo_search": search})
        check = images[:64]
        whole = mono(runtime.threads_for(64)).run(None, {"image": check.numpy()})
        parity = [
            compare_exit("stages", "monolithic", k, staged, single)
            for k, (staged, single) in enumerate(zip(run_all_stages(runtime, check), whole, strict=True))
        ]
        # Parity is judged above, relative to the logits' scale; the absolute check inside would stop
        # the measurement on CUDA, whose kernels may round differently between the two graphs.
        split = measure_split_cost(runtime, mono, images, sizes.split_repeats, 1, tolerance=math.inf)
    rows = []
    for figures in cast(dict[str, dict[str, Any]], split).values():
        batch = int(figures["batch"])
        stages_ms, mono_ms = float(figures["stages_ms"]), float(figures["monolithic_ms"])
        rows.append(
            {
                "batch": batch,
                "stages_ms": stages_ms,
                "monolithic_ms": mono_ms,
                "ratio": stages_ms / mono_ms,
                "stages_images_per_s": 1000.0 * batch / stages_ms,
                "monolithic_images_per_s": 1000.0 * batch / mono_ms,
                "bare_stage_calls_ms": float(figures["bare_stage_calls_ms"]),
            }
        )
    worst = max(parity, key=lambda p: p.relative_diff)
    return {
        "rows": rows,
        "parity": {
            "worst_exit": worst.exit,
            "max_abs_diff": max(p.max_abs_diff for p in parity),
            "worst_relative_diff": worst.relative_diff,
            "tolerance": TOLERANCE,
            "ok": all(p.ok for p in parity),
        },
    }


# -- 2. default point vs full depth in process --------------------------------------------------------


def inprocess_section(runtime: Any, images: torch.Tensor, labels: np.ndarray, sizes: Sizes) -> dict[str, Any]:
    """Default operating point vs every image at the last exit, through the cascade executor."""
    from inprocess import batches, interleaved
    from ranet_serve.cascade.executor import CascadeExecutor
    from ranet_serve.cascade.policy import Budget, ExitPolicy

    manifest = runtime.manifest
    executor = CascadeExecutor(runtime)
    plan = ExitPolicy(manifest).resolve(Budget())
    n, exits = images.shape[0], len(manifest.exits)
    default_t = np.broadcast_to(plan.thresholds, (n, exits)).copy()
    never = np.ones((n, exits), dtype=np.float32)
    last = np.full(n, exits - 1)

    def cascade(thresholds: np.ndarray, chunks: Sequence[torch.Tensor]) -> list[Any]:
        out: list[Any] = []
        start = 0
        for chunk in chunks:
            size = chunk.shape[0]
            out.extend(
                executor.run(chunk, thresholds[start : start + size], last[start : start + size]).images
            )
            start += size
        return out

    rows = []
    for batch in sizes.batches:
        count = min(sizes.images_per_batch_size[batch], n)
        chunks = batches(images[:count], batch)
        medians = interleaved(
            {
                "default_point": partial(cascade, default_t, chunks),
                "full_depth": partial(cascade, never, chunks),
            },
            sizes.repeats,
        )
        rows.append(
            {
                "batch": batch,
                "images": count,
                "default_point_images_per_s": count / medians["default_point"],
                "full_depth_images_per_s": count / medians["full_depth"],
                "speedup": medians["full_depth"] / medians["default_point"],
            }
        )
    # Accuracy and FLOPs over the images of the largest batch size's runs.
    count = min(sizes.images_per_batch_size[sizes.batches[-1]], n)
    chunks = batches(images[:count], sizes.batches[-1])
    default_results, full_results = cascade(default_t, chunks), cascade(never, chunks)
    mean_flops = float(np.mean([r.flops for r in default_results]))
    return {
        "operating_point": plan.operating_point,
        "rows": rows,
        "accuracy_images": count,
        "accuracy": {
            "default_point": float(
                np.mean(np.array([r.class_index for r in default_results]) == labels[:count])
            ),
            "full_depth": float(np.mean(np.array([r.class_index for r in full_results]) == labels[:count])),
        },
        "mean_flops_per_image": mean_flops,
        "last_exit_flops": manifest.exits[-1].cumulative_flops,
        "flops_ratio": manifest.exits[-1].cumulative_flops / mean_flops,
    }


# -- 3. HTTP ----------------------------------------------------------------------------------------------


def http_section(bundle_dir: Path, device: str, sizes: Sizes, clients: int, work: Path) -> dict[str, Any]:
    """`ranet serve` on the device, the load generator at the default point and at full depth."""
    import httpx
    from ranet_client.load import BudgetChoice, LoadConfig, run_load_sync

    from serving import serving

    samples = fmnist_samples(1000)
    version = {"version": bundle_dir.name}
    model = bundle_dir.parent.name
    rows: list[dict[str, Any]] = []
    with serving(bundle_dir, 0, work, "gpu", {"RANET_DEVICE": device}) as running:
        info = httpx.get(f"{running.url}/v1/models/{model}", timeout=30).json()
        served_on = sorted({str(v.get("device")) for v in info.get("versions", [])})
        for name, knobs in (("default point", version), ("full depth", {**version, "confidence": "1"})):
            config = LoadConfig(
                url=running.url,
                duration=sizes.http_seconds,
                concurrency=clients,
                mix=(BudgetChoice(name, knobs, 1.0),),
                timeout=30.0,
            )
            run_load_sync(replace(config, duration=sizes.http_warmup_seconds), samples)
            report = run_load_sync(config, samples)
            rows.append(
                {
                    "point": name,
                    "images_per_s": report.images_per_s,
                    "requests_per_s": report.throughput_rps,
                    "p50_ms": report.latency_ms["p50"],
                    "p99_ms": report.latency_ms["p99"],
                    "server_inference_ms": report.server_inference_ms_mean,
                    "mflops_per_image": (report.mean_flops_per_image or 0.0) / 1e6,
                    "accuracy": report.accuracy,
                    "requests_ok": report.requests_ok,
                    "requests_failed": report.requests_failed,
                }
            )
    default, full = rows
    return {
        "clients": clients,
        "seconds": sizes.http_seconds,
        "served_on": served_on,
        "rows": rows,
        "default_over_full_depth": default["images_per_s"] / full["images_per_s"]
        if full["images_per_s"]
        else None,
    }


# -- 4. ImageNet-shaped model ---------------------------------------------------------------------------


def find_imagenet_bundle(args: argparse.Namespace) -> Path | None:
    """A bundle named on the command line, else an ImageNet-sized one in model_store/, else one an
    earlier run made in the work folder."""
    if args.imagenet_bundle is not None:
        return Path(args.imagenet_bundle)
    candidates = sorted(DEFAULT_BUNDLE.parents[1].glob("*/*/manifest.json"))
    candidates += sorted((args.imagenet_workdir / "store").glob("*/*/manifest.json"))
    for manifest in candidates:
        try:
            size = json.loads(manifest.read_text())["input"]["size"]
        except (OSError, KeyError, TypeError, ValueError):
            continue
        if size >= 224:
            return manifest.parent
    return None


def make_imagenet_bundle(args: argparse.Namespace, deadline: Deadline) -> tuple[Path, dict[str, Any]]:
    """Benchmark step 12's model: random weights, batch norm re-estimated, official format, exported."""
    from imagenet.checkpoint import make_checkpoint, resolve_config
    from imagenet.ranet_cli import export_bundle

    config = resolve_config(args.imagenet_config, quick=False)
    work = args.imagenet_workdir
    checkpoint = work / "checkpoint" / "model_best.pth.tar"
    made = make_checkpoint(config, checkpoint, 4, 4)
    bundle = work / "store" / config.name / "1"
    shutil.rmtree(bundle, ignore_errors=True)
    timeout = max(30.0, deadline.left() - IMAGENET_MEASURE_SECONDS)  # killed past it: a section error
    export = export_bundle(checkpoint, args.imagenet_config, bundle, timeout)
    checkpoint.unlink()
    return bundle, {"parameters": made["parameters"], "export_seconds": export["seconds"]}


def mix_caps(cumulative: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """Per image, the exit step 12's mix caps it at: the MIX shares of `count` images, in a fixed
    shuffled order so that every batch holds a mix (as the server's batches of mixed requests do)."""
    from imagenet.budget import MIX

    last = len(cumulative) - 1
    caps, edges, total = np.empty(count, dtype=np.int64), [], 0.0
    for _, exit_, share in MIX:
        total += share
        edges.append((total, last if exit_ is None else min(exit_, last)))
    for i in range(count):
        position = (i + 0.5) / count
        caps[i] = next(cap for edge, cap in edges if position <= edge + 1e-9)
    return np.random.default_rng(seed).permutation(caps)


def imagenet_section(args: argparse.Namespace, sizes: Sizes, deadline: Deadline) -> dict[str, Any]:
    """The ImageNet-shaped bundle on the device: per-exit latency, full depth, step 12's exit mix."""
    from inprocess import interleaved
    from ranet_serve.cascade.executor import CascadeExecutor
    from ranet_serve.cascade.runtimes import create_runtime
    from ranet_serve.export.bundle import load_bundle

    found = find_imagenet_bundle(args)
    made: dict[str, Any] | None = None
    if found is None:
        if args.imagenet == "skip" or (args.imagenet == "auto" and args.quick):
            return {"skipped": "no ImageNet-shaped bundle present (--imagenet-bundle, model_store/)"}
        need = IMAGENET_MAKE_SECONDS + IMAGENET_MEASURE_SECONDS
        if args.imagenet == "auto" and deadline.left() < need:
            return {
                "skipped": f"no ImageNet-shaped bundle present, and making one (about {need:.0f} s) "
                f"does not fit the {max(deadline.left(), 0):.0f} s left"
            }
        found, made = make_imagenet_bundle(args, deadline)
    bundle = load_bundle(found, backend="onnxruntime")
    manifest = bundle.manifest
    runtime = create_runtime(bundle, "onnxruntime", args.device, args.threads)
    executor = CascadeExecutor(runtime)
    spec, cumulative = manifest.input, manifest.cumulative_flops
    exits = len(cumulative)
    count = max(sizes.imagenet_images, max(sizes.imagenet_batches))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, spec.channels, spec.size, spec.size, generator=generator)
    never = np.ones((count, exits), dtype=np.float32)  # no early exit: caps alone decide (random weights)

    def run(batch: int, caps: np.ndarray) -> None:
        for start in range(0, count - batch + 1, batch):
            executor.run(images[start : start + batch], never[:batch], caps[start : start + batch])

    exit_ms = [
        1000.0
        * timed(partial(executor.run, images[:1], never[:1], np.array([k])), sizes.imagenet_exit_repeats)
        for k in range(exits)
    ]
    full, mix = np.full(count, exits - 1), mix_caps(cumulative, count)
    rows = []
    for batch in sizes.imagenet_batches:
        medians = interleaved(
            {"full": partial(run, batch, full), "mix": partial(run, batch, mix)}, sizes.repeats
        )
        images_run = (count // batch) * batch
        rows.append(
            {
                "batch": batch,
                "full_depth_images_per_s": images_run / medians["full"],
                "mix_images_per_s": images_run / medians["mix"],
                "speedup": medians["full"] / medians["mix"],
                "flops_ratio": cumulative[-1] / float(np.mean([cumulative[c] for c in mix[:images_run]])),
            }
        )
    return {
        "bundle": f"{manifest.name}/{manifest.version}",
        "config": manifest.config.name,
        "path": str(found),
        "made": made,
        "input_size": spec.size,
        "last_exit_gflops": cumulative[-1] / 1e9,
        "exit_ms_batch1": exit_ms,
        "rows": rows,
    }


# -- the run ---------------------------------------------------------------------------------------------


def load_images(manifest: Any) -> tuple[torch.Tensor, np.ndarray]:
    """The Fashion-MNIST test set, normalised as the bundle's manifest says, and its labels."""
    from ranet_serve.data.datasets import load_fashion_mnist
    from ranet_serve.data.transforms import normalize

    test = load_fashion_mnist("test")
    spec = manifest.input
    return normalize(torch.from_numpy(test.images), spec.mean, spec.std), test.labels


def run_section(
    result: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]], save: Callable[[], None]
) -> None:
    """Run one section into result[name]; a failure is recorded (and printed) instead of raised. The
    results so far are saved after each section, so a run stopped from outside keeps them."""
    started = time.monotonic()
    print(f"[gpu] {name}", flush=True)
    try:
        result[name] = fn()
    except (Exception, SystemExit) as exc:  # SystemExit: imagenet/ranet_cli's failed export
        traceback.print_exc()
        result["errors"][name] = f"{type(exc).__name__}: {exc}"[-2000:]
    result["seconds"][name] = round(time.monotonic() - started, 1)
    save()


def device_sections(
    result: dict[str, Any], args: argparse.Namespace, bundle: Any, sizes: Sizes, save: Callable[[], None]
) -> None:
    """Sections 1 and 2 on one runtime of the default bundle, freed when they are done."""
    from ranet_serve.cascade.runtimes import OnnxRuntime, create_runtime

    runtime = create_runtime(bundle, "onnxruntime", args.device, args.threads)
    assert isinstance(runtime, OnnxRuntime)
    result["runtime"] = runtime.describe()
    images, labels = load_images(bundle.manifest)
    if "split" not in args.skip:
        run_section(result, "split", lambda: split_section(bundle, runtime, images, args.device, sizes), save)
    if "inprocess" not in args.skip:
        run_section(result, "inprocess", lambda: inprocess_section(runtime, images, labels, sizes), save)


def measure(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every section not skipped, in order; `save(result)` after each."""
    from ranet_serve.export.bundle import load_bundle

    sizes = QUICK if args.quick else FULL
    deadline = Deadline(args.budget_seconds)
    result: dict[str, Any] = {
        "device": args.device,
        "quick": args.quick,
        "skipped_sections": list(args.skip),
        "errors": {},
        "seconds": {},
        "runtime": None,
    }
    bundle = load_bundle(args.bundle, backend="onnxruntime")
    result["bundle"] = f"{bundle.manifest.name}/{bundle.manifest.version}"
    device_sections(result, args, bundle, sizes, lambda: save(result))
    # The server and the ImageNet model below get the device to themselves.
    if "http" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="ranet-gpu-") as tmp:
            work = Path(tmp)
            run_section(
                result,
                "http",
                lambda: http_section(args.bundle, args.device, sizes, args.clients, work),
                lambda: save(result),
            )
    if "imagenet" not in args.skip:
        run_section(result, "imagenet", lambda: imagenet_section(args, sizes, deadline), lambda: save(result))
    return result


# -- the report -----------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    """The Markdown section: one table per section, a line for each section skipped or failed."""
    device = result["device"]
    lines = [
        f"## GPU benchmark ({device}{', quick' if result['quick'] else ''})",
        "",
        f"Bundle {result['bundle']}, runtime {result['runtime'] or '-'}. Medians of interleaved repetitions; "
        "ratios are of the figures printed beside them.",
        "",
    ]
    errors = result["errors"]

    def failed(name: str) -> bool:
        if name in errors:
            lines.extend([f"Not measured: {errors[name]}", ""])
            return True
        if name in result.get("skipped_sections", ()):
            lines.extend(["Skipped (--skip).", ""])
            return True
        if name not in result:
            lines.extend(["Not run (the run ended before it).", ""])
            return True
        return False

    lines += ["### Stage-split cascade vs one monolithic ONNX graph (full depth)", ""]
    if not failed("split"):
        split = result["split"]
        parity = split["parity"]
        lines += [
            "| batch | stages ms | monolithic ms | stages / monolithic | stages img/s | monolithic img/s "
            "| bare onnxruntime calls ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in split["rows"]:
            lines.append(
                f"| {r['batch']} | {r['stages_ms']:.3f} | {r['monolithic_ms']:.3f} | {r['ratio']:.2f} "
                f"| {r['stages_images_per_s']:.1f} | {r['monolithic_images_per_s']:.1f} "
                f"| {r['bare_stage_calls_ms']:.3f} |"
            )
        verdict = "within" if parity["ok"] else "OUTSIDE"
        lines += [
            "",
            "Logits of the two graphs (64 test images, every exit): "
            f"max |diff| {parity['max_abs_diff']:.2e}, "
            f"worst relative {parity['worst_relative_diff']:.2e} (exit {parity['worst_exit']}), {verdict} "
            f"the verify tolerance {parity['tolerance']:g}.",
            "",
        ]

    lines += ["### Default operating point vs full depth, in process", ""]
    if not failed("inprocess"):
        inproc = result["inprocess"]
        accuracy = inproc["accuracy"]
        lines += [
            f"Operating point `{inproc['operating_point']}`: {inproc['mean_flops_per_image'] / 1e6:.3f} "
            f"MFLOPs per image vs {inproc['last_exit_flops'] / 1e6:.3f} at the last exit (FLOPs ratio "
            f"{inproc['flops_ratio']:.2f}); accuracy on {inproc['accuracy_images']} test images "
            f"{100 * accuracy['default_point']:.2f}% vs {100 * accuracy['full_depth']:.2f}% at full depth.",
            "",
            "| batch | images | default point img/s | full depth img/s | speedup |",
            "|---|---|---|---|---|",
        ]
        for r in inproc["rows"]:
            lines.append(
                f"| {r['batch']} | {r['images']} | {r['default_point_images_per_s']:.1f} "
                f"| {r['full_depth_images_per_s']:.1f} | {r['speedup']:.2f} |"
            )
        lines.append("")

    lines += [f"### HTTP: ranet serve with RANET_DEVICE={device}, {CLIENTS} clients, load generator", ""]
    if not failed("http"):
        http = result["http"]
        lines += [
            f"{http['seconds']:g} s per point after a warm-up; the model's versions report device "
            f"{', '.join(http['served_on'])}.",
            "",
            "| point | img/s | req/s | p50 ms | p99 ms | server inference ms | MFLOPs/img | accuracy % "
            "| errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in http["rows"]:
            accuracy = None if r["accuracy"] is None else 100 * r["accuracy"]
            lines.append(
                f"| {r['point']} | {r['images_per_s']:.1f} | {r['requests_per_s']:.1f} | {_f(r['p50_ms'])} "
                f"| {_f(r['p99_ms'])} | {_f(r['server_inference_ms'], 2)} | {r['mflops_per_image']:.2f} "
                f"| {_f(accuracy)} | {r['requests_failed']} |"
            )
        lines += ["", f"Default point / full depth: {_f(http['default_over_full_depth'], 2)}.", ""]

    lines += ["### ImageNet-shaped model", ""]
    if not failed("imagenet"):
        net = result["imagenet"]
        if "skipped" in net:
            lines += [f"Skipped: {net['skipped']}.", ""]
        else:
            made = net["made"]
            origin = (
                f"made here (random weights, {made['parameters'] / 1e6:.1f} M parameters, export "
                f"{made['export_seconds']:.0f} s)"
                if made
                else f"from {net['path']}"
            )
            exit_ms = ", ".join(f"{ms:.2f}" for ms in net["exit_ms_batch1"])
            lines += [
                f"Bundle {net['bundle']} ({net['config']}, {net['input_size']} px, "
                f"{net['last_exit_gflops']:.2f} GFLOPs at the last exit), {origin}. Batch-1 ms to each exit: "
                f"{exit_ms}. The mix is step 12's (by FLOPs caps, no early exit: random weights).",
                "",
                "| batch | full depth img/s | mix img/s | speedup | FLOPs ratio |",
                "|---|---|---|---|---|",
            ]
            for r in net["rows"]:
                lines.append(
                    f"| {r['batch']} | {r['full_depth_images_per_s']:.1f} | {r['mix_images_per_s']:.1f} "
                    f"| {r['speedup']:.2f} | {r['flops_ratio']:.2f} |"
                )
            lines.append("")
    seconds = ", ".join(f"{name} {s:g} s" for name, s in result["seconds"].items())
    lines += [f"Sections took: {seconds}.", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="seconds per section (the CPU smoke test)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)"
    )
    parser.add_argument("--clients", type=int, default=CLIENTS, help="HTTP: closed-loop clients")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument(
        "--budget-seconds", type=float, help="time for the whole run: decides the ImageNet make"
    )
    parser.add_argument("--imagenet", choices=("auto", "make", "skip"), default="auto")
    parser.add_argument("--imagenet-bundle", type=Path, help="an ImageNet-shaped bundle to measure")
    parser.add_argument(
        "--imagenet-config", default="imagenet-model1", help="the config --imagenet make makes"
    )
    parser.add_argument(
        "--imagenet-workdir", type=Path, default=Path(tempfile.gettempdir()) / "ranet-gpu-imagenet"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    parser.add_argument("--report", type=Path, default=HERE / "results" / "gpu.md")
    parser.add_argument("--probe", action="store_true", help="write the environment to --out and stop")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.bundle = args.bundle.resolve()  # the server's model store is its parent's parent
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    if args.probe:
        args.out.write_text(json.dumps(probe(args.device, args.bundle), indent=1) + "\n")
        return 0
    started = time.monotonic()

    def save(result: dict[str, Any]) -> None:
        result["wall_s"] = round(time.monotonic() - started, 1)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.report.write_text(render(result))

    result = measure(args, save)
    save(result)
    print(render(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
