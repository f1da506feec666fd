"""v1 routes: classify with budget knobs, list models. Thin: decode, call the service, encode."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from ranet_serve.api.auth import require_api_key
from ranet_serve.api.catalog import describe_model
from ranet_serve.api.deps import get_app_settings, get_catalog
from ranet_serve.api.knobs import knob_schemas, parse_knobs
from ranet_serve.api.schemas_errors import INFERENCE, METADATA, v1_errors
from ranet_serve.api.service import ClassifyRequest, EncodedImages, InferenceService
from ranet_serve.api.v1.codec import encode_v1, read_v1_input
from ranet_serve.api.v1.schemas import ClassifyResponse, ModelInfo, ModelsResponse
from ranet_serve.api.v1.stream import STREAM_PARAMETER, stream_response, wants_stream
from ranet_serve.engine.catalog import Catalog
from ranet_serve.errors import ModelNotFoundError
from ranet_serve.settings import Settings

# Every /v1 route but /v1/admin (its own router, its own key) needs the inference key when one is set.
router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

_KNOB_DOC = {
    **knob_schemas(),
    STREAM_PARAMETER: {
        "type": "boolean",
        "description": "answer with Server-Sent Events, one per exit each image passes (anytime "
        "prediction); also chosen by `Accept: text/event-stream`",
    },
}
_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream` a text/event-stream of `exit` events (ExitEventData) "
        "ending with a `done` (StreamDone) or `error` event",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
_CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        **_KNOB_DOC,
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                        **_KNOB_DOC,
                    },
                }
            },
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    openapi_extra=_CLASSIFY_BODY,
    responses={**_STREAM_RESPONSE, **v1_errors(*INFERENCE)},
)
async def classify_default(request: Request) -> Response:
    """Classify images with the server's default model."""
    return await classify(request, None)


@router.post(
    "/models/{model}/classify",
    response_model=ClassifyResponse,
    openapi_extra=_CLASSIFY_BODY,
    responses={**_STREAM_RESPONSE, **v1_errors(*INFERENCE)},
)
async def classify_model(model: str, request: Request) -> Response:
    """Classify images with a named model (its latest version unless `version` is given)."""
    return await classify(request, model)


async def classify(request: Request, model: str | None) -> Response:
    """The v1 inference handler (`api.dispatch` calls it straight, the routes above declare it).

    Decodes, classifies and encodes inside `service.track`, so an encoding failure counts as the 500
    it answers and the duration covers the whole handler. The body leaves already serialised: no
    `response_model` validation (the model is there for OpenAPI only).
    """
    received = time.monotonic()
    state = request.app.state
    service: InferenceService = state.service
    settings: Settings = state.settings
    tracking = service.track(model)
    async with tracking:
        data = await read_v1_input(request, settings.max_body_bytes, settings.max_images_per_request)
        streamed = wants_stream(request, data.knobs)
        knobs = parse_knobs(data.knobs, also_known=(STREAM_PARAMETER,))
        classify_request = ClassifyRequest(
            images=EncodedImages(data.images),
            model=model,
            version=knobs.version,
            budget=knobs.budget,
            top_k=knobs.top_k,
            deadline_ms=knobs.deadline_ms,
            on_deadline=knobs.on_deadline,
            received=received,
        )
        if streamed:
            updates = service.stream(classify_request)
            first = await anext(updates)  # what fails before the first exit is an ordinary answer
            return stream_response(first, updates, tracking, request.url.path)
        body = encode_v1(await service.classify(classify_request))
    return Response(body, media_type="application/json")


@router.get("/models", response_model=ModelsResponse, responses=v1_errors(401))
async def list_models(
    catalog: Catalog = Depends(get_catalog), settings: Settings = Depends(get_app_settings)
) -> ModelsResponse:
    """Every model in the store with its versions, failed ones included."""
    return ModelsResponse(
        default_model=catalog.default_model(settings.default_model, explicit=settings.default_model_explicit),
        models=[describe_model(name, versions) for name, versions in catalog.snapshot().items()],
    )


@router.get("/models/{model}", response_model=ModelInfo, responses=v1_errors(*METADATA))
async def get_model(model: str, catalog: Catalog = Depends(get_catalog)) -> ModelInfo:
    """One model: versions, state, input spec, labels, exits, operating points."""
    snapshot = catalog.snapshot()
    if model not in snapshot:
        raise ModelNotFoundError(f"model {model[:64]!r} not found; serving: {', '.join(snapshot) or 'none'}")
    return describe_model(model, snapshot[model])
