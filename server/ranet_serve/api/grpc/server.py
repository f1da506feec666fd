"""The gRPC server of one front-end process: grpc.aio on the process's event loop, beside uvicorn.

`GrpcFrontend.start()` is called from the app's lifespan once the engine client has started, and
`stop()` on shutdown: calls in flight get `graceful_shutdown_seconds` to finish (SIGTERM drains, as
uvicorn does for HTTP), new ones are refused. Several front-end processes share the port through
SO_REUSEPORT (the kernel spreads connections over them; a gRPC channel keeps its connection, so one
client's calls go to one process): grpc cannot serve an inherited listening socket, so each process
binds its own. Alone (`--one-process`, tests) the port is bound without it, so a port that is taken is
an error at start instead of a silent share.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from ranet_serve.api.admission import Admission
from ranet_serve.api.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from ranet_serve.api.grpc.servicer import InferenceServicer, ReadinessHealth
from ranet_serve.api.service import InferenceService

logger = logging.getLogger(__name__)

HEALTH_REFRESH_SECONDS = 1.0  # how often grpc.health.v1 Watch streams see readiness change


def grpc_address(host: str, port: int) -> str:
    """`host:port` as grpc spells it (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcFrontend:
    """`inference.GRPCInferenceService` and grpc.health.v1 on `settings.grpc_port`."""

    def __init__(self, service: InferenceService, admission: Admission, *, reuse_port: bool = False):
        settings = service.settings
        self.settings = settings
        self.servicer = InferenceServicer(service, admission)
        self.health = ReadinessHealth(lambda: service.engine.catalog.ready)
        options: list[tuple[str, Any]] = [
            # A request carries at most what an HTTP body may (RANET_MAX_BODY_BYTES), plus framing.
            ("grpc.max_receive_message_length", settings.max_body_bytes + 64 * 1024),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port (raises RuntimeError when it cannot be bound)."""
        address = grpc_address(self.settings.host, self.settings.grpc_port)
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {address} ({exc}); set RANET_GRPC_PORT") from exc
        await self.server.start()
        await self.health.refresh()
        self._refresher = asyncio.create_task(self._refresh_health())
        logger.info("gRPC (KServe v2, grpc.health.v1) on %s", grpc_address(self.settings.host, self.port))
        return self.port

    async def stop(self) -> None:
        """Refuse new calls, let those in flight finish within the graceful-shutdown time."""
        if self._refresher is not None:
            self._refresher.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresher
        await self.health.enter_graceful_shutdown()  # health says NOT_SERVING from here on
        await self.server.stop(self.settings.graceful_shutdown_seconds)

    async def _refresh_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_SECONDS)
            await self.health.refresh()
