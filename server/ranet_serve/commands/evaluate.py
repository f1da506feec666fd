"""`ranet evaluate|calibrate|model-card`: the paper's protocols, operating points, the model card."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ranet_serve.export.bundle import Bundle
    from ranet_serve.train.protocols import ProtocolResults

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
    app.command("calibrate")(calibrate_command)
    app.command("model-card")(model_card_command)


DatasetOption = Annotated[str, typer.Option(help="fashion-mnist | cifar10 | cifar100 | folder")]


def _protocols(
    bundle_dir: Path,
    dataset: str,
    data_dir: Path | None,
    val_size: int,
    seed: int,
    train_checkpoint: Path | None,
) -> tuple[Bundle, ProtocolResults]:
    """Both protocols on the bundle; prints the summary; a user-facing failure exits 1."""
    from ranet_serve.errors import RanetServeError

    try:
        bundle, results = _compute_protocols(bundle_dir, dataset, data_dir, val_size, seed, train_checkpoint)
    except (RanetServeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    _print_summary(results)
    return bundle, results


def _compute_protocols(
    bundle_dir: Path,
    dataset: str,
    data_dir: Path | None,
    val_size: int,
    seed: int,
    train_checkpoint: Path | None,
) -> tuple[Bundle, ProtocolResults]:
    import numpy as np

    from ranet_serve.data.sources import load_splits
    from ranet_serve.export.bundle import load_bundle
    from ranet_serve.model.checkpoint import read_checkpoint
    from ranet_serve.train.bundle_eval import bundle_probabilities
    from ranet_serve.train.protocols import run_protocols

    bundle = load_bundle(bundle_dir)
    config = bundle.manifest.config
    splits = load_splits(
        dataset,
        val_size=val_size,
        seed=seed,
        data_dir=data_dir,
        image_size=config.image_size,
        channels=config.in_channels,
    )
    if train_checkpoint is not None:
        recorded = read_checkpoint(train_checkpoint).get("val_indices")
        if recorded is None or not np.array_equal(np.asarray(recorded), splits.val_indices):
            raise ValueError(
                f"the validation split (size {val_size}, seed {seed}) differs from the one "
                f"{train_checkpoint} "
                "was trained with: thresholds would be fitted on training images"
            )
    console.print(
        f"computing exit probabilities: {len(splits.val)} validation, {len(splits.test)} test images"
    )
    val_probs = bundle_probabilities(bundle, splits.val)
    test_probs = bundle_probabilities(bundle, splits.test)
    split = f"{dataset} training set, {val_size} held out with seed {seed}"
    console.print("searching thresholds (geometric prior and optimized, 39 budgets each)")
    results = run_protocols(
        val_probs, splits.val.labels, test_probs, splits.test.labels, bundle.manifest.cumulative_flops, split
    )
    return bundle, results


def _print_summary(results: ProtocolResults) -> None:
    table = Table("exit", "cumulative MFLOPs", "val acc %", "test acc %")
    for k, (f, v, t) in enumerate(
        zip(results.cumulative_flops, results.val_accuracy, results.test_accuracy, strict=True)
    ):
        table.add_row(str(k), f"{f / 1e6:.3f}", f"{v:.2f}", f"{t:.2f}")
    console.print(table)
    curves = Table(
        "budget (val MFLOPs)", "geometric test acc %", "optimized test acc %", "test MFLOPs geo / opt"
    )
    for g, o in zip(results.geometric, results.optimized, strict=True):
        curves.add_row(
            f"{g.expected_flops / 1e6:.3f}",
            f"{g.test_accuracy:.2f}",
            f"{o.test_accuracy:.2f}",
            f"{(g.test_expected_flops or 0) / 1e6:.3f} / {(o.test_expected_flops or 0) / 1e6:.3f}",
        )
    console.print(curves)
    d = results.default
    console.print(
        f"default operating point {d.name}: {d.expected_flops / 1e6:.3f} MFLOPs/img "
        f"({100 * d.expected_flops / results.cumulative_flops[-1]:.1f}% of the last exit), "
        f"val {d.val_accuracy:.2f}% test {d.test_accuracy:.2f}% "
        f"(last exit val {results.val_accuracy[-1]:.2f}% test {results.test_accuracy[-1]:.2f}%)"
    )


def evaluate_command(
    bundle_dir: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path, typer.Option(help="directory for evaluation.json and plots")] = Path(
        "runs/evaluation"
    ),
    dataset: DatasetOption = "fashion-mnist",
    data_dir: Annotated[Path | None, typer.Option()] = None,
    val_size: Annotated[int, typer.Option(help="held-out validation images (as in training)")] = 5000,
    seed: Annotated[int, typer.Option(help="seed of the validation split (as in training)")] = 0,
    train_checkpoint: Annotated[Path | None, typer.Option(help="check the split against this run")] = None,
) -> None:
    """Anytime prediction and budgeted batch classification (both threshold searches); JSON + PNG."""
    from ranet_serve.train.protocols import write_results

    out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after the evaluation
    bundle, results = _protocols(bundle_dir, dataset, data_dir, val_size, seed, train_checkpoint)
    for path in write_results(results, out, f"{bundle.manifest.name}/{bundle.manifest.version}"):
        console.print(f"wrote {path}")


def calibrate_command(
    bundle_dir: Annotated[Path, typer.Argument(help="bundle directory (updated in place)")],
    dataset: DatasetOption = "fashion-mnist",
    data_dir: Annotated[Path | None, typer.Option()] = None,
    val_size: Annotated[int, typer.Option(help="held-out validation images (as in training)")] = 5000,
    seed: Annotated[int, typer.Option(help="seed of the validation split (as in training)")] = 0,
    train_checkpoint: Annotated[Path | None, typer.Option(help="check the split against this run")] = None,
) -> None:
    """Fit operating points on the validation split and store them (and per-exit accuracy) in the bundle."""
    from ranet_serve.export.bundle import write_manifest
    from ranet_serve.train.protocols import write_results

    bundle, results = _protocols(bundle_dir, dataset, data_dir, val_size, seed, train_checkpoint)
    write_results(results, bundle_dir / "evaluation", f"{bundle.manifest.name}/{bundle.manifest.version}")
    manifest = bundle.manifest
    exits = tuple(
        e.model_copy(
            update={
                "val_accuracy": results.val_accuracy[e.index],
                "test_accuracy": results.test_accuracy[e.index],
            }
        )
        for e in manifest.exits
    )
    write_manifest(
        bundle_dir, manifest.model_copy(update={"exits": exits, "calibration": results.calibration()})
    )
    console.print(
        f"calibrated {bundle_dir}: {len(results.calibration().points)} operating points, "
        f"default {results.default.name}"
    )


def model_card_command(
    bundle_dir: Annotated[Path, typer.Argument(help="bundle directory")],
    train_checkpoint: Annotated[
        Path | None, typer.Option(help="training checkpoint (recipe, history)")
    ] = None,
    command: Annotated[
        list[str] | None, typer.Option(help="a command that produced the bundle (repeat)")
    ] = None,
) -> None:
    """Write MODEL_CARD.md into the bundle from its manifest and the training checkpoint."""
    from ranet_serve.export.bundle import load_bundle, write_manifest
    from ranet_serve.model.checkpoint import read_checkpoint
    from ranet_serve.train.model_card import render_model_card

    bundle = load_bundle(bundle_dir)
    training = None
    if train_checkpoint is not None:
        raw = read_checkpoint(train_checkpoint)
        training = {k: raw.get(k) for k in ("recipe", "history", "epoch")}
    plots = [p.relative_to(bundle_dir).as_posix() for p in sorted((bundle_dir / "evaluation").glob("*.png"))]
    text = render_model_card(bundle.manifest, commands=command or [], training=training, plots=plots)
    (bundle_dir / "MODEL_CARD.md").write_text(text)
    write_manifest(bundle_dir, bundle.manifest)  # the card is a bundle file: refresh checksums
    console.print(f"wrote {bundle_dir / 'MODEL_CARD.md'}")
