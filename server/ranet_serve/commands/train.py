"""`ranet train`: the paper's training recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    out: Annotated[Path, typer.Option(help="run directory for checkpoints")] = Path("runs/fmnist-default"),
    preset: Annotated[str, typer.Option(help="fmnist-default | cifar | imagenet")] = "fmnist-default",
    config: Annotated[str | None, typer.Option(help="override the preset's config")] = None,
    dataset: Annotated[str | None, typer.Option(help="fashion-mnist | cifar10 | cifar100 | folder")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="dataset directory (CIFAR, ImageFolder)")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    schedule: Annotated[str | None, typer.Option(help="multistep | cosine")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    max_train_images: Annotated[int | None, typer.Option(help="train on a prefix only (smoke runs)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.pt")] = False,
) -> None:
    """Train a RANet with the paper's recipe (sum of per-exit cross-entropy, SGD)."""
    from ranet_serve.train.loop import train
    from ranet_serve.train.recipe import recipe_from_preset

    recipe = recipe_from_preset(
        preset,
        config=config,
        dataset=dataset,
        data_dir=data_dir,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule=schedule,
        seed=seed,
        threads=threads,
        device=device,
        max_train_images=max_train_images,
    )
    console.print(f"training {recipe.config} on {recipe.dataset} for {recipe.epochs} epochs -> {out}")

    def report(record: dict[str, object]) -> None:
        accs = " ".join(f"{a:.2f}" for a in record["val_acc"])  # type: ignore[attr-defined]
        console.print(
            f"epoch {int(record['epoch']) + 1}: loss {record['train_loss']:.4f} "  # type: ignore[call-overload]
            f"val acc/exit {accs} ({record['seconds']:.0f}s)"
        )

    result = train(recipe, out, resume=resume, on_epoch=report)
    console.print(f"done: {result.checkpoint}, best {result.best_checkpoint}")
