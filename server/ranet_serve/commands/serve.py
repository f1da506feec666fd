"""`ranet serve`: serve the bundles of a model store over HTTP (v1 and KServe v2) and gRPC (KServe v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperOption

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("serve", cls=ServeCommand)(serve_command)


class ServeCommand(TyperCommand):
    """`ranet serve` whose help ends with every setting: variable, default, option and description.

    The list is made from the `Settings` model when help is shown, so it cannot drift from the code,
    and `ranet --help` does not import the settings to build it.
    """

    # Typer passes its own (vendored) click's context and formatter: typed loosely to match any version.
    def format_help(self, ctx: Any, formatter: Any) -> None:
        if self.epilog is None:
            from ranet_serve.settings_doc import settings_epilog

            # An option overrides the setting of its name; a `--<setting>-file` option reads it from a file.
            options = {
                str(param.name).removesuffix("_file"): " / ".join([*param.opts, *param.secondary_opts])
                for param in self.params
                if isinstance(param, TyperOption)
            }
            epilog = settings_epilog(options)
            self.epilog = escape(epilog) if self.rich_markup_mode == "rich" else epilog
        super().format_help(ctx, formatter)


def serve_command(
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8080)")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="port of the KServe v2 gRPC API (default 8081; 0: no gRPC)")
    ] = None,
    model_store: Annotated[Path | None, typer.Option(help="directory of <name>/<version>/ bundles")] = None,
    default_model: Annotated[
        str | None,
        typer.Option(help="model POST /v1/classify serves (default ranet-fmnist, or the store's only model)"),
    ] = None,
    frontends: Annotated[
        int | None,
        typer.Option(
            help="front-end processes sharing the port (default: the CPUs the engine does not take)"
        ),
    ] = None,
    engine_process: Annotated[
        bool | None,
        typer.Option(
            "--engine-process/--one-process",
            help="engine in its own process (default), or everything in one process",
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(help="onnxruntime | torchscript | eager")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    threads: Annotated[
        int | None, typer.Option(help="intra-op threads per runtime (0: a quarter of the CPUs, at least 1)")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="images per batch")] = None,
    max_queue_delay_ms: Annotated[float | None, typer.Option(help="how long a batch waits to fill")] = None,
    max_queue_size: Annotated[int | None, typer.Option(help="queued requests per model before 429")] = None,
    default_operating_point: Annotated[str | None, typer.Option(help="operating point without knobs")] = None,
    log_level: Annotated[str | None, typer.Option(help="critical | error | warning | info | debug")] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="file holding the bearer token inference needs (RANET_API_KEY; default: none)"),
    ] = None,
    admin_api_key_file: Annotated[
        Path | None,
        typer.Option(help="file holding the token /v1/admin needs (RANET_ADMIN_API_KEY; default: api key)"),
    ] = None,
) -> None:
    """Serve model_store/ (settings from RANET_* variables; options override them)."""
    options = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "model_store": model_store,
        "default_model": default_model,
        "frontends": frontends,
        "engine_process": engine_process,
        "backend": backend,
        "device": device,
        "threads": threads,
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "max_queue_size": max_queue_size,
        "default_operating_point": default_operating_point,
        "log_level": log_level,
    }
    from pydantic import ValidationError

    from ranet_serve.api.server import find_bundles, serve
    from ranet_serve.settings import Settings

    overrides: dict[str, Any] = {key: value for key, value in options.items() if value is not None}
    # Keys come from files (a mounted secret), never from the command line, where `ps` would show them.
    for key, path in (("api_key", api_key_file), ("admin_api_key", admin_api_key_file)):
        if path is not None:
            overrides[key] = _read_key(path, f"--{key.replace('_', '-')}-file")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        console.print(f"[red]error:[/red] {escape(_setting_source(first['loc'], overrides))}: {first['msg']}")
        raise typer.Exit(2) from exc
    bundles = find_bundles(settings)
    if not bundles:
        console.print(
            f"[red]error:[/red] no bundles in {settings.model_store.resolve()} (expected "
            "<model_store>/<name>/<version>/manifest.json). Export one with `ranet export`, or point "
            "--model-store (RANET_MODEL_STORE) at a store."
        )
        raise typer.Exit(1)
    grpc = f" and gRPC {settings.host}:{settings.grpc_port}" if settings.grpc_port else ""
    console.print(
        f"serving {', '.join(bundles)} from {settings.model_store} on http://{settings.host}:{settings.port}"
        f"{grpc} ({settings.backend}, device {settings.device})"
    )
    if settings.api_key is not None or settings.admin_api_key is not None:
        guarded = "inference and admin" if settings.api_key is not None else "admin"
        console.print(f"API key required for {guarded} routes (health, readiness and /metrics stay open)")
    serve(settings)


def _read_key(path: Path, option: str) -> str:
    """The first line of a key file, stripped; exit 2 (usage error) when unreadable or blank.

    The message names the file, never its content.
    """
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        console.print(f"[red]error:[/red] {option}: cannot read {path} ({type(exc).__name__})")
        raise typer.Exit(2) from exc
    key = lines[0].strip() if lines else ""
    if not key:
        console.print(f"[red]error:[/red] {option}: {path} is empty")
        raise typer.Exit(2)
    return key


def _setting_source(location: tuple[int | str, ...], overrides: dict[str, Any]) -> str:
    """Where the invalid value came from: the option given, else the `RANET_*` variable (a setting
    without an option, or an option not given); a check across settings names no single one."""
    if not location:
        return "settings"
    name = str(location[0])
    if name in ("api_key", "admin_api_key") and name in overrides:
        return f"--{name.replace('_', '-')}-file"
    if name in overrides:
        return f"--{name.replace('_', '-')}"
    return f"RANET_{name.upper()}"
