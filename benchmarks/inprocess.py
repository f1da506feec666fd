"""In-process benchmarks on the default bundle and the Fashion-MNIST test set (onnxruntime CPU).

1. Split cost: all stages in sequence (state handed between sessions) versus the whole model as one
   ONNX graph, same inputs, batch 1 and 64, same exporter opset and the same session options; the
   monolithic graph returns every exit's logits and is checked against the stages, so both compute
   the same. Also timed: the bare onnxruntime calls of the stages (numpy in and out, no runtime
   wrapper), which splits the cost into onnxruntime's part and the torch interface's part.
2. Early exit: images/s and accuracy at the default operating point versus forcing every image to
   the last exit through the same cascade, and versus the monolithic graph; realised speedup versus
   the FLOPs ratio; batch sizes 1, 8, 32, 128.
3. Backends: onnxruntime versus TorchScript versus PyTorch eager at the default point.

Every comparison is measured side by side in one run, interleaved over repetitions, and reported as
medians and ratios (these machines are shared and noisy). Usage:

    .venv/bin/python benchmarks/inprocess.py [--bundle model_store/ranet-fmnist/1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ranet_serve.cascade.executor import CascadeExecutor
from ranet_serve.cascade.policy import Budget, ExitPolicy
from ranet_serve.cascade.runtimes import EagerRuntime, OnnxRuntime, TorchScriptRuntime, session_options
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.data.datasets import load_fashion_mnist
from ranet_serve.data.transforms import normalize
from ranet_serve.export.bundle import Bundle, load_bundle
from ranet_serve.export.exporters import ONNX_OPSET

ROOT = Path(__file__).resolve().parents[1]


def export_monolithic(bundle: Bundle, path: Path) -> None:
    """The whole RANet (every exit as an output) as one ONNX graph with a dynamic batch axis."""
    model = bundle.load_model()
    spec = bundle.manifest.input
    example = torch.randn(2, spec.channels, spec.size, spec.size)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["image"],
            output_names=[f"logits_{k}" for k in range(len(bundle.manifest.exits))],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
            dynamo=True,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
        assert program is not None
        program.save(str(path))


class MonolithicSessions:
    """The whole-model graph, one session per thread count, each with the stage sessions' options.

    The runtime runs small batches single-threaded (`OnnxRuntime.threads_for`); the whole graph is
    given the same thread count at every batch size, so both sides run as the server would run them.
    `device` `cuda` or `cuda:N` (benchmarks/gpu.py) runs it on onnxruntime's CUDA provider, with the
    options the stage runtime uses there (no shared CPU arena, `cuda_options` such as its cuDNN search);
    its inputs and outputs are host arrays.
    """

    def __init__(self, path: Path, device: str = "cpu", cuda_options: dict[str, str] | None = None):
        self.path = path
        self.device = device
        self.cuda_options = {"device_id": device.partition(":")[2] or "0", **(cuda_options or {})}
        self._sessions: dict[int, ort.InferenceSession] = {}

    def __call__(self, threads: int) -> ort.InferenceSession:
        if threads not in self._sessions:
            cuda = self.device.startswith("cuda")
            providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
            if cuda:
                providers.insert(0, ("CUDAExecutionProvider", self.cuda_options))
            session = ort.InferenceSession(
                str(self.path),
                sess_options=session_options(threads, shared_cpu_arena=not cuda),
                providers=providers,
            )
            if cuda and "CUDAExecutionProvider" not in session.get_providers():
                raise RuntimeError("onnxruntime could not create a CUDA session for the monolithic graph")
            self._sessions[threads] = session
        return self._sessions[threads]


def bare_stage_calls(runtime: OnnxRuntime, batch: int) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The stages as bare onnxruntime calls on numpy arrays: the split cost without the runtime wrapper."""
    plan = [
        (session, stage.inputs, list(stage.outputs))
        for session, stage in zip(runtime.sessions_for(batch), runtime.manifest.stages, strict=True)
    ]

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        env = {"image": images}
        for session, inputs, outputs in plan:
            env.update(zip(outputs, session.run(outputs, {name: env[name] for name in inputs}), strict=True))
        return env

    return run


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int, block: int = 1
) -> dict[str, float]:
    """Median seconds of each candidate, run round-robin so drift hits all of them alike.

    `block` > 1 runs each candidate `block` times in a row per turn and drops the first call of each
    turn: every candidate is then timed in its own steady state, as a server runs it, instead of
    paying on every call for the caches the other candidate just filled. Used for the split cost at
    batch 1, where calls last 1-2 ms: interleaved call by call, which of the two ran just before
    moved the stages/monolithic ratio by up to 0.1 between otherwise identical runs.
    """
    for fn in candidates.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(max(repeats // block, 1)):
        for name, fn in candidates.items():
            times = [seconds(fn) for _ in range(block + (1 if block > 1 else 0))]
            samples[name].extend(times[1:] if block > 1 else times)
    return {name: statistics.median(values) for name, values in samples.items()}


def batches(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, images.shape[0], size)]


# Calls per turn in the split-cost measurement, by batch size (see `interleaved`).
SPLIT_BLOCK = {1: 20, 64: 4}


def measure_split_cost(
    runtime: OnnxRuntime,
    mono: MonolithicSessions,
    images: torch.Tensor,
    repeats: int,
    rounds_wanted: int,
    multithreaded: OnnxRuntime | None = None,
    tolerance: float = 1e-4,
) -> dict[str, dict[str, object]]:
    """Stages in sequence (through the runtime, and as bare calls) vs the monolithic graph, batch 1 and 64.

    Each round interleaves the candidates and takes medians; the ratio reported is the median of the
    rounds' ratios, and every round's ratio is kept to show the spread on a shared machine. Both sides
    run each batch with the thread count the runtime uses for it. `multithreaded`, a runtime that never
    drops to one thread, adds an informational batch-1 row at its thread count. `tolerance`: the most
    any logit of the two may differ (absolute); benchmarks/gpu.py checks CUDA's itself, relative to the
    logits' scale, and passes infinity.
    """
    # Fairness first: the monolithic graph computes every exit, as the stages do.
    check = images[:64]
    whole_check = mono(runtime.threads_for(64)).run(None, {"image": check.numpy()})
    for k, (staged, single) in enumerate(zip(run_all_stages(runtime, check), whole_check, strict=True)):
        diff = float(np.abs(staged - single).max())
        assert diff <= tolerance, f"exit {k}: stages and monolithic graph differ by {diff}"
    cases = [("1", runtime, 1), ("64", runtime, 64)]
    if multithreaded is not None and multithreaded.threads_for(1) != runtime.threads_for(1):
        cases.append((f"1@{multithreaded.threads or 'default'}threads", multithreaded, 1))
    split: dict[str, dict[str, object]] = {}
    for key, rt, batch in cases:
        x = images[:batch]
        xn = x.numpy()
        count = max(repeats * (100 if batch == 1 else 8), 5)
        threads = rt.threads_for(batch)
        session = mono(threads)
        bare = bare_stage_calls(rt, batch)

        def whole(xn: np.ndarray = xn, session: ort.InferenceSession = session) -> object:
            return session.run(None, {"image": xn})

        # Pairs only, in blocks of calls: each candidate is timed warm, in its own steady state, and
        # turns alternate so drift hits both alike (the bare calls share the stage sessions).
        block = SPLIT_BLOCK[batch]
        rounds = [
            interleaved(
                {"stages": lambda x=x, rt=rt: run_all_stages(rt, x), "monolithic": whole}, count, block
            )
            for _ in range(max(rounds_wanted, 1))
        ]
        bare_rounds = [
            interleaved(
                {"bare_stage_calls": lambda xn=xn, bare=bare: bare(xn), "monolithic": whole}, count, block
            )
            for _ in range(max(rounds_wanted, 1))
        ]
        ratios = [r["stages"] / r["monolithic"] for r in rounds]
        bare_ratios = [r["bare_stage_calls"] / r["monolithic"] for r in bare_rounds]
        split[key] = {
            "batch": batch,
            "threads": threads,
            "stages_ms": 1000 * statistics.median(r["stages"] for r in rounds),
            "monolithic_ms": 1000 * statistics.median(r["monolithic"] for r in rounds),
            "ratio": statistics.median(ratios),
            "ratio_per_round": ratios,
            "bare_stage_calls_ms": 1000 * statistics.median(r["bare_stage_calls"] for r in bare_rounds),
            "bare_ratio": statistics.median(bare_ratios),
        }
    return split


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=ROOT / "model_store" / "ranet-fmnist" / "1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--split-only", action="store_true", help="run only the split-cost test")
    parser.add_argument(
        "--split-rounds", type=int, default=3, help="independent interleaved rounds of the split-cost test"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    manifest = bundle.manifest
    exits = len(manifest.exits)
    test = load_fashion_mnist("test")
    images = normalize(torch.from_numpy(test.images), manifest.input.mean, manifest.input.std)
    labels = test.labels
    report: dict[str, object] = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"onnxruntime {ort.__version__}",
        "threads": args.threads,
    }

    runtime = OnnxRuntime(bundle, threads=args.threads)
    executor = CascadeExecutor(runtime)
    with tempfile.TemporaryDirectory() as tmp:
        mono_path = Path(tmp) / "monolithic.onnx"
        export_monolithic(bundle, mono_path)
        mono = MonolithicSessions(mono_path)

        # 1. Split cost.
        report["split_cost"] = measure_split_cost(
            runtime,
            mono,
            images,
            args.repeats,
            args.split_rounds,
            multithreaded=OnnxRuntime(bundle, threads=args.threads, single_thread_below=0),
        )
        if args.split_only:
            write_report(report, args.out)
            return

        # 2. Early exit versus full depth versus monolithic, across batch sizes.
        plan = ExitPolicy(manifest).resolve(Budget())
        default_t = np.broadcast_to(plan.thresholds, (images.shape[0], exits)).copy()
        never = np.ones((images.shape[0], exits), dtype=np.float32)
        last = np.full(images.shape[0], exits - 1)
        sweep: dict[str, dict[str, float]] = {}
        accuracy: dict[str, float] = {}
        mean_flops = 0.0
        for batch in (1, 8, 32, 128):
            count = 1000 if batch == 1 else 4000 if batch == 8 else images.shape[0]
            chunks = batches(images[:count], batch)
            starts = list(range(0, count, batch))

            def cascade(
                thresholds: np.ndarray, chunks: list[torch.Tensor] = chunks, starts: list[int] = starts
            ) -> list:
                out = []
                for s, c in zip(starts, chunks, strict=True):
                    n = c.shape[0]
                    out.extend(executor.run(c, thresholds[s : s + n], last[s : s + n]).images)
                return out

            def monolithic(chunks: list[torch.Tensor] = chunks) -> list:
                return [
                    mono(runtime.threads_for(c.shape[0])).run([f"logits_{exits - 1}"], {"image": c.numpy()})
                    for c in chunks
                ]

            medians = interleaved(
                {
                    "default_point": lambda c=cascade: c(default_t),
                    "full_depth_cascade": lambda c=cascade: c(never),
                    "monolithic": monolithic,
                },
                repeats=args.repeats if batch > 1 else max(2, args.repeats // 2),
            )
            sweep[str(batch)] = {f"{k}_images_per_s": count / v for k, v in medians.items()}
            sweep[str(batch)]["speedup_vs_full_depth"] = (
                medians["full_depth_cascade"] / medians["default_point"]
            )
            sweep[str(batch)]["speedup_vs_monolithic"] = medians["monolithic"] / medians["default_point"]
            if batch == 128:
                results = cascade(default_t)
                accuracy["default_point"] = 100 * float(
                    np.mean(np.array([r.class_index for r in results]) == labels)
                )
                mean_flops = float(np.mean([r.flops for r in results]))
                full = cascade(never)
                accuracy["full_depth"] = 100 * float(
                    np.mean(np.array([r.class_index for r in full]) == labels)
                )
                mono_logits = np.concatenate([o[0] for o in monolithic()])
                accuracy["monolithic"] = 100 * float(np.mean(mono_logits.argmax(1) == labels))
        flops_ratio = manifest.exits[-1].cumulative_flops / mean_flops
        report["early_exit"] = {
            "operating_point": plan.operating_point,
            "mean_flops_per_image": mean_flops,
            "last_exit_flops": manifest.exits[-1].cumulative_flops,
            "flops_ratio": flops_ratio,
            "accuracy": accuracy,
            "by_batch": sweep,
            "goal_speedup_at_least": 0.8 * flops_ratio,
        }

        # 3. Backends at the default point, batch 32.
        chunks = batches(images[:2000], 32)
        backend_runs = {}
        for name, rt in (
            ("onnxruntime", runtime),
            ("torchscript", TorchScriptRuntime(bundle)),
            ("eager", EagerRuntime(bundle)),
        ):
            ex = CascadeExecutor(rt)

            def run(ex: CascadeExecutor = ex) -> None:
                for c in chunks:
                    n = c.shape[0]
                    ex.run(c, default_t[:n], last[:n])

            backend_runs[name] = run
        medians = interleaved(backend_runs, repeats=max(2, args.repeats // 2))
        report["backends_batch32_images_per_s"] = {k: 2000 / v for k, v in medians.items()}

    write_report(report, args.out)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "inprocess.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "inprocess.md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    split = report["split_cost"]
    lines = [
        "## In-process (onnxruntime CPU)",
        "",
        f"Bundle {report['bundle']}; {report['machine']}. Medians of interleaved repetitions.",
        "",
        "### Split cost: stages in sequence vs one monolithic ONNX graph",
        "",
        "Both sides run each batch with the intra-op threads the runtime uses for it (small batches "
        "single-threaded); the last row, if any, is batch 1 forced to the large-batch thread count, "
        "for information.",
        "",
        "| batch | threads | stages ms | monolithic ms | ratio (median of rounds) | rounds | goal "
        "| bare onnxruntime calls ms | bare ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    goals = {"1": "<= 1.25", "64": "<= 1.10"}
    for key, s in split.items():
        per_round = ", ".join(f"{r:.2f}" for r in s["ratio_per_round"])
        lines.append(
            f"| {s['batch']} | {s['threads'] or 'default'} | {s['stages_ms']:.2f} | {s['monolithic_ms']:.2f} "
            f"| {s['ratio']:.2f} | {per_round} | {goals.get(key, '-')} | {s['bare_stage_calls_ms']:.2f} "
            f"| {s['bare_ratio']:.2f} |"
        )
    if "early_exit" not in report:  # --split-only
        return "\n".join([*lines, ""])
    early = report["early_exit"]
    lines += [
        "",
        f"### Early exit at the default operating point (`{early['operating_point']}`)",
        "",
        f"Mean {early['mean_flops_per_image'] / 1e6:.3f} MFLOPs per image vs "
        f"{early['last_exit_flops'] / 1e6:.3f} "
        f"at the last exit: FLOPs ratio {early['flops_ratio']:.2f}, goal speedup >= "
        f"{early['goal_speedup_at_least']:.2f}. Test accuracy: default point "
        f"{early['accuracy']['default_point']:.2f}%, full depth {early['accuracy']['full_depth']:.2f}%, "
        f"monolithic {early['accuracy']['monolithic']:.2f}%.",
        "",
        "| batch | default point img/s | full-depth cascade img/s | monolithic img/s "
        "| speedup vs full depth | speedup vs monolithic |",
        "|---|---|---|---|---|---|",
    ]
    for batch, s in early["by_batch"].items():
        lines.append(
            f"| {batch} | {s['default_point_images_per_s']:.0f} | "
            f"{s['full_depth_cascade_images_per_s']:.0f} | "
            f"{s['monolithic_images_per_s']:.0f} | {s['speedup_vs_full_depth']:.2f} | "
            f"{s['speedup_vs_monolithic']:.2f} |"
        )
    backends = report["backends_batch32_images_per_s"]
    lines += [
        "",
        "### Backends at the default point, batch 32 (images/s)",
        "",
        "| onnxruntime | TorchScript | PyTorch eager |",
        "|---|---|---|",
        f"| {backends['onnxruntime']:.0f} | {backends['torchscript']:.0f} | {backends['eager']:.0f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
