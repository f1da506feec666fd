"""KServe v2 / Open Inference Protocol routes. Thin: decode the tensor, call the service, encode."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ranet_serve import __version__
from ranet_serve.api.body import read_body
from ranet_serve.api.deps import get_app_settings, get_service, get_store
from ranet_serve.api.knobs import parse_knobs
from ranet_serve.api.routes_health import readiness
from ranet_serve.api.service import ClassifyRequest, InferenceService
from ranet_serve.api.settings import Settings
from ranet_serve.api.store import FailedVersion, ModelStore, ReadyVersion, version_key
from ranet_serve.api.v2_codec import HEADER_LENGTH, encode_infer_response, model_metadata, parse_infer_request
from ranet_serve.errors import NotReadyError

router = APIRouter(prefix="/v2", tags=["v2"])


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "ranet-serve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(store: ModelStore = Depends(get_store)) -> JSONResponse:
    answer = readiness(store)
    return JSONResponse({"ready": answer.status_code == 200}, status_code=answer.status_code)


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def metadata(
    model: str, version: str | None = None, store: ModelStore = Depends(get_store)
) -> dict[str, Any]:
    """Inputs (FP32 [N,C,H,W] or BYTES images) and outputs of a model version."""
    entry = store.find(model, version)
    if isinstance(entry, FailedVersion):
        raise NotReadyError(f"model {model!r} version {entry.version!r} failed to load: {entry.error}")
    ready_versions = sorted(
        (v.version for v in store.snapshot()[model] if isinstance(v, ReadyVersion)), key=version_key
    )
    return model_metadata(model, [entry.version] if version else ready_versions, entry.manifest)


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(
    model: str, version: str | None = None, store: ModelStore = Depends(get_store)
) -> JSONResponse:
    entry = store.find(model, version)
    ok = isinstance(entry, ReadyVersion)
    return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(
    model: str,
    request: Request,
    version: str | None = None,
    service: InferenceService = Depends(get_service),
    settings: Settings = Depends(get_app_settings),
) -> Response:
    """Classify an FP32 tensor or BYTES images; budget knobs in the request's `parameters`."""
    received = time.monotonic()
    async with service.track(model):
        body = await read_body(request, settings.max_body_bytes)
        decoded = await run_in_threadpool(parse_infer_request, body, request.headers.get(HEADER_LENGTH))
        knobs = parse_knobs(decoded.knobs)
        result = await service.classify(
            ClassifyRequest(
                images=decoded.images,
                model=model,
                version=version,
                budget=knobs.budget,
                all_probabilities=decoded.wants_probabilities,
                deadline_ms=decoded.deadline_ms,
                received=received,
            )
        )
        content, headers, media_type = encode_infer_response(decoded, result)
    return Response(content, headers=headers, media_type=media_type)
