"""`create_app(settings)`: one FastAPI front-end over an engine, with its service, metrics and lifespan.

Without an `engine` argument the engine runs in this process (`LocalEngine`): the store loads and
warms up every bundle on a worker thread while the server already answers (liveness 200, readiness
503 until done, inference 503 `not_ready`), so an orchestrator can tell "starting" from "dead". A
front-end process of a multi-process server passes its `RemoteEngine` instead. SIGHUP reloads the
store through the same path as `POST /v1/admin/reload` (main thread only: signal handlers cannot be
installed elsewhere). On shutdown (SIGTERM under uvicorn) uvicorn first lets in-flight requests
finish, then the lifespan closes the engine client (in process: drains every scheduler).

With `RANET_GRPC_PORT` set (8081 by default) the lifespan also serves KServe v2 over gRPC (`api/grpc`)
from the same service, engine client and admission; on shutdown its calls in flight finish before the
engine client closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from fastapi import FastAPI

from ranet_serve import __version__
from ranet_serve.api import routes_admin, routes_health
from ranet_serve.api.admission import Admission, AdmissionGate, adaptive_limit
from ranet_serve.api.auth import install_auth_handler
from ranet_serve.api.dispatch import InferenceDispatch
from ranet_serve.api.errors import install_error_handlers
from ranet_serve.api.service import InferenceService
from ranet_serve.api.v1 import routes as routes_v1
from ranet_serve.api.v2 import repository as routes_repository
from ranet_serve.api.v2 import routes as routes_v2
from ranet_serve.engine.client import EngineClient
from ranet_serve.metrics import RequestMetrics
from ranet_serve.settings import Settings, get_settings

if TYPE_CHECKING:
    from ranet_serve.engine.registry import RuntimeFactory

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    runtime_factory: RuntimeFactory | None = None,
    engine: EngineClient | None = None,
    request_metrics: RequestMetrics | None = None,
    grpc_reuse_port: bool = False,
) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts.

    `runtime_factory` replaces how stage runtimes are created (tests inject slow or failing ones);
    `engine` and `request_metrics` come from a front-end process of a multi-process server, which
    shares the gRPC port with its siblings (`grpc_reuse_port`).
    """
    settings = settings or get_settings()
    if engine is None:
        # Imported here: a front-end process of a multi-process server never loads torch or onnxruntime.
        from ranet_serve.engine.local import LocalEngine
        from ranet_serve.engine.registry import default_runtime_factory

        local = LocalEngine.build(settings, runtime_factory or default_runtime_factory)
        engine, request_metrics = local, RequestMetrics(local.registry)
    metrics = request_metrics or RequestMetrics()
    limit = adaptive_limit(settings)
    service = InferenceService(settings, engine, metrics, on_served=limit.observe_service)
    admission = Admission(settings=settings, engine=engine, metrics=metrics, adaptive=limit)
    client = engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.start()
        reloads: set[asyncio.Task[None]] = set()
        hangup = _install_sighup(client, reloads)
        grpc_frontend = None
        try:
            if settings.grpc_port:
                # Imported here: a server without gRPC never loads grpc's C core.
                from ranet_serve.api.grpc.server import GrpcFrontend

                grpc_frontend = GrpcFrontend(service, admission, reuse_port=grpc_reuse_port)
                await grpc_frontend.start()
            app.state.grpc = grpc_frontend
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if grpc_frontend is not None:
                await grpc_frontend.stop()  # lets calls in flight finish, as uvicorn did for HTTP
            await asyncio.gather(*reloads, return_exceptions=True)
            await client.close()

    app = FastAPI(
        title="RANet Serve",
        version=__version__,
        description="Early-exit RANet image classification with per-request compute budgets.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks off: this server's observability is Prometheus (`/metrics`),
        # and with them on every request asked OpenTelemetry whether a provider was configured (2% of a
        # front-end's CPU per single-image request, py-spy under 16 hey clients).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # `/v1/classify/` is a 404 like any unknown path, not a 307 to a URL built from the client's
        # own Host header.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.service = service
    app.state.admission = admission  # one per process: HTTP's gate and the gRPC servicer share it
    app.state.grpc = None  # the GrpcFrontend while the lifespan runs with a gRPC port
    install_error_handlers(app)
    install_auth_handler(app)
    for module in (routes_health, routes_v1, routes_admin, routes_v2, routes_repository):
        app.include_router(module.router)
    # Added first, so it runs inside the gate: only admitted inference requests reach it.
    app.add_middleware(InferenceDispatch, settings=settings)
    app.add_middleware(
        AdmissionGate, settings=settings, engine=engine, metrics=metrics, adaptive=limit, admission=admission
    )
    return app


def _install_sighup(engine: EngineClient, tasks: set[asyncio.Task[None]]) -> bool:
    """SIGHUP -> the admin reload's path, when this loop runs in the main thread of a POSIX process."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()

    async def reload() -> None:
        with suppress(Exception):  # logged by the engine client
            await engine.reload()

    def on_hangup() -> None:
        logger.info("SIGHUP: reloading the model store")
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        return True
    return False
