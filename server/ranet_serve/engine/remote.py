"""A front-end process's client of the engine process (the `EngineClient` contract, across processes).

One Unix-socket connection carries all of this process's requests; one `Infer` message per request
names the pages of this process's shared pool that hold its images. While the engine is away (not
started yet, crashed, restarting) the catalog reads "not loaded", so readiness answers 503 and
inference answers 503 at once; requests in flight when the connection drops fail with 503 as well:
none waits for an engine that is gone. The client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from ranet_serve.engine import messages as m
from ranet_serve.engine.catalog import Catalog, CatalogEntry
from ranet_serve.engine.records import EngineRequest, EngineResult, ExitEvent, ReloadReport, RepositoryEntry
from ranet_serve.engine.shm import SOCKET_NAME, STATUS_NAME, PagePool, StatusBlock
from ranet_serve.engine.transport import FrameProtocol
from ranet_serve.errors import NotReadyError, RanetServeError, StageExecutionError
from ranet_serve.export.manifest import Manifest

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 0.05
SHED_NOTICE_SECONDS = 0.02  # shed counts are sent at most this often (a burst of 429s is one message)
ENGINE_GONE = "the inference engine is not running (starting or restarting); retry shortly"


class RemoteEngine:
    """Owns the connection, the page pools and the requests in flight of one front-end process."""

    def __init__(self, run_dir: Path, pool_bytes: int):
        self.run_dir = run_dir
        self.pool_bytes = pool_bytes
        self.catalog = Catalog()
        self._protocol: FrameProtocol | None = None
        self._lost = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[object], PagePool | None, tuple[int, ...]]] = {}
        self._listeners: dict[int, Callable[[ExitEvent], None]] = {}  # streamed requests in flight
        self._pools: dict[int, PagePool] = {}
        self._status: StatusBlock | None = None
        self._sheds: dict[str, int] = {}
        self._shed_flush: asyncio.TimerHandle | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        self._manifests: dict[bytes, Manifest] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._connector = asyncio.create_task(self._connect_forever())

    async def close(self) -> None:
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            with suppress(asyncio.CancelledError):
                await self._connector
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def _connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        path = str(self.run_dir / SOCKET_NAME)
        while not self._closing:
            try:
                _, protocol = await loop.create_unix_connection(
                    lambda: FrameProtocol(self._on_frame, self._on_lost), path
                )
            except OSError:
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            self._lost.clear()
            self._protocol = protocol
            logger.info("front-end %d connected to the engine", os.getpid())
            await self._lost.wait()  # `_on_lost` failed what was in flight; connect again

    def _on_lost(self, exc: Exception | None) -> None:
        self._protocol = None
        self._lost.set()
        self.catalog = Catalog()
        pending, self._pending = self._pending, {}
        for future, pool, pages in pending.values():
            if pool is not None:
                pool.release(pages)
            if not future.done():
                future.set_exception(NotReadyError(ENGINE_GONE))
        if not self._closing:
            logger.warning(
                "front-end %d lost the engine connection; %d requests failed", os.getpid(), len(pending)
            )

    # -- messages from the engine ----------------------------------------------------------------

    def _on_frame(self, payload: bytes) -> None:
        message = m.to_frontend.decode(payload)
        if isinstance(message, m.Catalog):
            self.catalog = self._catalog(message)
            return
        if isinstance(message, m.Exited):
            listener = self._listeners.get(message.id)
            if listener is not None:
                listener(ExitEvent(message.image, message.result, message.final))
            return
        slot = self._pending.pop(message.id, None)
        if slot is None:
            return
        future, pool, pages = slot
        if pool is not None:
            pool.release(pages)
        if future.done():
            return
        if isinstance(message, m.Answer):
            future.set_result(_result(message))
        elif isinstance(message, m.Failure):
            future.set_exception(_error(message))
        else:
            future.set_result(message)

    def _catalog(self, message: m.Catalog) -> Catalog:
        """The snapshot a catalog message describes; manifests already parsed are reused, and only
        the current ones are kept (a cache keyed by every manifest ever seen would grow per reload)."""
        entries = []
        parsed: dict[bytes, Manifest] = {}
        for version in message.versions:
            manifest = None
            if version.manifest_json is not None:
                manifest = self._manifests.get(version.manifest_json)
                if manifest is None:
                    manifest = Manifest.model_validate_json(version.manifest_json)
                parsed[version.manifest_json] = manifest
            entries.append(
                CatalogEntry(
                    name=version.name,
                    version=version.version,
                    state="ready" if version.state == "ready" else "failed",
                    manifest=manifest,
                    device=version.device,
                    default_point=version.default_point,
                    error=version.error,
                )
            )
        self._manifests = parsed
        return Catalog.of(entries, loaded=message.loaded, closed=message.closed, unloaded=message.unloaded)

    # -- requests ------------------------------------------------------------------------------

    def _send(self, message: m.ToEngine) -> None:
        protocol = self._protocol
        if protocol is None or not protocol.send(m.encoder.encode(message)):
            raise NotReadyError(ENGINE_GONE)

    async def _call(
        self, message_id: int, message: m.ToEngine, pool: PagePool | None = None, pages: tuple[int, ...] = ()
    ) -> object:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (future, pool, pages)
        try:
            self._send(message)
        except NotReadyError:
            self._pending.pop(message_id, None)
            if pool is not None:
                pool.release(pages)
            raise
        try:
            return await future
        except asyncio.CancelledError:
            if message_id in self._pending:  # withdraw it; the pages come back with the engine's answer
                with suppress(NotReadyError):
                    self._send(m.Cancel(message_id))
            raise

    async def infer(
        self, request: EngineRequest, images: np.ndarray, on_exit: Callable[[ExitEvent], None] | None = None
    ) -> EngineResult:
        message_id = next(self._ids)
        pool = self._pool(math.prod(images.shape[1:]))  # math.prod: np.prod of a tuple costs microseconds
        pages = pool.put(images) if pool is not None else None
        if pool is None or pages is None:  # the pool is full (or not made): the pixels travel inline
            pool = None
            ref = m.ImageRef(shape=images.shape, data=images.tobytes())
        else:
            ref = m.ImageRef(shape=images.shape, pool=pool.path.name, pages=pages)
        if on_exit is not None:
            self._listeners[message_id] = on_exit
        try:
            result = await self._call(message_id, m.Infer(message_id, request, ref), pool, pages or ())
        finally:
            if on_exit is not None:
                del self._listeners[message_id]
        assert isinstance(result, EngineResult)
        return result

    def _pool(self, page_floats: int) -> PagePool | None:
        pool = self._pools.get(page_floats)
        if pool is None:
            pages = self.pool_bytes // (4 * page_floats)
            if pages == 0:
                return None
            path = self.run_dir / f"pool-{os.getpid()}-{page_floats}"
            try:
                pool = PagePool(path, page_floats, pages)
            except OSError as exc:
                logger.warning("no shared page pool at %s (%s); images travel in messages", path, exc)
                self.pool_bytes = 0
                return None
            self._pools[page_floats] = pool
        return pool

    async def reload(self) -> ReloadReport:
        message_id = next(self._ids)
        reply = await self._call(message_id, m.Reload(message_id))
        assert isinstance(reply, m.Reloaded)
        return ReloadReport(reply.loaded, reply.kept, reply.failed, reply.removed)

    async def repository_index(self) -> tuple[RepositoryEntry, ...]:
        message_id = next(self._ids)
        reply = await self._call(message_id, m.IndexRequest(message_id))
        assert isinstance(reply, m.RepositoryIndex)
        return reply.entries

    async def load_model(self, name: str) -> ReloadReport:
        message_id = next(self._ids)
        reply = await self._call(message_id, m.LoadModel(message_id, name))
        assert isinstance(reply, m.Reloaded)
        return ReloadReport(reply.loaded, reply.kept, reply.failed, reply.removed)

    async def unload_model(self, name: str) -> ReloadReport:
        message_id = next(self._ids)
        reply = await self._call(message_id, m.UnloadModel(message_id, name))
        assert isinstance(reply, m.Reloaded)
        return ReloadReport(reply.loaded, reply.kept, reply.failed, reply.removed)

    async def metrics_text(self) -> bytes:
        """Every front-end's request metrics (multiprocess files) and the engine's own set."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        text = generate_latest(registry)
        message_id = next(self._ids)
        with suppress(NotReadyError):  # without the engine, the front-ends' part still answers
            reply = await asyncio.wait_for(self._call(message_id, m.MetricsRequest(message_id)), 5.0)
            assert isinstance(reply, m.MetricsText)
            text += reply.text
        return text

    @contextmanager
    def arriving(self, model: str, version: str | None) -> Iterator[None]:
        yield  # across processes the engine's batches close when its queue is empty

    def shed(self, model: str) -> None:
        self._sheds[model] = self._sheds.get(model, 0) + 1
        if self._shed_flush is None:
            self._shed_flush = asyncio.get_running_loop().call_later(SHED_NOTICE_SECONDS, self._flush_sheds)

    def _flush_sheds(self) -> None:
        self._shed_flush = None
        sheds, self._sheds = self._sheds, {}
        for model, count in sheds.items():
            with suppress(NotReadyError):
                self._send(m.Shed(model, count))

    def queued_requests(self) -> int:
        if self._status is None:
            try:
                self._status = StatusBlock(self.run_dir / STATUS_NAME, create=False)
            except OSError:
                return 0
        return int(self._status.queued_requests)


def _result(message: m.Answer) -> EngineResult:
    return EngineResult(
        model=message.model,
        version=message.version,
        operating_point=message.operating_point,
        images=message.images,
        queue_seconds=message.queue_seconds,
        inference_seconds=message.inference_seconds,
    )


def _error_classes() -> dict[str, type[RanetServeError]]:
    found: dict[str, type[RanetServeError]] = {}
    todo: list[type[RanetServeError]] = [RanetServeError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


_ERRORS = _error_classes()


def _error(message: m.Failure) -> BaseException:
    if message.error == "CancelledError":
        return asyncio.CancelledError()
    cls = _ERRORS.get(message.error, StageExecutionError)
    try:
        return cls(message.message, **message.details)
    except TypeError:
        return cls(message.message)
