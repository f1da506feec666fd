"""`ranet serve` as a real process on 127.0.0.1 and a free port, for tests of the command as users run it.

The process writes its output to a log file, which every failure quotes; `stop` sends SIGTERM (the
server drains and removes its run directory) and kills it if it does not exit in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServeProcess:
    """`python -m ranet_serve.cli serve --port PORT ARGS...`, started at construction."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A free gRPC port too, unless the test names one: servers of parallel tests must not share 8081.
        self.grpc_port = free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log = log
        port_args = ["--port", str(self.port)]
        if "--grpc-port" not in args:
            port_args += ["--grpc-port", str(self.grpc_port)]
        command = [sys.executable, "-m", "ranet_serve.cli", "serve", *port_args, *args]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=dict(env or os.environ), cwd=cwd
            )

    def wait_ready(self, timeout: float = 90, also: Callable[[], bool] | None = None) -> None:
        """Until `/readyz` answers 200 (and `also()` holds); fails with the log if the process exits first."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while True:
                assert self.process.poll() is None, "ranet serve exited:\n" + self.log.read_text()
                try:
                    if client.get("/readyz").status_code == 200 and (also is None or also()):
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                assert time.monotonic() < deadline, (
                    "ranet serve did not become ready:\n" + self.log.read_text()
                )
                time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()
