"""Liveness, readiness and metrics. Readiness reads the engine's catalog; it never loads anything."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ranet_serve.api.deps import get_catalog, get_engine
from ranet_serve.api.schemas_errors import Readiness
from ranet_serve.engine.catalog import Catalog
from ranet_serve.engine.client import EngineClient

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
async def readyz(catalog: Catalog = Depends(get_catalog)) -> JSONResponse:
    """200 once the bundles are loaded and warmed up and at least one serves; 503 before."""
    return readiness(catalog)


def readiness(catalog: Catalog) -> JSONResponse:
    if not catalog.loaded:
        return JSONResponse({"ready": False, "status": "loading"}, status_code=503)
    models = {name: [v.version for v in versions if v.ready] for name, versions in catalog.snapshot().items()}
    if not catalog.ready:
        return JSONResponse({"ready": False, "status": "no model serves", "models": models}, status_code=503)
    return JSONResponse({"ready": True, "status": "ready", "models": models})


@router.get("/metrics", include_in_schema=False)
async def metrics(engine: EngineClient = Depends(get_engine)) -> Response:
    return Response(await engine.metrics_text(), media_type=CONTENT_TYPE_LATEST)
