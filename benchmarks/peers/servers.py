"""Starting and stopping the servers under test: each in its own process group on 127.0.0.1.

Every server (ranet serve, the FastAPI baseline, TorchServe with its Java frontend and Python worker)
runs as a child in a new session, so stopping it ends exactly the processes this benchmark started
and nothing else on a shared machine. Readiness is a real answer from the server, bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import httpx

# Every torch-based server gets the same OpenMP setting: torch's pool with spinning threads stalls on
# these shared 2-core machines (platform notes), and a fair comparison gives no server that handicap.
SERVER_ENV = {"OMP_WAIT_POLICY": "passive"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedServer:
    """A server process: `start()` waits until `ready()` is true, `stop()` ends its process group."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        ready: Callable[[], bool],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        start_timeout: float = 120.0,
        url: str = "",
        poll_interval: float = 0.5,
        preexec_fn: Callable[[], None] | None = None,
    ):
        self.name = name
        self.url = url
        self.command = list(command)
        self.ready = ready
        self.cwd = cwd
        self.env = {**os.environ, **SERVER_ENV, **(env or {})}
        self.log = log
        self.start_timeout = start_timeout
        # How often start() asks ready(): also the resolution of ready_seconds, which a start-up
        # measurement (imagenet/server.py: 0.1 s) needs finer than the default.
        self.poll_interval = poll_interval
        self.preexec_fn = preexec_fn  # run in the child before exec, e.g. ranet serve's stop_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None  # from just before the process started to ready()

    def start(self) -> ManagedServer:
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        finally:
            if self.log is not None and not isinstance(out, int):
                out.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            returncode = self.process.poll()
            if returncode is not None:
                self.stop()  # its children may still run
                tail = self._log_tail()
                raise RuntimeError(f"{self.name} exited with {returncode} before it was ready{tail}")
            try:
                if self.ready():
                    self.ready_seconds = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(self.poll_interval)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {self.start_timeout:g} s{self._log_tail()}")

    def _log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log, for error messages (the log lives in a temporary directory)."""
        if self.log is None or not self.log.is_file():
            return ""
        return f"; end of its log:\n{self.log.read_text(errors='replace')[-chars:]}"

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's own process group, SIGKILL if it has not exited after `grace` s.

        The group id is the child's pid (it leads a new session), so members that outlive the leader
        (TorchServe's Java frontend and Python worker) are reached even when the leader is gone.
        """
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def http_ok(url: str, method: str = "GET", **kwargs: object) -> Callable[[], bool]:
    """A readiness probe: true once `url` answers 2xx."""

    def probe() -> bool:
        return httpx.request(method, url, timeout=2.0, **kwargs).is_success  # type: ignore[arg-type]

    return probe
