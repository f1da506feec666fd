"""What a protocol front-end needs from the engine, wherever the engine runs.

`LocalEngine` (engine.local) runs it in the front-end's own process; `RemoteEngine` (engine.remote)
talks to the engine process over a Unix socket with images in shared memory. Front-ends hold an
`EngineClient` and never know which.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np

from ranet_serve.engine.catalog import Catalog
from ranet_serve.engine.records import EngineRequest, EngineResult, ExitEvent, ReloadReport, RepositoryEntry


class EngineClient(Protocol):
    @property
    def catalog(self) -> Catalog:
        """What the engine serves now (a dictionary read; replaced whole after every (re)load)."""

    async def start(self) -> None:
        """Called once by the front-end's lifespan before it serves; must not wait for models to load."""

    async def close(self) -> None:
        """Called once at shutdown, after the front-end stopped taking requests."""

    async def reload(self) -> ReloadReport:
        """Rescan the model store (admin route and SIGHUP)."""

    async def repository_index(self) -> tuple[RepositoryEntry, ...]:
        """Every version in the model store, served or not, with Triton's state (READY, UNAVAILABLE,
        LOADING) and its reason; sorted by name, then version (the repository extension's Index)."""

    async def load_model(self, name: str) -> ReloadReport:
        """(Re)load one model's versions from the store; other models are untouched (the repository
        extension's Load). Returns when they serve. Raises ModelNotFoundError when the store has no such
        model, ModelLoadError (with each failing version's reason) when a version failed to load."""

    async def unload_model(self, name: str) -> ReloadReport:
        """Stop serving one model (the repository extension's Unload): new requests for it fail at once
        with ModelNotFoundError; returns, with `removed` set, once its in-flight requests have finished
        and its runtimes are released. It stays unloaded across reloads until `load_model`. Raises
        ModelNotFoundError for a name that is neither served nor in the store."""

    def arriving(self, model: str, version: str | None) -> AbstractContextManager[None]:
        """Around a request's decoding: lets an open batch wait for it (a no-op across processes)."""

    async def infer(
        self, request: EngineRequest, images: np.ndarray, on_exit: Callable[[ExitEvent], None] | None = None
    ) -> EngineResult:
        """Run `images` [N, C, H, W] float32; cancelling the awaiting task withdraws the request, even
        once its images are in the cascade. With `on_exit` (and `request.stream`), every exit each
        image passes is reported on the caller's loop, in order, before the result."""

    def shed(self, model: str) -> None:
        """A request for `model` was shed before its body was read (a load signal for the engine)."""

    def queued_requests(self) -> int:
        """Requests waiting in the engine's queues (admission reads it before reading a body)."""

    async def metrics_text(self) -> bytes:
        """The engine's metrics in the Prometheus text format."""
