"""`hey` as a second, independent HTTP client: one multipart image per request, its summary parsed.

Why a second client: the project's load generator is Python (httpx) on the same 2 cores as the
servers, so a figure it measures could be the client's as much as the server's. `hey` (Go, Debian's
package) costs far less CPU per request and knows nothing of ranet serve; when both clients rank the
servers alike, the ranking is the servers'.

- `multipart_body` writes the request body once (one image in the form field `file`, the field every
  multipart server here reads), with a boundary that does not occur in the image.
- `run_hey` runs `hey -n N -c C -m POST -D body -T 'multipart/form-data; boundary=...' URL`.
- `parse_summary` reads hey's default text summary: wall time, requests/s, p50 and p99 from its
  latency distribution, the status code and error distributions. hey's own "Requests/sec" counts
  every finished request, errors and non-2xx answers included, so the figures compared here are
  `ok_per_s`: 2xx answers per second of wall time.

- `run_hey_csv` runs hey for a duration (`-z`) with `-o csv` and `parse_csv` reads one row per
  answered request (latency, status code, offset from the start). Why: under overload hey's summary
  mixes 200s and 429s in one latency distribution, so the latency of admitted requests, and that of
  the rejections, can only be computed from the rows (`CsvRun`). hey leaves transport errors
  (refused, reset, timeouts) out of its CSV, so a CSV run cannot count them.

hey sends the same body every time, so it cannot judge accuracy; the load generator does that.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE_FIELD = "file"

_FLOAT = r"([0-9.]+|NaN)"
_TOTAL = re.compile(rf"^\s*Total:\s+{_FLOAT} secs", re.MULTILINE)
_RPS = re.compile(rf"^\s*Requests/sec:\s+{_FLOAT}", re.MULTILINE)
_PERCENTILE = re.compile(rf"^\s*(\d+)% in {_FLOAT} secs", re.MULTILINE)
_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.MULTILINE)
_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.+)$")


@dataclass(frozen=True)
class HeySummary:
    """What one hey run measured. Latencies are None when no request finished without error."""

    total_s: float
    requests_per_s: float  # as hey prints it: every finished request, errors included
    p50_ms: float | None
    p99_ms: float | None
    status_codes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # message -> count (refused, timeouts, ...)

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.status_codes.items() if code.startswith("2"))

    @property
    def failed(self) -> int:
        return sum(self.status_codes.values()) - self.ok + sum(self.errors.values())

    @property
    def ok_per_s(self) -> float:
        """2xx answers per second of wall time: the throughput compared between servers."""
        return self.ok / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "failed": self.failed, "ok_per_s": self.ok_per_s}


def _number(text: str) -> float | None:
    return None if text == "NaN" else float(text)


def parse_summary(text: str) -> HeySummary:
    """Parse hey's default (non-CSV) output. Raises ValueError when it is not a hey summary."""
    total, rps = _TOTAL.search(text), _RPS.search(text)
    if total is None or rps is None:
        raise ValueError(f"not a hey summary (no Total / Requests/sec line): {text[:200]!r}")
    percentiles = {int(p): _number(v) for p, v in _PERCENTILE.findall(text)}
    p50, p99 = percentiles.get(50), percentiles.get(99)
    status_codes: dict[str, int] = {}
    for code, count in _STATUS.findall(text):
        status_codes[code] = status_codes.get(code, 0) + int(count)
    errors: dict[str, int] = {}
    if "Error distribution:" in text:
        for line in text.split("Error distribution:", 1)[1].splitlines():
            match = _ERROR.match(line)
            if match:
                errors[match.group(2).strip()] = errors.get(match.group(2).strip(), 0) + int(match.group(1))
    return HeySummary(
        total_s=float(_number(total.group(1)) or 0.0),
        requests_per_s=float(_number(rps.group(1)) or 0.0),
        p50_ms=None if p50 is None else 1000.0 * p50,
        p99_ms=None if p99 is None else 1000.0 * p99,
        status_codes=status_codes,
        errors=errors,
    )


def multipart_body(
    image: bytes | Sequence[bytes],
    path: Path,
    *,
    filename: str = "image.png",
    content_type: str = "image/png",
) -> str:
    """Write a multipart/form-data body holding `image` in the field `file` to `path`.

    Several images (a sequence) become several `file` parts, one image each: ranet serve reads
    them as one request of that many images. Returns the Content-Type header value (with the
    boundary) to send it with. The boundary is random and checked against every image's bytes, so
    it cannot end a part early.
    """
    images = [image] if isinstance(image, bytes | bytearray) else list(image)
    if not images:
        raise ValueError("a multipart body needs at least one image")
    boundary = "ranet-bench-" + secrets.token_hex(12)
    while any(boundary.encode() in one for one in images):  # astronomically unlikely; cheap to rule out
        boundary = "ranet-bench-" + secrets.token_hex(12)
    parts = []
    for index, one in enumerate(images):
        name = filename if len(images) == 1 else f"{index:02d}-{filename}"
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{FILE_FIELD}"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        parts.append(head + bytes(one) + b"\r\n")
    path.write_bytes(b"".join(parts) + f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}"


def hey_executable() -> str | None:
    """The hey binary on the PATH (Debian's package `hey`), or None."""
    return shutil.which("hey")


def hey_version() -> str | None:
    """The installed Debian package's version (hey itself has no --version), or None."""
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "hey"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def requests_for(requests: int, concurrency: int) -> int:
    """hey gives each of its C workers N // C requests: round N to a multiple of C (at least C)."""
    return max(concurrency, requests - requests % concurrency)


def run_hey(
    url: str,
    body: Path,
    content_type: str,
    *,
    requests: int,
    concurrency: int,
    timeout_s: int = 60,
) -> HeySummary:
    """One closed-loop hey run: `requests` POSTs of `body` from `concurrency` workers; its summary."""
    executable = hey_executable()
    if executable is None:
        raise FileNotFoundError("hey is not installed (Debian package `hey`; setup_bench.sh installs it)")
    command = [executable, "-n", str(requests_for(requests, concurrency)), "-c", str(concurrency)]
    command += ["-t", str(timeout_s), "-m", "POST", "-D", str(body), "-T", content_type, url]
    # hey stops by itself after N requests; the bound covers a server that stops answering.
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 600)
    if done.returncode != 0:
        raise RuntimeError(f"hey exited {done.returncode}: {(done.stderr or done.stdout)[-1000:]}")
    return parse_summary(done.stdout)


# -- CSV mode: one row per answered request ------------------------------------------------------------

CSV_HEADER = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset"


@dataclass(frozen=True)
class CsvRow:
    """One answered request as hey's CSV lists it: latency and start offset in seconds, the status."""

    latency_s: float
    status: int
    offset_s: float


def parse_csv(text: str) -> list[CsvRow]:
    """Parse `hey -o csv` output. Raises ValueError when the header is missing or a row is malformed.

    The columns are looked up by name in the header, so a hey that reorders or adds columns still
    parses; blank lines (hey ends without a newline, or with several) are skipped.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or "status-code" not in lines[0].split(","):
        raise ValueError(f"not hey CSV output (no header with status-code): {text[:200]!r}")
    columns = lines[0].split(",")
    latency, status, offset = (columns.index(name) for name in ("response-time", "status-code", "offset"))
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(columns):
            expected = len(columns)
            raise ValueError(f"hey CSV line {number} has {len(cells)} cells, expected {expected}: {line!r}")
        try:
            rows.append(CsvRow(float(cells[latency]), int(cells[status]), float(cells[offset])))
        except ValueError as exc:
            raise ValueError(f"hey CSV line {number} is not numeric: {line!r}") from exc
    return rows


# Overload figures "after the first second" (benchmarks/serving.py for hey's answers, benchmarks/probe.py
# for the probe's) leave out the answers to requests started before this offset: the first second holds the
# burst the adaptive limit has not yet settled on.
STEADY_AFTER_S = 1.0


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by nearest rank (the smallest value with at least q% at or below it).

    Nearest rank, not interpolation: the figure is a latency some request really had. None when
    there are no values.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class CsvRun:
    """One duration-bound hey run read from its CSV: answered requests by status, their latencies.

    `elapsed_s` is the span from hey's start to the last answer (the largest offset + latency); it
    is the denominator of every rate, so requests still running when hey stops count in time too.
    """

    rows: tuple[CsvRow, ...]
    elapsed_s: float

    @classmethod
    def from_rows(cls, rows: Sequence[CsvRow], fallback_elapsed_s: float = 0.0) -> CsvRun:
        """`fallback_elapsed_s` (the wall time measured around hey) is used only when no row came back."""
        span = max((r.offset_s + r.latency_s for r in rows), default=0.0)
        return cls(tuple(rows), span if span > 0 else fallback_elapsed_s)

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[str(row.status)] = counts.get(str(row.status), 0) + 1
        return dict(sorted(counts.items()))

    def count(self, status: int | str) -> int:
        """Rows with this status; a class like "5xx" counts every status starting with its digit."""
        text = str(status)
        if text.endswith("xx"):
            return sum(1 for r in self.rows if str(r.status).startswith(text[0]))
        return sum(1 for r in self.rows if r.status == int(text))

    def latencies_ms(self, status: int) -> list[float]:
        return [1000.0 * r.latency_s for r in self.rows if r.status == status]

    def percentile_ms(self, status: int, q: float) -> float | None:
        """The q-th percentile latency of the answers with this status only (nearest rank)."""
        return nearest_rank(self.latencies_ms(status), q)

    def per_s(self, status: int) -> float:
        """Answers with this status per second of the run (for 200: the goodput)."""
        return self.count(status) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The figures the benchmarks report: goodput, 200 and 429 latency, status counts."""
        return {
            "elapsed_s": self.elapsed_s,
            "answered": len(self.rows),
            "status_codes": self.statuses(),
            "ok": self.count(200),
            "ok_per_s": self.per_s(200),
            "ok_p50_ms": self.percentile_ms(200, 50),
            "ok_p99_ms": self.percentile_ms(200, 99),
            "rejected_429": self.count(429),
            "rejected_p50_ms": self.percentile_ms(429, 50),
            "rejected_p99_ms": self.percentile_ms(429, 99),
            "server_errors_5xx": self.count("5xx"),
        }


def run_hey_csv(
    url: str,
    body: Path,
    content_type: str,
    *,
    seconds: float,
    concurrency: int,
    timeout_s: int = 60,
) -> CsvRun:
    """One closed-loop hey run for `seconds` (`-z`) from `concurrency` workers, read from its CSV.

    Each worker sends its next request when its previous answer arrives, whatever the status: a
    rejection costs the client nothing but a round trip, so under overload the offered rate stays
    at what 400 eager clients produce.
    """
    executable = hey_executable()
    if executable is None:
        raise FileNotFoundError("hey is not installed (Debian package `hey`; setup_bench.sh installs it)")
    command = [executable, "-z", f"{max(seconds, 0.1):g}s", "-c", str(concurrency), "-o", "csv"]
    command += ["-t", str(timeout_s), "-m", "POST", "-D", str(body), "-T", content_type, url]
    started = time.monotonic()
    # -z stops the workers after `seconds`; each finishes its request in flight (at most timeout_s).
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout_s + 120)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"hey exited {done.returncode}: {(done.stderr or done.stdout)[-1000:]}")
    return CsvRun.from_rows(parse_csv(done.stdout), fallback_elapsed_s=wall)
