"""KServe v2 / Open Inference Protocol routes. Thin: decode the tensor, call the service, encode."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ranet_serve import __version__
from ranet_serve.api.auth import require_api_key
from ranet_serve.api.body import read_body
from ranet_serve.api.deps import get_catalog
from ranet_serve.api.knobs import knob_schemas
from ranet_serve.api.routes_health import readiness
from ranet_serve.api.schemas_errors import (
    INFERENCE,
    METADATA,
    V2ModelReadiness,
    V2Readiness,
    v2_errors,
)
from ranet_serve.api.service import InferenceService
from ranet_serve.api.v2.codec import (
    HEADER_LENGTH,
    PROTOCOL_PARAMETERS,
    describe_model,
    encode_infer_response,
    parse_infer_request,
)
from ranet_serve.engine.catalog import Catalog
from ranet_serve.errors import InvalidRequestError, NotReadyError
from ranet_serve.settings import Settings

# Health, readiness and server metadata stay open; model metadata and inference need the API key
# when one is set (`api/auth.py`).
_PROTECTED = [Depends(require_api_key)]

router = APIRouter(prefix="/v2", tags=["v2"])

# The JSON form of an inference request (`schemas_v2.InferenceRequest`), for the OpenAPI schema: the
# route reads the raw body itself because the binary extension puts tensor bytes after the JSON.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "maxLength": 256},
        "shape": {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
        "datatype": {"type": "string", "maxLength": 16, "description": "FP32 [N,C,H,W] or BYTES [N]"},
        "parameters": {"type": "object"},
        "data": {"description": "FP32 numbers (flat or nested), or base64 strings for BYTES"},
    },
}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string", "maxLength": 256},
                        "parameters": {
                            "type": "object",
                            "description": "the knobs v1 takes, and standard Triton parameters (v2/codec.py)",
                            "properties": {**knob_schemas(), **PROTOCOL_PARAMETERS},
                            "additionalProperties": False,
                        },
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 16},
                        "outputs": {
                            "type": "array",
                            "maxItems": 16,
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor extension: JSON header, then the tensor bytes",
            },
        },
    }
}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "ranet-serve",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    responses={200: {"model": V2Readiness}, 503: {"model": V2Readiness, "description": "not ready"}},
)
async def ready(catalog: Catalog = Depends(get_catalog)) -> JSONResponse:
    answer = readiness(catalog)
    return JSONResponse({"ready": answer.status_code == 200}, status_code=answer.status_code)


@router.get("/models/{model}", dependencies=_PROTECTED, responses=v2_errors(*METADATA))
@router.get("/models/{model}/versions/{version}", dependencies=_PROTECTED, responses=v2_errors(*METADATA))
async def metadata(
    model: str, version: str | None = None, catalog: Catalog = Depends(get_catalog)
) -> dict[str, Any]:
    """Inputs (FP32 [N,C,H,W] or BYTES images) and outputs of a model version."""
    return describe_model(catalog, model, version)


_MODEL_READY: dict[int | str, dict[str, Any]] = {
    200: {"model": V2ModelReadiness},
    503: {"model": V2ModelReadiness, "description": "not ready (loading, or failed to load)"},
    **v2_errors(404, 422),
}


@router.get("/models/{model}/ready", responses=_MODEL_READY)
@router.get("/models/{model}/versions/{version}/ready", responses=_MODEL_READY)
async def model_ready(
    model: str, version: str | None = None, catalog: Catalog = Depends(get_catalog)
) -> JSONResponse:
    try:
        entry = catalog.find(model, version)
    except NotReadyError:  # still loading: "is it ready?" has an answer, no
        return JSONResponse({"name": model, "ready": False}, status_code=503)
    ok = entry.ready
    return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)


@router.post(
    "/models/{model}/infer",
    dependencies=_PROTECTED,
    responses=v2_errors(*INFERENCE),
    openapi_extra=_INFER_BODY,
)
@router.post(
    "/models/{model}/versions/{version}/infer",
    dependencies=_PROTECTED,
    responses=v2_errors(*INFERENCE),
    openapi_extra=_INFER_BODY,
)
async def infer_route(model: str, request: Request, version: str | None = None) -> Response:
    """Classify an FP32 tensor or BYTES images; v1's knobs (`top_k` too) in the request's `parameters`."""
    return await infer(request, model, version)


async def infer(request: Request, model: str, version: str | None) -> Response:
    """The v2 inference handler (`api.dispatch` calls it straight, the routes above declare it)."""
    received = time.monotonic()
    state = request.app.state
    service: InferenceService = state.service
    settings: Settings = state.settings
    async with service.track(model):
        version = _query_version(request, version)
        body = await read_body(request, settings.max_body_bytes)
        decoded = await run_in_threadpool(parse_infer_request, body, request.headers.get(HEADER_LENGTH))
        result = await service.classify(
            decoded.classify_request(model, version, received, decoded.deadline_ms)
        )
        content, headers, media_type = encode_infer_response(decoded, result)
    return Response(content, headers=headers, media_type=media_type)


def _query_version(request: Request, path_version: str | None) -> str | None:
    """`?version=` as the metadata and readiness routes take it (FastAPI reads their query); any other
    query key is refused: v2 takes its parameters in the body, and an ignored key is a silent typo."""
    query = request.query_params
    if not query:
        return path_version
    unknown = sorted(key for key in query if key != "version")
    if unknown:
        raise InvalidRequestError(
            f"unknown query parameter {unknown[0][:40]!r}: v2 inference takes its parameters in the "
            "request body's 'parameters' (the query may name only the version)"
        )
    given = query.getlist("version")
    if len(given) > 1:
        raise InvalidRequestError("version is given more than once in the query")
    if path_version is not None and given[0] != path_version:
        raise InvalidRequestError(
            f"version is given both in the path ({path_version[:64]!r}) and in the query ({given[0][:64]!r})"
        )
    return given[0]
