"""Steps b and c: the `ranet` commands run as a user runs them, each in a child process of its own.

A child process, not a function call, because the figures are the command's: its wall time and its
peak RSS, from the kernel's own account (benchmarks/common.py's `run_measured`), without this
benchmark's own memory in them. `ranet verify`'s verdict is its exit status; its table is parsed for
the worst difference, which is also read against the largest logit of verify's own random batch.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import run_measured


def ranet_command(*args: str) -> list[str]:
    """`ranet <args>` with this interpreter, so the child runs this checkout's ranet_serve."""
    return [sys.executable, "-m", "ranet_serve.cli", *args]


def child_env() -> dict[str, str]:
    """This environment with the OpenMP setting every server under test gets (peers/servers.py)."""
    from servers import SERVER_ENV

    return {**os.environ, **SERVER_ENV}


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_bundle(checkpoint: Path, config_arg: str, bundle: Path, timeout: float) -> dict[str, Any]:
    """Step b: `ranet export` of the official checkpoint, timed, with the child's peak RSS."""
    command = ranet_command("export", str(checkpoint), "--config", config_arg, "--out", str(bundle))
    done = run_measured(command, env=child_env(), timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"ranet export failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return {
        "command": "ranet export <official checkpoint> --config <config> --out <store>/<name>/1",
        "seconds": round(done.seconds, 1),
        "peak_rss_mb": round(done.peak_rss_mb, 0),
        "bundle_bytes": directory_bytes(bundle),
        "files": {
            str(f.relative_to(bundle)): f.stat().st_size for f in sorted(bundle.rglob("*")) if f.is_file()
        },
    }


_SCI = re.compile(r"^[-+]?\d+(\.\d+)?([eE][-+]?\d+)?$")


def parse_verify_table(text: str) -> list[dict[str, str]]:
    """The rows of `ranet verify`'s table as {column: cell}; the header names the columns, so a table
    with more columns (a relative difference) parses the same way."""
    header: list[str] = []
    rows = []
    for line in text.splitlines():
        if "┃" in line and not header:
            header = [c.strip().lower() for c in line.strip().strip("┃").split("┃")]
        elif line.startswith("│") and header:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if len(cells) == len(header):
                rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _column(rows: list[dict[str, str]], *keys: str) -> str | None:
    """The first column whose name contains every one of `keys`."""
    for name in rows[0] if rows else ():
        if all(key in name for key in keys):
            return name
    return None


def verify_summary(rows: list[dict[str, str]], logit_scale: Sequence[float]) -> dict[str, Any]:
    """Worst absolute difference, and relative to the largest logit of that exit on verify's input."""
    abs_column, rel_column = _column(rows, "diff"), _column(rows, "rel")
    if abs_column == rel_column:
        abs_column = _column(rows, "max", "diff")
    worst_abs = worst_rel = 0.0
    for row in rows:
        value = row.get(abs_column or "", "")
        if not _SCI.match(value):
            continue
        diff = float(value)
        exit_ = int(row.get("exit", "0"))
        worst_abs = max(worst_abs, diff)
        if exit_ < len(logit_scale) and logit_scale[exit_] > 0:
            worst_rel = max(worst_rel, diff / logit_scale[exit_])
    reported_rel = [float(r[rel_column]) for r in rows if rel_column and _SCI.match(r.get(rel_column, ""))]
    return {
        "checks": len(rows),
        "failed_checks": sum(1 for r in rows if r.get("ok", "yes") != "yes"),
        "worst_abs_diff": worst_abs,
        "worst_rel_diff_of_max_logit": worst_rel,
        "worst_rel_diff_reported": max(reported_rel) if reported_rel else None,
        "max_abs_logit": max(logit_scale) if logit_scale else None,
    }


def verify_bundle(bundle: Path, logit_scale: Sequence[float], timeout: float) -> dict[str, Any]:
    """Step c: `ranet verify` in a child process (its own tolerance rule), parsed."""
    done = run_measured(ranet_command("verify", str(bundle)), env=child_env(), timeout=timeout)
    rows = parse_verify_table(done.stdout)
    rules = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("rule:")]
    return {
        "command": "ranet verify <bundle>",
        "rule": rules[0].removeprefix("rule:").strip() if rules else None,
        "passed": done.returncode == 0,
        "returncode": done.returncode,
        "seconds": round(done.seconds, 1),
        "peak_rss_mb": round(done.peak_rss_mb, 0),
        **verify_summary(rows, logit_scale),
        "rows": rows,
        "output_tail": (done.stdout + done.stderr)[-1500:] if done.returncode != 0 else None,
    }
