"""Rich tables for the CLI: classify results, the model catalogue, and load reports.

Kept apart from the commands so other tools (benchmarks, notebooks) can print the same tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ranet_client.load import LoadReport
from ranet_client.results import ClassifyResponse, ModelInfo, ModelList


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    """A fraction (0-1) as a percentage."""
    return "-" if value is None else f"{100 * value:.1f}%"


def _percent_points(value: float | None) -> str:
    """A value already in percent (the server's model accuracies, 0-100)."""
    return "-" if value is None else f"{value:.2f}%"


def _mflops(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def classify_table(names: Sequence[str], responses: Sequence[ClassifyResponse]) -> Table:
    """One row per image: image, label, confidence, exit, MFLOPs, budget-limited."""
    first = responses[0]
    total_ms = sum(r.timings.total_ms for r in responses)
    table = Table(
        title=f"{first.model} v{first.version} ({first.operating_point})",
        caption=f"server time {total_ms:.1f} ms over {len(responses)} request(s)",
    )
    table.add_column("image", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column("exit", justify="right")
    table.add_column("MFLOPs", justify="right")
    table.add_column("budget-limited", justify="center")
    results = [result for response in responses for result in response.results]
    for name, result in zip(names, results, strict=True):
        table.add_row(
            name,
            result.label,
            f"{result.confidence:.3f}",
            str(result.exit),
            f"{result.mflops:.2f}",
            "yes" if result.budget_limited else "no",
        )
    return table


def models_table(models: ModelList) -> Table:
    """One row per model version: state, config, exits, cost range, default operating point."""
    table = Table(title="models")
    for column in (
        "model",
        "version",
        "state",
        "config",
        "exits",
        "MFLOPs (first..last exit)",
        "default point",
    ):
        table.add_column(column)
    for model in models.models:
        for entry in model.versions:
            marks = []
            if model.name == models.default_model:
                marks.append("default model")
            if entry.version == model.default_version:
                marks.append("latest")
            flops = (
                f"{_mflops(entry.exits[0].cumulative_flops)}..{_mflops(entry.exits[-1].cumulative_flops)}"
                if entry.exits
                else "-"
            )
            table.add_row(
                model.name + (f" ({', '.join(marks)})" if marks else ""),
                entry.version,
                entry.state if entry.ready else f"failed: {entry.error or ''}",
                entry.config or "-",
                str(len(entry.exits)) if entry.exits else "-",
                flops,
                entry.default_operating_point or "-",
            )
    return table


def model_tables(model: ModelInfo) -> list[Table]:
    """For the latest version of one model: its exits and its operating points."""
    entry = model.latest
    if entry is None:
        table = Table(title=f"{model.name}: no version loaded")
        table.add_column("version")
        table.add_column("error")
        for version in model.versions:
            table.add_row(version.version, version.error or "")
        return [table]
    exits = Table(title=f"{model.name} v{entry.version}: exits")
    for column in ("exit", "cumulative MFLOPs", "val accuracy", "test accuracy"):
        exits.add_column(column, justify="right")
    for info in entry.exits:
        exits.add_row(
            str(info.index),
            _mflops(info.cumulative_flops),
            _percent_points(info.val_accuracy),
            _percent_points(info.test_accuracy),
        )
    points = Table(title=f"{model.name} v{entry.version}: operating points")
    for column in ("name", "method", "expected MFLOPs", "val accuracy", "thresholds"):
        points.add_column(column)
    for point in entry.operating_points:
        default = " (default)" if point.name == entry.default_operating_point else ""
        points.add_row(
            point.name + default,
            point.method,
            _mflops(point.expected_flops),
            _percent_points(point.val_accuracy),
            " ".join(f"{t:.2f}" for t in point.thresholds),
        )
    return [exits, points]


def print_load_report(report: LoadReport, console: Console) -> None:
    """The summary, latency, exit distribution, per-budget and error tables of a load run."""
    summary = Table(title=f"load: {report.mode} against {report.url}", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("duration", f"{report.duration_s:.2f} s")
    summary.add_row(
        "requests sent / ok / failed",
        f"{report.requests_sent} / {report.requests_ok} / {report.requests_failed}",
    )
    if report.requests_dropped:
        summary.add_row("dropped (client backlog full)", str(report.requests_dropped))
    summary.add_row("throughput", f"{report.throughput_rps:.1f} req/s, {report.images_per_s:.1f} img/s")
    for key in ("p50", "p90", "p99", "max", "mean"):
        summary.add_row(f"latency {key}", f"{_ms(report.latency_ms.get(key))} ms")
    summary.add_row(
        "server queue / inference (mean)",
        f"{_ms(report.server_queue_ms_mean)} / {_ms(report.server_inference_ms_mean)} ms",
    )
    summary.add_row("images answered", str(report.images_ok))
    summary.add_row("mean MFLOPs per image", _mflops(report.mean_flops_per_image))
    summary.add_row("budget-limited images", str(report.budget_limited_images))
    accuracy = (
        f"{_pct(report.accuracy)} ({report.correct_images}/{report.labelled_images})"
        if report.labelled_images
        else "-"
    )
    summary.add_row("accuracy (labelled images)", accuracy)
    console.print(summary)

    exits = Table(title="exit distribution")
    exits.add_column("exit", justify="right")
    exits.add_column("images", justify="right")
    exits.add_column("share", justify="right")
    fractions = report.exit_fractions
    for index, count in sorted(report.exit_counts.items()):
        exits.add_row(str(index), str(count), _pct(fractions[index]))
    console.print(exits)

    budgets = Table(title="by budget")
    for column in ("budget", "requests", "ok", "images", "mean MFLOPs", "accuracy", "p50 ms"):
        budgets.add_column(column, justify="left" if column == "budget" else "right")
    for name, entry in report.by_budget.items():
        budgets.add_row(
            name,
            str(entry.requests),
            str(entry.ok),
            str(entry.images),
            _mflops(entry.mean_flops_per_image),
            _pct(entry.accuracy),
            _ms(entry.latency_p50_ms),
        )
    console.print(budgets)

    if report.errors_by_status:
        errors = Table(title="errors")
        errors.add_column("status")
        errors.add_column("count", justify="right")
        for status, count in report.errors_by_status.items():
            errors.add_row(status, str(count))
        for code, count in report.errors_by_code.items():
            errors.add_row(f"code {code}", str(count))
        console.print(errors)
