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

hey sends the same body every time, so it cannot judge accuracy; the load generator does that.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
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
    image: bytes, path: Path, *, filename: str = "image.png", content_type: str = "image/png"
) -> str:
    """Write a multipart/form-data body holding `image` in the field `file` to `path`.

    Returns the Content-Type header value (with the boundary) to send it with. The boundary is
    random and checked against the image bytes, so it cannot end the part early.
    """
    boundary = "ranet-bench-" + secrets.token_hex(12)
    while boundary.encode() in image:  # astronomically unlikely; cheap to rule out
        boundary = "ranet-bench-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{FILE_FIELD}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    path.write_bytes(head + image + f"\r\n--{boundary}--\r\n".encode())
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
