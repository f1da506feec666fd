"""The engine process: one per device; serves every front-end process over a Unix socket.

Its event loop only moves messages: an `Infer` becomes an `Engine.submit` (the schedulers' worker
threads run the stages), and the result goes back when the request's future completes. Images are
copied out of the front-end's shared page pool on arrival; the pages are the front-end's to free
once the answer (or failure) reaches it. A front-end that disconnects has its queued requests
withdrawn. SIGHUP and the `Reload` message take one path (`EngineServer.reload`), which re-freezes
the heap and sends every front-end the new catalog; the repository extension's `LoadModel` and
`UnloadModel` take their turn with it (`EngineServer.change_repository`), and every catalog the model
store publishes reaches the front-ends at once (an unload stops new requests before it drains).
SIGTERM drains the schedulers and exits; SIGINT is ignored (a terminal's Ctrl-C reaches every process
of the group, and the front-ends must finish their requests before the engine goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, generate_latest

from ranet_serve.engine import messages as m
from ranet_serve.engine.catalog import Catalog
from ranet_serve.engine.core import Engine
from ranet_serve.engine.records import EngineResult, ExitEvent, ReloadReport
from ranet_serve.engine.registry import default_runtime_factory
from ranet_serve.engine.shm import PID_NAME, SOCKET_NAME, STATUS_NAME, PoolReader, StatusBlock
from ranet_serve.engine.transport import FrameProtocol
from ranet_serve.errors import RanetServeError, StageExecutionError
from ranet_serve.heap import freeze_heap
from ranet_serve.logs import configure_logging
from ranet_serve.metrics import EngineMetrics
from ranet_serve.settings import Settings

logger = logging.getLogger(__name__)

STATUS_PERIOD_SECONDS = 0.05  # when idle; under load on submits and answers, at most every:
STATUS_EVENT_SECONDS = 0.002
PARENT_CHECK_SECONDS = 1.0


def run_engine(settings: Settings, run_dir: Path) -> None:
    """Process entry point (spawned by the supervisor)."""
    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = CollectorRegistry()
    engine = Engine(settings, EngineMetrics(registry), default_runtime_factory)
    try:
        import uvloop
    except ImportError:
        asyncio.run(EngineServer(engine, registry, run_dir).serve())
    else:
        uvloop.run(EngineServer(engine, registry, run_dir).serve())


class EngineServer:
    """The engine's side of every front-end connection."""

    def __init__(self, engine: Engine, registry: CollectorRegistry, run_dir: Path):
        self.engine = engine
        self.registry = registry
        self.run_dir = run_dir
        self.pools = PoolReader(run_dir)
        self.status = StatusBlock(run_dir / STATUS_NAME, create=False)
        self.connections: set[_Connection] = set()
        self._reload_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._published = 0.0

    async def serve(self) -> None:
        """Serve until SIGTERM (or until the supervisor is gone)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        self._spawn(self._watch_parent(os.getppid()))
        await self.start()
        (self.run_dir / PID_NAME).write_text(f"{os.getpid()}\n")  # for operators and tests
        await self._stop.wait()
        logger.info("engine process %d stopping: draining the schedulers", os.getpid())
        await self.stop()

    async def start(self) -> None:
        """Listen, and load the model store in the background (front-ends see `loaded` once done)."""
        loop = asyncio.get_running_loop()
        path = self.run_dir / SOCKET_NAME
        path.unlink(missing_ok=True)
        self._server = await loop.create_unix_server(lambda: _Connection(self).protocol, path=str(path))
        self.engine.store.on_publish = lambda: _call_soon(loop, self.broadcast_catalog)
        self._spawn(self._publish_status())
        logger.info("engine process %d listening on %s", os.getpid(), path)
        self._spawn(self.reload(first=True))

    async def stop(self) -> None:
        """Stop listening, drain and close every scheduler, tell the front-ends."""
        if self._server is not None:
            self._server.close()
        async with self._reload_lock:
            await asyncio.to_thread(self.engine.close)
        self.broadcast_catalog()
        for task in self._tasks:
            task.cancel()
        logger.info("model store closed")

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, first: bool = False) -> ReloadReport | None:
        """(Re)load the model store, re-freeze the heap, tell every front-end (SIGHUP and `Reload`)."""
        async with self._reload_lock:
            try:
                return await asyncio.to_thread(self.engine.load if first else self.engine.reload)
            except Exception:
                logger.exception("%s the model store failed", "loading" if first else "reloading")
                return None
            finally:
                freeze_heap()
                self.broadcast_catalog()

    async def change_repository(self, change: Any) -> ReloadReport:
        """Load or unload one model (`change`: a blocking call on the engine), in turn with reloads;
        its domain errors go back to the front-end that asked."""
        async with self._reload_lock:
            try:
                report: ReloadReport = await asyncio.to_thread(change)
                return report
            finally:
                freeze_heap()
                self.broadcast_catalog()

    def broadcast_catalog(self) -> None:
        payload = m.encoder.encode(catalog_message(self.engine.catalog))
        for connection in list(self.connections):
            connection.protocol.send(payload)

    def publish_status(self, at_most_every: float = 0.0) -> None:
        """Write the backlog for the front-ends' admission gates; `at_most_every` seconds when given
        (on every submit and answer it would cost the engine's loop a scan of every scheduler)."""
        now = time.monotonic()
        if now - self._published < at_most_every:
            return
        self._published = now
        queued, seconds = self.engine.backlog()
        self.status.publish(queued, seconds)

    async def _publish_status(self) -> None:
        while True:
            self.publish_status()
            await asyncio.sleep(STATUS_PERIOD_SECONDS)

    async def _watch_parent(self, parent: int) -> None:
        """Stop when the supervisor is gone (killed without a chance to stop us)."""
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_CHECK_SECONDS)
        logger.warning("the supervisor (pid %d) is gone; stopping", parent)
        self._stop.set()


class _Connection:
    """One front-end process: its requests in flight, by the front-end's request id."""

    def __init__(self, server: EngineServer):
        self.server = server
        self.engine = server.engine
        self.protocol = FrameProtocol(self._on_frame, self._on_lost, self._on_made)
        self.pending: dict[int, Future[EngineResult]] = {}
        self.pools: set[str] = set()
        self.loop = asyncio.get_running_loop()
        # Finished requests on their way from the worker thread to this loop: one wake-up of the loop
        # (a write to its self-pipe) per burst of answers, not per answer.
        # Exit events of streamed requests travel the same way, ahead of their request's answer.
        self._finished: deque[tuple[int, Future[EngineResult] | ExitEvent]] = deque()
        self._drain_lock = threading.Lock()
        self._drain_scheduled = False

    def _on_made(self) -> None:
        self.server.connections.add(self)
        self._send(catalog_message(self.engine.catalog))

    def _send(self, message: m.ToFrontend) -> None:
        self.protocol.send(m.encoder.encode(message))

    def _on_frame(self, payload: bytes) -> None:
        message = m.to_engine.decode(payload)
        if isinstance(message, m.Infer):
            self._infer(message)
        elif isinstance(message, m.Cancel):
            future = self.pending.get(message.id)
            if future is not None:
                future.cancel()
        elif isinstance(message, m.Shed):
            self.engine.shed(message.model, message.count)
        elif isinstance(message, m.Reload):
            self.server._spawn(self._reload(message.id))
        elif isinstance(message, m.MetricsRequest):
            self._send(m.MetricsText(message.id, generate_latest(self.server.registry)))
        elif isinstance(message, m.IndexRequest):
            self.server._spawn(self._index(message.id))
        elif isinstance(message, m.LoadModel):
            self.server._spawn(self._change(message.id, partial(self.engine.load_model, message.name)))
        elif isinstance(message, m.UnloadModel):
            self.server._spawn(self._change(message.id, partial(self.engine.unload_model, message.name)))

    def _infer(self, message: m.Infer) -> None:
        try:
            images = self._images(message.images)
            on_exit = partial(self._finish, message.id) if message.request.stream else None
            future = self.engine.submit(message.request, torch.from_numpy(images), on_exit)
        except Exception as exc:
            self._send(failure(message.id, exc))
            return
        self.pending[message.id] = future
        future.add_done_callback(lambda done: self._finish(message.id, done))
        self.server.publish_status(STATUS_EVENT_SECONDS)

    def _finish(self, request_id: int, outcome: Future[EngineResult] | ExitEvent) -> None:
        """Any thread: queue the answer (or exit event), and wake the loop unless a drain is already on
        its way."""
        self._finished.append((request_id, outcome))
        with self._drain_lock:
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to answer
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """Loop thread: answer every finished request. The flag drops first, so an answer queued while
        this runs either is taken here or schedules the next drain."""
        with self._drain_lock:
            self._drain_scheduled = False
        while self._finished:
            request_id, outcome = self._finished.popleft()
            if isinstance(outcome, ExitEvent):
                self._send(m.Exited(request_id, outcome.image, outcome.result, outcome.final))
            else:
                self._answer(request_id, outcome)

    def _images(self, ref: m.ImageRef) -> np.ndarray:
        if ref.pool is not None:
            self.pools.add(ref.pool)
            return self.server.pools.take(ref.pool, ref.pages, ref.shape)
        if ref.data is None:
            raise StageExecutionError("a request arrived without images")
        return np.frombuffer(ref.data, dtype=np.float32).reshape(ref.shape).copy()

    def _answer(self, request_id: int, future: Future[EngineResult]) -> None:
        self.pending.pop(request_id, None)
        if future.cancelled():
            self._send(m.Failure(request_id, "CancelledError", "withdrawn"))
            return
        error = future.exception()
        if error is not None:
            self._send(failure(request_id, error))
        else:
            self._send(answer_message(request_id, future.result()))
        self.server.publish_status(STATUS_EVENT_SECONDS)

    async def _reload(self, request_id: int) -> None:
        report = await self.server.reload()
        if report is None:
            self._send(m.Failure(request_id, "StageExecutionError", "reloading the model store failed"))
        else:
            self._send(m.Reloaded(request_id, report.loaded, report.kept, report.failed, report.removed))

    async def _index(self, request_id: int) -> None:
        try:
            entries = await asyncio.to_thread(self.engine.repository_index)
        except Exception as exc:
            self._send(failure(request_id, exc))
        else:
            self._send(m.RepositoryIndex(request_id, entries))

    async def _change(self, request_id: int, change: Any) -> None:
        try:
            report = await self.server.change_repository(change)
        except Exception as exc:
            self._send(failure(request_id, exc))
        else:
            self._send(m.Reloaded(request_id, report.loaded, report.kept, report.failed, report.removed))

    def _on_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for future in self.pending.values():
            future.cancel()  # nobody is left to answer: queued requests are skipped
        self.pending.clear()
        for pool in self.pools:
            self.server.pools.forget(pool)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    """Run `callback` on `loop` from any thread; nothing when the loop has closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def catalog_message(catalog: Catalog) -> m.Catalog:
    return m.Catalog(
        loaded=catalog.loaded,
        closed=catalog.closed,
        versions=tuple(
            m.CatalogVersion(
                name=entry.name,
                version=entry.version,
                state=entry.state,
                manifest_json=entry.manifest.model_dump_json().encode() if entry.manifest else None,
                device=entry.device,
                default_point=entry.default_point,
                error=entry.error,
            )
            for versions in catalog.models.values()
            for entry in versions.values()
        ),
        unloaded=tuple(sorted(catalog.unloaded)),
    )


def answer_message(request_id: int, result: EngineResult) -> m.Answer:
    return m.Answer(
        id=request_id,
        model=result.model,
        version=result.version,
        operating_point=result.operating_point,
        images=result.images,
        queue_seconds=result.queue_seconds,
        inference_seconds=result.inference_seconds,
    )


def failure(request_id: int, exc: BaseException) -> m.Failure:
    """A domain error by class name and fields; anything else is a stage failure (and logged)."""
    if isinstance(exc, RanetServeError):
        details = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in exc.details.items()}
        return m.Failure(request_id, type(exc).__name__, exc.message, details)
    logger.error("request %d failed in the engine: %r", request_id, exc)
    return m.Failure(request_id, "StageExecutionError", f"inference failed: {exc}")
