"""`ranet-client`: classify images, list models, check health, and generate bounded load.

Commands are thin: parse options, make one client call, print a table (or JSON with --json). Any
`RanetError` becomes one red line on stderr and exit code 1, so scripts can branch on the exit code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ranet_client import __version__
from ranet_client._protocol import DEFAULT_URL, ENCODINGS, Encoding
from ranet_client.budget import ON_DEADLINE
from ranet_client.client import RanetClient
from ranet_client.errors import RanetError
from ranet_client.image_sets import Sample, bundled_samples, folder_samples
from ranet_client.load import (
    MAX_DURATION_S,
    LoadConfig,
    RequestRecord,
    parse_budget_mix,
    run_load_sync,
)
from ranet_client.render import classify_table, model_tables, models_table, print_load_report
from ranet_client.results import ClassifyResponse, ExitEvent
from ranet_client.targets import PLAIN_BODIES

app = typer.Typer(
    name="ranet-client",
    help="Client of RANet Serve: classify images with compute budgets, inspect models, run bounded load.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

UrlOption = Annotated[
    str, typer.Option("--url", "-u", envvar="RANET_URL", help="Server base URL.", show_default=True)
]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds per attempt.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ranet-client {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Client of RANet Serve."""


@contextmanager
def _errors() -> Iterator[None]:
    """Print client errors readably (no traceback) and exit 1."""
    try:
        yield
    except RanetError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    except (OSError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output file that cannot be written before the run, not after it (the run is lost)."""
    folder = path.parent
    if not folder.is_dir():
        raise typer.BadParameter(f"folder {str(folder)!r} does not exist", param_hint=option)
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise typer.BadParameter(f"{str(path)!r} is not writable", param_hint=option)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _check_encoding(value: str) -> Encoding:
    if value not in ENCODINGS:
        raise typer.BadParameter(f"use one of {', '.join(ENCODINGS)}")
    return value  # type: ignore[return-value]


@app.command()
def classify(
    images: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="Image files.")
    ],
    url: UrlOption = DEFAULT_URL,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name (default: server's).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Model version (default: latest).")] = None,
    max_flops: Annotated[
        str | None, typer.Option("--max-flops", help="Hard cap per image, e.g. 20M or 1.5G.")
    ] = None,
    target_flops: Annotated[
        str | None, typer.Option("--target-flops", help="Average budget: picks an operating point.")
    ] = None,
    confidence: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="One exit threshold for every exit.")
    ] = None,
    thresholds: Annotated[str | None, typer.Option(help="Per-exit thresholds, comma-separated.")] = None,
    operating_point: Annotated[
        str | None, typer.Option("--operating-point", help="Calibrated operating point by name.")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Classes per image.")] = None,
    deadline_ms: Annotated[float | None, typer.Option("--deadline-ms", help="Server-side deadline.")] = None,
    on_deadline: Annotated[
        str | None,
        typer.Option(
            "--on-deadline", help="When --deadline-ms passes: error (504) or best (the deepest exit so far)."
        ),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Print every exit's answer as it arrives (Server-Sent Events).")
    ] = False,
    batch: Annotated[int, typer.Option(min=1, max=256, help="Images per request.")] = 16,
    encoding: Annotated[str, typer.Option(help="multipart, json or raw.")] = "multipart",
    timeout: TimeoutOption = 30.0,
    retries: Annotated[int, typer.Option(min=1, help="Attempts per request (429/503 are retried).")] = 4,
    as_json: JsonFlag = False,
) -> None:
    """Classify images; prints label, confidence, exit, MFLOPs and whether the budget cut it short.

    With --stream, one line per exit each image passes, as the server computes it (the last one of an
    image, marked final, is its answer), then the operating point and server time of each request.
    """
    wire = _check_encoding(encoding)
    if on_deadline is not None and on_deadline not in ON_DEADLINE:
        raise typer.BadParameter(f"use one of {', '.join(ON_DEADLINE)}", param_hint="--on-deadline")
    if wire == "raw":
        batch = 1
    knobs: dict[str, Any] = {
        "version": version,
        "max_flops": max_flops,
        "target_flops": target_flops,
        "confidence": confidence,
        "thresholds": thresholds,
        "operating_point": operating_point,
        "top_k": top_k,
        "deadline_ms": deadline_ms,
        "on_deadline": on_deadline,
    }
    responses: list[ClassifyResponse] = []
    with _errors(), RanetClient(url, model=model, timeout=timeout, retry=retries, encoding=wire) as client:
        for start in range(0, len(images), batch):
            chunk = list(images[start : start + batch])
            if stream:
                _print_stream(client, chunk, knobs, as_json)
            else:
                responses.append(client.classify(chunk, **knobs))
    if stream:
        return
    names = [str(path) for path in images]
    if as_json:
        first = responses[0].raw
        results = [result for response in responses for result in response.raw["results"]]
        _print_json(
            {
                "model": first["model"],
                "version": first["version"],
                "operating_point": first["operating_point"],
                "results": [{"image": name, **result} for name, result in zip(names, results, strict=True)],
                "timings": [response.raw.get("timings") for response in responses],
            }
        )
        return
    Console().print(classify_table([path.name for path in images], responses))


def _print_stream(client: RanetClient, paths: list[Path], knobs: dict[str, Any], as_json: bool) -> None:
    """One request's events as they arrive: a line per exit (JSON lines with --json), then its summary."""
    with client.classify_stream(paths, **knobs) as events:
        for item in events:
            if isinstance(item, ExitEvent):
                name = str(paths[item.image])
                if as_json:
                    typer.echo(json.dumps({"event": "exit", **item.raw, "image": name}))
                else:
                    typer.echo(
                        f"{name}  exit {item.exit}  {item.label}  {item.confidence:.3f}  "
                        f"{item.mflops:.2f} MFLOPs"
                        + ("  final" if item.final else "")
                        + ("  budget-limited" if item.final and item.budget_limited else "")
                        + ("  deadline-limited" if item.final and item.deadline_limited else "")
                    )
            elif as_json:
                done = {k: v for k, v in item.raw.items() if k != "results"}
                typer.echo(json.dumps({"event": "done", **done}))
            else:
                typer.echo(
                    f"done: {item.model} v{item.version} ({item.operating_point}), "
                    f"server time {item.timings.total_ms:.1f} ms"
                )


@app.command()
def models(
    name: Annotated[str | None, typer.Argument(help="Show one model's exits and operating points.")] = None,
    url: UrlOption = DEFAULT_URL,
    timeout: TimeoutOption = 10.0,
    as_json: JsonFlag = False,
) -> None:
    """List the server's models, or one model's exits and operating points."""
    with _errors(), RanetClient(url, timeout=timeout) as client:
        if name is None:
            catalogue = client.models()
            if as_json:
                _print_json(catalogue.raw)
            else:
                Console().print(models_table(catalogue))
            return
        info = client.model(name)
    if as_json:
        _print_json(info.raw)
        return
    console = Console()
    for table in model_tables(info):
        console.print(table)


@app.command()
def health(
    url: UrlOption = DEFAULT_URL,
    timeout: TimeoutOption = 5.0,
    as_json: JsonFlag = False,
) -> None:
    """Liveness and readiness; exit code 0 only when the server is ready."""
    with _errors(), RanetClient(url, timeout=timeout) as client:
        live = client.health()
        ready = client.ready()
    if as_json:
        _print_json(
            {
                "live": live.live,
                "ready": ready.ready,
                "status": ready.status,
                "models": {k: list(v) for k, v in ready.models.items()},
            }
        )
    else:
        serving = ", ".join(f"{m} ({', '.join(v)})" for m, v in ready.models.items()) or "none"
        colour = "green" if ready.ready else "yellow"
        live_text = "yes" if live.live else "no"
        ready_text = f"[{colour}]{'yes' if ready.ready else 'no'}[/{colour}]"
        Console().print(
            f"live: {live_text}  ready: {ready_text} ({ready.status})  serving: {serving}", highlight=False
        )
    if not ready.ready:
        raise typer.Exit(1)


@app.command()
def load(
    url: UrlOption = DEFAULT_URL,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name (default: server's).")
    ] = None,
    requests: Annotated[
        int | None, typer.Option("--requests", "-n", min=1, help="Stop after this many requests.")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            "-d",
            min=0.001,
            help=f"Stop after this many seconds (capped at {MAX_DURATION_S:g}).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Closed loop: concurrent clients [4].")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", "-r", min=0.001, help="Open loop: requests per second.")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", file_okay=False, exists=True, help="Folder of images (+ optional labels.json)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="Images per request.")] = 1,
    budget_mix: Annotated[
        str | None,
        typer.Option(
            "--budget-mix",
            help='Weighted budgets, e.g. "none:0.5,max_flops=20M:0.3,target_flops=15M:0.2"; '
            'join knobs with "&", per-exit thresholds with "/".',
        ),
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1)] = None,
    max_inflight: Annotated[
        int, typer.Option("--max-inflight", min=1, help="Open loop: pending requests before dropping.")
    ] = 256,
    encoding: Annotated[str, typer.Option(help="multipart, json or raw.")] = "multipart",
    timeout: TimeoutOption = 30.0,
    retries: Annotated[
        int, typer.Option(min=1, help="Attempts per request (1: count 429s, do not retry).")
    ] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the budget draw.")] = 0,
    plain: Annotated[
        str | None,
        typer.Option(
            "--plain",
            help="Drive a plain classifier instead of RANet Serve: POST one image per request to this "
            'path (e.g. /predictions/NAME for TorchServe), read "class_index"/"label" from its JSON.',
        ),
    ] = None,
    plain_body: Annotated[
        str, typer.Option(help="With --plain: the image as the raw body, or multipart field 'file'.")
    ] = "raw",
    json_out: Annotated[
        Path | None, typer.Option("--json-out", dir_okay=False, help="Write the report as JSON.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send bounded load and report throughput, latency, exits, FLOPs, accuracy and errors.

    Stops after --requests or --duration, whichever comes first (100 requests by default, 600 s at most).

    Accuracy needs true labels: the bundled samples have them; an --images folder may add labels.json.
    """
    if rate is not None and concurrency is not None:
        raise typer.BadParameter("give --concurrency (closed loop) or --rate (open loop), not both")
    wire = _check_encoding(encoding)
    if plain_body not in PLAIN_BODIES:
        raise typer.BadParameter(f"use one of {', '.join(PLAIN_BODIES)}", param_hint="--plain-body")
    if wire == "raw" and batch != 1:
        raise typer.BadParameter("the raw encoding sends one image per request; use --batch 1")
    try:
        mix = parse_budget_mix(budget_mix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget-mix") from exc
    if json_out is not None:
        _check_writable(json_out, "--json-out")
    samples: list[Sample]
    with _errors():
        samples = folder_samples(images) if images is not None else bundled_samples()
        config = LoadConfig(
            url=url,
            model=model,
            requests=requests,
            duration=duration,
            concurrency=concurrency or 4,
            rate=rate,
            batch=batch,
            mix=mix,
            top_k=top_k,
            timeout=timeout,
            retries=retries,
            encoding=wire,
            seed=seed,
            max_inflight=max_inflight,
            plain_path=plain,
            plain_body="multipart" if plain_body == "multipart" else "raw",
        ).validated()
        console = Console(stderr=as_json)
        done = 0
        with console.status(f"{config.mode} load against {url} ...") as status:

            def progress(record: RequestRecord) -> None:
                nonlocal done
                done += 1
                if done % 10 == 0:
                    status.update(f"{config.mode} load against {url}: {done} requests")

            report = run_load_sync(config, samples, on_request=progress)
    data = report.to_dict()
    if json_out is not None:
        json_out.write_text(json.dumps(data, indent=2) + "\n")
    if as_json:
        _print_json(data)
    else:
        print_load_report(report, console)
        if json_out is not None:
            console.print(f"report written to {json_out}")
    if report.requests_sent and not report.requests_ok:
        Console(stderr=True).print("[red]error:[/red] no request succeeded", markup=True, highlight=False)
        raise typer.Exit(1)
