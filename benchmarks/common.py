"""What the benchmark scripts share: the test images every server receives, the machine facts, and
child processes measured for time and peak memory (`run_measured`).

Every HTTP comparison sends the same Fashion-MNIST test images (from Debian's dataset-fashion-mnist via
ranet_serve.data), PNG-encoded once, with their true labels, so accuracy is judged on identical inputs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from ranet_client.image_sets import Sample

from hey import hey_version
from ranet_serve.data.datasets import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "model_store" / "ranet-fmnist" / "1"


def fmnist_samples(count: int) -> list[Sample]:
    """The first `count` Fashion-MNIST test images as PNG files with their labels (at most 10,000)."""
    data = load_fashion_mnist("test")
    count = min(count, len(data))
    samples = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(data.images[i, 0]).save(buffer, "PNG")
        label = int(data.labels[i])
        samples.append(Sample(f"fmnist_test_{i:05d}.png", buffer.getvalue(), label, data.class_names[label]))
    return samples


def _first_line(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_facts() -> dict[str, object]:
    """CPU model, cores, memory, OS and load: what a reader needs to weigh the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / (1 << 20), 1)
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cpu": cpu,
        "architecture": platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": os_name,
        "load_average_at_start": list(os.getloadavg()),
    }


def versions() -> dict[str, str | None]:
    """Versions of everything on the measured path (None: not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in (
        "ranet-serve",
        "ranet-client",
        "torch",
        "onnxruntime",
        "numpy",
        "fastapi",
        "uvicorn",
        "httpx",
        "torchserve",
        "torch-model-archiver",
        "litserve",
    ):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    out["java"] = _first_line(["java", "-version"])
    out["hey"] = hey_version()
    return out


@dataclass(frozen=True)
class Measured:
    """A finished child process: wall time, its peak RSS and what it printed."""

    seconds: float
    peak_rss_mb: float  # MiB: the kernel's high-water mark (ru_maxrss) of the command, see run_measured
    returncode: int  # negative: killed by that signal (-9 after a timeout)
    stdout: str
    stderr: str
    timed_out: bool = False


# Starts the command, waits for it and writes "<wait status> <ru_maxrss KiB> <seconds> <timed out>" to
# the report file descriptor. Run as `python -I -S`: a bare interpreter of about 10 MiB (see below).
_LAUNCHER = """
import os, signal, sys, time
report, timeout, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
started = time.monotonic()
try:
    pid = os.posix_spawnp(cmd[0], cmd, os.environ)
except OSError as exc:
    os.write(report, f"spawn-error {exc}".encode())
    sys.exit(127)
expired = []
def expire(signum, frame):
    expired.append(signum)
    os.kill(pid, signal.SIGKILL)  # not reaped yet (waitid below does not reap): the pid is still ours
signal.signal(signal.SIGALRM, expire)
signal.setitimer(signal.ITIMER_REAL, timeout)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
signal.setitimer(signal.ITIMER_REAL, 0)
_, status, usage = os.wait4(pid, 0)
seconds = time.monotonic() - started
os.write(report, f"{status} {usage.ru_maxrss} {seconds!r} {int(bool(expired))}".encode())
"""
LAUNCHER_GRACE_SECONDS = 60.0  # past the command's own timeout, before the launcher itself is killed


def run_measured(
    cmd: list[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
    *,
    cwd: Path | None = ROOT,
) -> Measured:
    """Run `cmd` to its end: wall seconds and peak RSS from the kernel's own account, no sampling.

    The peak is the command's ru_maxrss, from wait4 in a small launcher process that starts it, not
    from this process waiting for the command directly. Two kernel facts force the launcher:
    getrusage(RUSAGE_CHILDREN) is the maximum over every child ever waited for, so an earlier, bigger
    child hides a later one; and a child's ru_maxrss includes the image it had before exec, which for
    subprocess's vfork is this whole process (measured: a 30 MiB child of a 270 MiB pytest reported
    268 MiB). The launcher's image is a bare interpreter, so peaks read about 10 MiB high at worst.
    ru_maxrss is the high-water mark of the largest single process of the command's tree, not a sum:
    right for one-process commands such as `ranet export` and `ranet verify`; a server with worker
    processes needs its own sum.

    Output goes to temporary files, not pipes, so a chatty command never blocks on a full pipe. Past
    `timeout` seconds the command is killed (SIGKILL): `timed_out` is set and `returncode` is -9.
    `seconds` is the command's own wall time, from spawn to exit. Raises OSError when the command
    cannot be started, as subprocess.run does.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as report:
        started = time.monotonic()
        launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report.fileno()), repr(timeout), *cmd],
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            pass_fds=(report.fileno(),),
            start_new_session=True,  # one process group: the backstop below kills launcher and command
        )
        try:
            launcher.wait(timeout=timeout + LAUNCHER_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _kill_group(launcher)
        except BaseException:  # interrupted: leave nothing running
            _kill_group(launcher)
            raise
        elapsed = time.monotonic() - started
        report.seek(0)
        fields = report.read().decode().split(" ", 3)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if fields[0] == "spawn-error":
        raise OSError(f"cannot start {cmd[0]!r}: {' '.join(fields[1:])}")
    if len(fields) != 4:  # the launcher itself was killed (the grace period ran out)
        return Measured(elapsed, float("nan"), -signal.SIGKILL, stdout, stderr, timed_out=True)
    status, max_rss_kib, seconds, expired = fields
    return Measured(
        seconds=float(seconds),
        peak_rss_mb=int(max_rss_kib) / 1024,  # ru_maxrss is in KiB on Linux
        returncode=os.waitstatus_to_exitcode(int(status)),
        stdout=stdout,
        stderr=stderr,
        timed_out=expired == "1",
    )


def _kill_group(launcher: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher's process group (it and the command) and reap the launcher."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
