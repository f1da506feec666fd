"""Real servers for API tests: uvicorn in a thread on 127.0.0.1, with a runtime the test controls.

The runtime wrapper can slow down, block or fail stages, so overload, deadlines and stage failures are
tested on the real stack (batcher, service, routes) without mocking the server itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from torch import Tensor

from ranet_serve.api.app import create_app
from ranet_serve.cascade.runtimes import StageRuntime
from ranet_serve.engine.registry import default_runtime_factory
from ranet_serve.errors import StageExecutionError
from ranet_serve.export.bundle import Bundle
from ranet_serve.settings import Settings


@dataclass
class Faults:
    """Shared switches for every ControlledRuntime a server creates."""

    stage_delay: float = 0.0  # seconds added to each stage
    fail_next: int = 0  # this many stage calls raise
    gate: threading.Event = field(default_factory=threading.Event)  # stages wait for it when blocking
    blocking: bool = False
    entered: threading.Event = field(default_factory=threading.Event)  # set when a stage starts
    load_gate: threading.Event | None = None  # runtime creation waits for it (readiness tests)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold_stage: int | None = None  # this stage (only) waits for `gate`...
    held: threading.Event = field(default_factory=threading.Event)  # ...and sets this when it starts

    def reset(self) -> None:
        self.stage_delay, self.fail_next, self.blocking, self.hold_stage = 0.0, 0, False, None
        self.gate.set()
        self.entered.clear()
        self.held.clear()


class ControlledRuntime(StageRuntime):
    """Wraps a real runtime; sleeps, blocks or raises inside `run` when the test says so."""

    def __init__(self, inner: StageRuntime, faults: Faults):
        super().__init__(inner.bundle)
        self.inner = inner
        self.faults = faults
        self.backend = inner.backend
        self.device = inner.device
        self.arrays = inner.arrays

    def run(self, stage: int, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        faults = self.faults
        faults.entered.set()
        if faults.hold_stage == stage:
            faults.held.set()
            faults.gate.wait(30)
        if faults.blocking:
            faults.gate.wait(30)
        if faults.stage_delay:
            time.sleep(faults.stage_delay)
        with faults.lock:
            failing = faults.fail_next > 0
            if failing:
                faults.fail_next -= 1
        if failing:
            raise StageExecutionError(f"stage {stage} failed: injected fault", stage=stage)
        return self.inner.run(stage, inputs)


def controlled_factory(faults: Faults) -> Callable[[Bundle, Settings], StageRuntime]:
    def factory(bundle: Bundle, settings: Settings) -> StageRuntime:
        if faults.load_gate is not None:
            faults.load_gate.wait(30)
        return ControlledRuntime(default_runtime_factory(bundle, settings), faults)

    return factory


class RunningServer:
    """uvicorn serving `create_app(settings)` in a thread on 127.0.0.1."""

    def __init__(self, settings: Settings, faults: Faults | None = None):
        self.faults = faults or Faults()
        self.settings = settings
        self.app = create_app(settings, runtime_factory=controlled_factory(self.faults))
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self, wait_ready: bool = True) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        if wait_ready:
            self.wait_ready()
        return self

    @property
    def grpc_target(self) -> str:
        """`127.0.0.1:PORT` of the gRPC front-end (started with the app when settings give a port)."""
        frontend = self.app.state.grpc
        assert frontend is not None, "this server has no gRPC port (settings_for(..., grpc_port=free_port()))"
        return f"127.0.0.1:{frontend.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url) as client:
            while client.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("test server did not become ready")
                time.sleep(0.02)

    def stop(self) -> None:
        self.faults.reset()
        if self.faults.load_gate is not None:
            self.faults.load_gate.set()
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


def settings_for(store: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_store": store,
        "default_model": "tiny",
        "backend": "onnxruntime",
        "device": "cpu",
        "threads": 1,
        "max_batch_size": 16,
        "max_queue_delay_ms": 1.0,
        "max_body_bytes": 1 << 20,
        "max_images_per_request": 8,
        "log_level": "warning",
        # Test clients resend at once after a 429 (their Retry-After waits are skipped or faked); the
        # hold itself is tested in test_admission_limit.py.
        "hold_early_retries": False,
        # gRPC off unless a test asks for a port: test servers must not all bind the default 8081.
        "grpc_port": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
