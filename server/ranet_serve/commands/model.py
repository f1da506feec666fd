"""`ranet configs|flops|import`: inspect configs and bring in official checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("configs")(configs_command)
    app.command("flops")(flops_command)
    app.command("import")(import_command)


def configs_command() -> None:
    """List the registered RANet configs with their exits and FLOPs."""
    from ranet_serve.model.flops import count_exit_costs
    from ranet_serve.model.ranet import RANet
    from ranet_serve.model.registry import get_config, list_configs

    table = Table("config", "family", "classes", "exits", "last-exit MFLOPs", "params M")
    for name in list_configs():
        config = get_config(name)
        costs = count_exit_costs(RANet(config))
        table.add_row(
            name,
            config.family,
            str(config.num_classes),
            str(config.num_exits),
            f"{costs[-1].flops / 1e6:.3f}",
            f"{costs[-1].params / 1e6:.3f}",
        )
    console.print(table)


def flops_command(
    config: Annotated[str, typer.Argument(help="config name or JSON file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-exit cumulative FLOPs and parameters (official counter semantics)."""
    from ranet_serve.model.config import load_config
    from ranet_serve.model.flops import count_exit_costs
    from ranet_serve.model.ranet import RANet

    try:
        costs = count_exit_costs(RANet(load_config(config)))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(
            json.dumps([{"exit": i, "flops": c.flops, "params": c.params} for i, c in enumerate(costs)])
        )
        return
    table = Table("exit", "cumulative FLOPs", "stage FLOPs", "params")
    previous = 0
    for i, cost in enumerate(costs):
        table.add_row(str(i), f"{cost.flops:,}", f"{cost.flops - previous:,}", f"{cost.params:,}")
        previous = cost.flops
    console.print(table)


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
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    save_checkpoint(out, model, source=str(checkpoint))
    console.print(f"imported {checkpoint} as {model.config.name} ({model.num_exits} exits) -> {out}")
