"""`ranet` command line. Commands are thin: parse options, call the owning package, print.

Heavy imports (torch, onnxruntime) happen inside the commands so `ranet --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="RANet Serve: train, export, calibrate and serve early-exit RANet models.",
                  no_args_is_help=True)
console = Console()


@app.command("configs")
def configs_command() -> None:
    """List the registered RANet configs with their exits and FLOPs."""
    from ranet_serve.model.flops import count_exit_costs
    from ranet_serve.model.ranet import RANet
    from ranet_serve.model.registry import get_config, list_configs

    table = Table("config", "family", "classes", "exits", "last-exit MFLOPs", "params M")
    for name in list_configs():
        config = get_config(name)
        costs = count_exit_costs(RANet(config))
        table.add_row(name, config.family, str(config.num_classes), str(config.num_exits),
                      f"{costs[-1].flops / 1e6:.3f}", f"{costs[-1].params / 1e6:.3f}")
    console.print(table)


@app.command("flops")
def flops_command(
    config: Annotated[str, typer.Argument(help="config name or JSON file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-exit cumulative FLOPs and parameters (official counter semantics)."""
    from ranet_serve.model.config import load_config
    from ranet_serve.model.flops import count_exit_costs
    from ranet_serve.model.ranet import RANet

    costs = count_exit_costs(RANet(load_config(config)))
    if as_json:
        typer.echo(json.dumps([{"exit": i, "flops": c.flops, "params": c.params} for i, c in enumerate(costs)]))
        return
    table = Table("exit", "cumulative FLOPs", "stage FLOPs", "params")
    previous = 0
    for i, cost in enumerate(costs):
        table.add_row(str(i), f"{cost.flops:,}", f"{cost.flops - previous:,}", f"{cost.params:,}")
        previous = cost.flops
    console.print(table)


@app.command("import")
def import_command(
    checkpoint: Annotated[Path, typer.Argument(help="official RANet checkpoint (.pth.tar) or state_dict")],
    config: Annotated[str, typer.Option(help="config name or JSON file the checkpoint was trained with")],
    out: Annotated[Path, typer.Option(help="where to write this project's checkpoint")],
) -> None:
    """Convert an official RANet checkpoint into this project's checkpoint format."""
    from ranet_serve.model.checkpoint import CheckpointError, load_model, save_checkpoint
    from ranet_serve.model.config import load_config

    try:
        model = load_model(checkpoint, load_config(config))
    except (CheckpointError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    save_checkpoint(out, model, source=str(checkpoint))
    console.print(f"imported {checkpoint} as {model.config.name} ({model.num_exits} exits) -> {out}")


@app.command("train")
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
        preset, config=config, dataset=dataset, data_dir=data_dir, epochs=epochs, batch_size=batch_size,
        lr=lr, schedule=schedule, seed=seed, threads=threads, device=device, max_train_images=max_train_images,
    )
    console.print(f"training {recipe.config} on {recipe.dataset} for {recipe.epochs} epochs -> {out}")

    def report(record: dict[str, object]) -> None:
        accs = " ".join(f"{a:.2f}" for a in record["val_acc"])  # type: ignore[attr-defined]
        console.print(f"epoch {int(record['epoch']) + 1}: loss {record['train_loss']:.4f} "  # type: ignore[call-overload]
                      f"val acc/exit {accs} ({record['seconds']:.0f}s)")

    result = train(recipe, out, resume=resume, on_epoch=report)
    console.print(f"done: {result.checkpoint}, best {result.best_checkpoint}")


if __name__ == "__main__":
    app()
