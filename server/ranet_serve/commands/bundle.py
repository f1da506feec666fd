"""`ranet export|verify|inspect`: turn a checkpoint into a bundle, check it, describe it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from torch import Tensor

    from ranet_serve.cascade.verify import ExitParity

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("verify")(verify_command)
    app.command("inspect")(inspect_command)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(1)


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="this project's checkpoint, or an official one")],
    out: Annotated[Path, typer.Option(help="bundle directory, e.g. model_store/<name>/<version>")],
    config: Annotated[
        str | None, typer.Option(help="config name or JSON file (required for official checkpoints)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="model name (default: the out directory's parent)")] = None,
    version: Annotated[
        str | None, typer.Option(help="model version (default: the out directory's name)")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="text file with one class label per line")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
) -> None:
    """Split a checkpoint into per-exit stages, export ONNX + TorchScript, write the bundle."""
    from ranet_serve.errors import BundleError
    from ranet_serve.export.bundle import write_bundle
    from ranet_serve.export.defaults import default_input_spec, default_labels
    from ranet_serve.model.checkpoint import CheckpointError, load_model
    from ranet_serve.model.config import load_config

    try:
        model = load_model(checkpoint, load_config(config) if config else None)
        manifest = write_bundle(
            model,
            out,
            name=name or out.resolve().parent.name,
            version=version or out.name,
            input_spec=default_input_spec(model.config),
            labels=default_labels(model.config, labels),
            source=str(checkpoint),
            overwrite=overwrite,
        )
    except (CheckpointError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"wrote bundle {manifest.name}/{manifest.version} ({len(manifest.stages)} stages) to {out}")


def verify_command(
    bundle_dir: Annotated[Path, typer.Argument(help="bundle directory")],
    batch: Annotated[int, typer.Option(help="random images per check")] = 8,
    dataset: Annotated[
        str | None, typer.Option(help="also check real images: fashion-mnist | cifar10 | cifar100")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="CIFAR directory")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="largest max|diff| per exit relative to max(max|logit|, 1) (default 1e-4)", min=0.0
        ),
    ] = None,
) -> None:
    """Check manifest and checksums, then every exit of ONNX and TorchScript against PyTorch.

    An exit passes when its largest difference is within `tolerance` of the scale of PyTorch's logits
    on the same batch (see cascade/verify.py for the rule and the measurements behind the default).
    """
    import torch

    from ranet_serve.cascade.verify import RULE, TOLERANCE, verify_bundle
    from ranet_serve.errors import RanetServeError
    from ranet_serve.export.bundle import load_bundle

    try:
        bundle = load_bundle(bundle_dir)
    except RanetServeError as exc:
        raise _fail(str(exc)) from exc
    spec = bundle.manifest.input
    generator = torch.Generator().manual_seed(seed)
    batches = {"random": torch.randn(batch, spec.channels, spec.size, spec.size, generator=generator)}
    if dataset is None and spec.channels == 1 and spec.size == 28:
        dataset = "fashion-mnist"
    if dataset is not None:
        batches["real"] = _real_batch(dataset, data_dir, batch)
    limit = TOLERANCE if tolerance is None else tolerance
    results = verify_bundle(bundle, batches, tolerance=limit)
    console.print(table_of(results))
    console.print(f"rule: {RULE}; an exit passes at rel diff <= {limit:.1e}")
    failed = [r for r in results if not r.ok]
    if failed:
        worst = max(failed, key=lambda r: r.relative_diff)
        raise _fail(
            f"{len(failed)} of {len(results)} exit checks differ from PyTorch by more than {limit:.1e} of "
            f"the logits' scale (worst: {worst.backend} exit {worst.exit} on {worst.inputs} inputs, "
            f"{worst.relative_diff:.2e})"
        )
    console.print(
        f"bundle {bundle.manifest.name}/{bundle.manifest.version} verified: checksums and parity ok"
    )


def table_of(results: list[ExitParity]) -> Table:
    """One row per backend, batch and exit: the absolute and relative difference and the scale."""
    table = Table("backend", "inputs", "exit", "max |diff|", "scale", "rel diff", "ok")
    for r in results:
        table.add_row(
            r.backend,
            r.inputs,
            str(r.exit),
            f"{r.max_abs_diff:.2e}",
            f"{r.scale:.2e}",
            f"{r.relative_diff:.2e}",
            "yes" if r.ok else "[red]NO[/red]",
        )
    return table


def _real_batch(dataset: str, data_dir: Path | None, size: int) -> Tensor:
    import numpy as np
    import torch

    from ranet_serve.data.datasets import load_cifar, load_fashion_mnist
    from ranet_serve.data.transforms import normalize

    if dataset == "fashion-mnist":
        data = load_fashion_mnist("test")
    elif dataset in ("cifar10", "cifar100") and data_dir is not None:
        data = load_cifar(data_dir, "test", 100 if dataset == "cifar100" else 10)
    else:
        raise _fail(f"cannot load real images for {dataset!r} (CIFAR needs --data-dir)")
    picked = data.subset(np.arange(size))
    return normalize(torch.from_numpy(picked.images), picked.mean, picked.std)


def inspect_command(bundle_dir: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Human-readable summary: exits, FLOPs, accuracy, operating points, files."""
    from ranet_serve.errors import RanetServeError
    from ranet_serve.export.bundle import load_bundle

    try:
        bundle = load_bundle(bundle_dir)
    except RanetServeError as exc:
        raise _fail(str(exc)) from exc
    m = bundle.manifest
    console.print(
        f"[bold]{m.name}[/bold] version {m.version}  config {m.config.name}  "
        f"{m.config.num_classes} classes  input {m.input.channels}x{m.input.size}x{m.input.size} "
        f"({m.input.color_mode})"
    )
    table = Table(
        "exit", "stage MFLOPs", "cumulative MFLOPs", "val acc %", "test acc %", "state out (KB/img)"
    )
    for stage, exit_ in zip(m.stages, m.exits, strict=True):
        state_kb = sum(m.tensor(n).bytes_per_image for n in stage.outputs[1:]) / 1024
        table.add_row(
            str(exit_.index),
            f"{stage.flops / 1e6:.3f}",
            f"{exit_.cumulative_flops / 1e6:.3f}",
            _pct(exit_.val_accuracy),
            _pct(exit_.test_accuracy),
            f"{state_kb:.1f}",
        )
    console.print(table)
    if m.calibration is not None:
        points = Table("point", "method", "MFLOPs/img", "val acc %", "test acc %", "thresholds")
        for p in m.calibration.points:
            marker = " (default)" if p.name == m.calibration.default_point else ""
            points.add_row(
                p.name + marker,
                p.method,
                f"{p.expected_flops / 1e6:.3f}",
                _pct(p.val_accuracy),
                _pct(p.test_accuracy),
                " ".join(f"{t:.3f}" for t in p.thresholds),
            )
        console.print(points)
    else:
        console.print("not calibrated (run `ranet calibrate`)")
    files = Table("file", "bytes", "sha256")
    for relative, digest in m.files.items():
        files.add_row(relative, f"{bundle.file(relative).stat().st_size:,}", digest[:16])
    console.print(files)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
