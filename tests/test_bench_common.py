"""benchmarks/common.py `run_measured`: wall time and peak RSS of one child process, from the kernel.

The ImageNet-scale benchmark reports `ranet export` and `ranet verify` time and peak memory with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

from common import Measured, run_measured  # noqa: E402

MIB = 1 << 20


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _allocating(mib: int) -> list[str]:
    # bytes * n writes every page (a calloc'ed bytearray would stay untouched and never count).
    return _python(f"block = b'x' * ({mib} * {MIB}); print(len(block) // {MIB})")


def test_peak_rss_is_the_childs_own_high_water_mark() -> None:
    big = run_measured(_allocating(200))
    assert isinstance(big, Measured)
    assert big.returncode == 0 and big.stdout == "200\n" and not big.timed_out
    assert 200 <= big.peak_rss_mb < 260  # the block plus an interpreter (about 10 MiB)
    # Measured per command: a small child after a big one is not reported at the big one's peak (as
    # getrusage(RUSAGE_CHILDREN) would), nor at this test process's (about 270 MiB with torch, which a
    # child's ru_maxrss includes when this process starts it by vfork).
    small = run_measured(_allocating(20))
    assert 20 <= small.peak_rss_mb < 60
    assert 0 < small.seconds < 60


def test_exit_status_output_and_environment_come_back() -> None:
    code = "import os, sys; print(os.environ['RANET_PROBE']); print('oops', file=sys.stderr); sys.exit(3)"
    done = run_measured(
        _python(code),
        env={**os.environ, "RANET_PROBE": "from-env"},
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr, done.timed_out) == (3, "from-env\n", "oops\n", False)


def test_a_child_past_its_timeout_is_killed() -> None:
    done = run_measured(_python("import signal; print('waiting', flush=True); signal.pause()"), timeout=1.0)
    assert done.timed_out and done.returncode == -9
    assert done.stdout == "waiting\n"
    assert 1.0 <= done.seconds < 30


@pytest.mark.parametrize("cwd", [None, Path("/")], ids=["repository-root", "given"])
def test_the_child_runs_in_the_repository_root_or_the_given_directory(cwd: Path | None) -> None:
    probe = _python("import os; print(os.getcwd())")
    done = run_measured(probe) if cwd is None else run_measured(probe, cwd=cwd)
    assert done.stdout.strip() == str(cwd or BENCH.parent)


def test_a_command_that_cannot_start_raises() -> None:
    with pytest.raises(OSError, match="no-such-ranet-command"):
        run_measured(["no-such-ranet-command"])
