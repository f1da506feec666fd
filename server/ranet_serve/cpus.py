"""How many CPUs this server may use, and how it splits them between the engine and the front-ends.

Measured on a 2-core machine (hey, 16 clients, one Fashion-MNIST PNG per request, interleaved runs):
two intra-op threads cost the engine 1.0-1.16 ms of CPU per image at full depth where one thread
costs 0.70-0.75 (onnxruntime's second thread saves little wall time on this model and spins up on
every operator), and an engine whose threads take both cores starves the front-ends that feed it.
With one engine thread and one front-end the same machine served 1,020-1,740 requests/s at the
default point and 700-780 at full depth, against 1,240 and 500-570 with two of each (hey, 16 and 64
clients, a noisy host), and the admitted p99 under a 400-client overload fell from 920 ms to 436-572
ms (230-487 ms with one engine thread and two front-ends). So by default the engine
gets a quarter of the cores for its runtimes (at least one) and the front-ends get the rest.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ranet_serve.settings import Settings


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's limit).

    `os.cpu_count()` counts the host's cores: in a pod limited to 2 CPUs on a 64-core node it would
    start 64 front-ends.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota: float | None = None
    try:
        text = (cgroup / "cpu.max").read_text().split()  # cgroup v2: "<quota> <period>" or "max <period>"
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:  # cgroup v1
            limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            quota = limit / period if limit > 0 else None
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def engine_threads(settings: Settings) -> int:
    """Intra-op threads of the engine's stage runtimes: `threads`, or a quarter of the CPUs (at least 1)."""
    return settings.threads or max(1, available_cpus() // 4)


def frontend_count(settings: Settings) -> int:
    """Front-end processes: `frontends`, or the CPUs the engine's runtimes do not take (at least 1)."""
    return settings.frontends or max(1, available_cpus() - engine_threads(settings))
