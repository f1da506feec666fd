"""Liveness, readiness and metrics. Readiness asks the store; it never loads anything itself."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ranet_serve.api.deps import get_metrics, get_store
from ranet_serve.api.metrics import ServerMetrics
from ranet_serve.api.schemas_errors import Readiness
from ranet_serve.api.store import ModelStore, ReadyVersion

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Live: the process answers (bundles may still be loading)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"model": Readiness, "description": "ready"},
        503: {"model": Readiness, "description": "loading, or no model serves"},
    },
)
async def readyz(store: ModelStore = Depends(get_store)) -> JSONResponse:
    """200 once the bundles are loaded and warmed up and at least one serves; 503 before."""
    return readiness(store)


def readiness(store: ModelStore) -> JSONResponse:
    if not store.loaded:
        return JSONResponse({"ready": False, "status": "loading"}, status_code=503)
    models = {
        name: [v.version for v in versions if isinstance(v, ReadyVersion)]
        for name, versions in store.snapshot().items()
    }
    if not store.ready:
        return JSONResponse({"ready": False, "status": "no model serves", "models": models}, status_code=503)
    return JSONResponse({"ready": True, "status": "ready", "models": models})


@router.get("/metrics", include_in_schema=False)
async def metrics(registry: ServerMetrics = Depends(get_metrics)) -> Response:
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
