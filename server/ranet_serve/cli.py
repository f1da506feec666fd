"""`ranet` command line. Commands are thin: parse options, call the owning package, print.

Each command group lives in `ranet_serve.commands.<group>`; heavy imports (torch, onnxruntime) happen
inside the commands so `ranet --help` stays instant.
"""

from __future__ import annotations

import typer

from ranet_serve.commands import bundle, evaluate, model, serve, train
from ranet_serve.commands.failures import RanetCommands

app = typer.Typer(
    cls=RanetCommands,
    help="RANet Serve: train, export, calibrate and serve early-exit RANet models.",
    no_args_is_help=True,
)
for group in (model, train, bundle, evaluate, serve):
    group.register(app)


if __name__ == "__main__":
    app()
