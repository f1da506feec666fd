"""Admin routes: reload the model store without a restart (the same as SIGHUP)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from ranet_serve.api.catalog import describe_model
from ranet_serve.api.deps import get_store
from ranet_serve.api.schemas_v1 import ReloadResponse
from ranet_serve.api.store import ModelStore

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/reload", response_model=ReloadResponse)
async def reload_models(store: ModelStore = Depends(get_store)) -> ReloadResponse:
    """Rescan the store: load new or changed versions, retire removed ones after they drain."""
    report = await asyncio.to_thread(store.reload)
    return ReloadResponse(
        loaded=list(report.loaded),
        kept=list(report.kept),
        failed=list(report.failed),
        removed=list(report.removed),
        models=[describe_model(name, versions) for name, versions in store.snapshot().items()],
    )
