"""Admin routes: reload the model store without a restart (the same as SIGHUP)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ranet_serve.api.auth import require_admin_key
from ranet_serve.api.catalog import describe_model
from ranet_serve.api.deps import get_engine
from ranet_serve.api.schemas_errors import ErrorResponse, v1_errors
from ranet_serve.api.v1.schemas import ReloadResponse
from ranet_serve.engine.client import EngineClient

# The admin key (or, without one, the inference key) guards every admin route; with neither, only
# loopback may call them.
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **v1_errors(401, 500, 503),
    403: {
        "model": ErrorResponse,
        "description": "no admin key is set and the request did not come from loopback (admin_disabled)",
    },
}


@router.post("/reload", response_model=ReloadResponse, responses=ADMIN_ERRORS)
async def reload_models(engine: EngineClient = Depends(get_engine)) -> ReloadResponse:
    """Rescan the store: load new or changed versions, retire removed ones after they drain."""
    report = await engine.reload()
    return ReloadResponse(
        loaded=list(report.loaded),
        kept=list(report.kept),
        failed=list(report.failed),
        removed=list(report.removed),
        models=[describe_model(name, versions) for name, versions in engine.catalog.snapshot().items()],
    )
