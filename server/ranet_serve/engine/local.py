"""The engine in the front-end's own process: the server with one process (tests, small deployments).

Implements the same `EngineClient` contract as `engine.client.RemoteEngine`, so the protocol
front-ends never know which one they talk to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial

import numpy as np
import torch
from prometheus_client import CollectorRegistry, generate_latest

from ranet_serve.engine.catalog import Catalog
from ranet_serve.engine.core import Engine
from ranet_serve.engine.records import EngineRequest, EngineResult, ExitEvent, ReloadReport, RepositoryEntry
from ranet_serve.engine.registry import RuntimeFactory
from ranet_serve.errors import RanetServeError
from ranet_serve.heap import freeze_heap
from ranet_serve.metrics import EngineMetrics
from ranet_serve.settings import Settings

logger = logging.getLogger(__name__)


class LocalEngine:
    """Loads the engine on a worker thread at start, submits in process, drains at close."""

    def __init__(self, engine: Engine, registry: CollectorRegistry):
        self.engine = engine
        self.registry = registry  # the engine's metrics; the front-end adds its own to it
        self._loader: asyncio.Task[ReloadReport] | None = None
        self._reload_lock: asyncio.Lock | None = None

    @classmethod
    def build(cls, settings: Settings, runtime_factory: RuntimeFactory) -> LocalEngine:
        """An engine with its metrics in a registry of its own (nothing is loaded until `start`)."""
        registry = CollectorRegistry()
        return cls(Engine(settings, EngineMetrics(registry), runtime_factory), registry)

    @property
    def catalog(self) -> Catalog:
        return self.engine.catalog

    async def start(self) -> None:
        """Start loading; readiness turns true when it ends (the server answers meanwhile)."""
        self._reload_lock = asyncio.Lock()
        self._loader = asyncio.create_task(self._run_locked(self.engine.load, "loading"))

    async def close(self) -> None:
        if self._loader is not None:
            await asyncio.gather(self._loader, return_exceptions=True)
        await asyncio.to_thread(self.engine.close)
        logger.info("model store closed")

    async def reload(self) -> ReloadReport:
        """Rescan the model store (the admin route and SIGHUP both come here)."""
        return await self._run_locked(self.engine.reload, "reloading")

    async def repository_index(self) -> tuple[RepositoryEntry, ...]:
        return await asyncio.to_thread(self.engine.repository_index)  # scans the store's directories

    async def load_model(self, name: str) -> ReloadReport:
        return await self._run_repository(partial(self.engine.load_model, name))

    async def unload_model(self, name: str) -> ReloadReport:
        return await self._run_repository(partial(self.engine.unload_model, name))

    async def _run_repository(self, change: Callable[[], ReloadReport]) -> ReloadReport:
        """A repository change, in turn with reloads; its errors are the caller's answer, not logged."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            try:
                return await asyncio.to_thread(change)
            finally:
                freeze_heap()  # an unloaded version's cycles are collected here

    async def _run_locked(self, load: Callable[[], ReloadReport], what: str) -> ReloadReport:
        assert self._reload_lock is not None
        async with self._reload_lock:
            try:
                report: ReloadReport = await asyncio.to_thread(load)
                return report
            except Exception:
                logger.exception("%s the model store failed", what)
                raise
            finally:
                freeze_heap()

    @contextmanager
    def arriving(self, model: str, version: str | None) -> Iterator[None]:
        """Tell the model's scheduler a request is being decoded, so an open batch waits for it."""
        try:
            entry = self.engine.store.acquire(model, version)
        except RanetServeError:
            yield  # the lookup fails again, with its error, at submit
            return
        try:
            with entry.batcher.arriving():
                yield
        finally:
            self.engine.store.release(entry)

    async def infer(
        self, request: EngineRequest, images: np.ndarray, on_exit: Callable[[ExitEvent], None] | None = None
    ) -> EngineResult:
        """Cancelling the awaiting task withdraws the request (see `Engine.submit`); `on_exit` is called
        on this loop, ahead of the answer."""
        listener = None
        if on_exit is not None:
            loop = asyncio.get_running_loop()
            listener = partial(_call_soon, loop, on_exit)
        future = self.engine.submit(request, torch.from_numpy(images), listener)
        return await asyncio.wrap_future(future)

    def shed(self, model: str) -> None:
        self.engine.shed(model)

    def queued_requests(self) -> int:
        return self.engine.backlog()[0]

    async def metrics_text(self) -> bytes:
        return generate_latest(self.registry)


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[[ExitEvent], None], event: ExitEvent
) -> None:
    """Hand an exit event from the worker thread to the loop (FIFO with the answer's own hand-over)."""
    with suppress(RuntimeError):  # the loop has closed: nobody is listening
        loop.call_soon_threadsafe(callback, event)
