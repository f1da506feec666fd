"""`create_app(settings)`: one FastAPI app with its store, service and metrics, and its lifespan.

Lifespan: the store loads and warms up every bundle on a worker thread while the server already
answers (liveness 200, readiness 503 until done, inference 503 `not_ready`), so an orchestrator can
tell "starting" from "dead". SIGHUP reloads the store (main thread only: signal handlers cannot be
installed elsewhere). On shutdown (SIGTERM under uvicorn) uvicorn first lets in-flight requests finish,
then the lifespan drains and closes every batcher.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from ranet_serve import __version__
from ranet_serve.api import routes_admin, routes_health, routes_v1, routes_v2
from ranet_serve.api.admission import AdmissionGate
from ranet_serve.api.auth import install_auth_handler
from ranet_serve.api.errors import install_error_handlers
from ranet_serve.api.metrics import ServerMetrics
from ranet_serve.api.service import InferenceService
from ranet_serve.api.settings import Settings, get_settings
from ranet_serve.api.store import ModelStore, RuntimeFactory, default_runtime_factory

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, runtime_factory: RuntimeFactory | None = None) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts.

    `runtime_factory` replaces how stage runtimes are created (tests inject slow or failing ones).
    """
    settings = settings or get_settings()
    metrics = ServerMetrics()
    store = ModelStore(settings, metrics, runtime_factory or default_runtime_factory)
    service = InferenceService(settings, store, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(store))
        reloads: set[asyncio.Task[None]] = set()
        hangup = _install_sighup(store, reloads)
        try:
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await asyncio.gather(loader, *reloads, return_exceptions=True)
            await asyncio.to_thread(store.close)
            logger.info("model store closed")

    app = FastAPI(
        title="RANet Serve",
        version=__version__,
        description="Early-exit RANet image classification with per-request compute budgets.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.store = store
    app.state.service = service
    install_error_handlers(app)
    install_auth_handler(app)
    for module in (routes_health, routes_v1, routes_admin, routes_v2):
        app.include_router(module.router)
    app.add_middleware(
        AdmissionGate,
        limit=settings.max_inflight_requests,
        store=store,
        metrics=metrics,
        default_model=settings.default_model,
    )
    return app


async def _load(store: ModelStore) -> None:
    try:
        await asyncio.to_thread(store.load)
    except Exception:
        logger.exception("loading the model store failed")
    finally:
        freeze_heap()


async def _reload(store: ModelStore) -> None:
    try:
        await asyncio.to_thread(store.reload)
    except Exception:
        logger.exception("reloading the model store failed")
    finally:
        freeze_heap()


def freeze_heap() -> int:
    """Take every object alive once the models are loaded out of the cyclic GC's reach; returns how many.

    A loaded server holds a large heap (torch, onnxruntime, pydantic, FastAPI, the bundles), and a full
    collection walks all of it while holding the GIL, which stops the event loop and the batcher alike:
    one such collection took 116 ms under 16 concurrent requests on the dev machine, and every request
    in flight waited for it. Requests only allocate short-lived objects, which the young generations
    still collect; the loaded heap never needs scanning again. Called again after every reload, after
    an unfreeze and a full collection, so the cycles of an unloaded version are still freed.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%d objects alive after loading moved out of the garbage collector's scans", frozen)
    return frozen


def _install_sighup(store: ModelStore, tasks: set[asyncio.Task[None]]) -> bool:
    """SIGHUP -> reload, when this loop runs in the main thread of a POSIX process."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()

    def on_hangup() -> None:
        logger.info("SIGHUP: reloading the model store")
        task = loop.create_task(_reload(store))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        return True
    return False
