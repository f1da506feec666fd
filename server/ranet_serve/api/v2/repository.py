"""Triton's model repository extension on REST: index, load and unload models without a restart.

`POST /v2/repository/index`, `POST /v2/repository/models/{name}/load`, `.../unload`, as Triton serves
them (tritonclient's `get_model_repository_index`, `load_model`, `unload_model` work unchanged). They
change what the server serves, so they are admin routes: the admin key guards them exactly as it
guards `/v1/admin` (`api/auth.py`; without a key, loopback only). Errors answer in the v2 shape
(`{"error": "<message>", "code"}`): 404 for a model the store does not hold, 400 (Triton's status for
a failed load) with each failing version's reason, 503 while the engine is away.

Load (re)reads that model's versions from the model store (unchanged ones keep serving, new or changed
ones load, removed ones are retired) and answers once they serve. Unload takes the model out of what
the front-ends route at once (new requests answer 404 saying it was unloaded, as Triton answers for an
unloaded model), lets its in-flight requests finish, releases its runtimes and then answers; the model
stays unloaded across reloads and SIGHUP until it is loaded again (Triton's explicit mode). Readiness,
`/v1/models`, v2 metadata and `ranet_model_info` follow both.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ranet_serve.api.auth import require_admin_key
from ranet_serve.api.body import read_body
from ranet_serve.api.deps import get_engine
from ranet_serve.api.schemas_errors import V2ErrorResponse
from ranet_serve.engine.client import EngineClient
from ranet_serve.engine.records import ReloadReport, RepositoryState
from ranet_serve.errors import InvalidInputError

router = APIRouter(
    prefix="/v2/repository", tags=["v2", "repository"], dependencies=[Depends(require_admin_key)]
)

MAX_BODY_BYTES = 64 * 1024  # the bodies are a few flags; nothing here reads a model from the request


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields of other servers' dialects are not errors


class RepositoryIndexRequest(_Lenient):
    ready: bool = Field(False, description="list only the versions that are ready for inference")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: RepositoryState = Field(description="READY, UNAVAILABLE or LOADING")
    reason: str = Field(description="why the version is UNAVAILABLE: its load error, 'unloaded', ...")


class RepositoryModelRequest(_Lenient):
    parameters: dict[str, Any] | None = Field(
        None,
        description="load: none are supported (bundles come from the model store); unload: "
        "`unload_dependents` is accepted (RANet models have no dependents)",
    )


class RepositoryChangeResponse(BaseModel):
    """What a load or unload changed ("name/version" each); Triton answers an empty body, which
    clients ignore, so the report is extra."""

    name: str
    loaded: list[str]
    kept: list[str]
    failed: list[str]
    removed: list[str]


def _errors(**why: str) -> dict[int | str, dict[str, Any]]:
    return {int(status[1:]): {"model": V2ErrorResponse, "description": text} for status, text in why.items()}


_COMMON = {
    "_400": "malformed body, or an unsupported parameter",
    "_401": "admin key (or API key) missing or wrong, when the server has one",
    "_403": "no admin key is set and the request did not come from loopback (admin_disabled)",
    "_422": "a path parameter failed FastAPI's validation (in the v2 error shape)",
    "_503": "the engine is not running (starting or restarting), or the server is shutting down",
}
INDEX_ERRORS = _errors(**_COMMON)
LOAD_ERRORS = _errors(
    **{**_COMMON, "_400": _COMMON["_400"] + "; or a version failed to load (load_failed, with the reasons)"},
    _404="the model store has no model of that name",
)
UNLOAD_ERRORS = _errors(**_COMMON, _404="the model is neither served nor in the model store")


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON body for the OpenAPI schema: the routes read the body themselves, since Triton's
    clients send an empty one (no JSON at all) for the defaults."""
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


M = TypeVar("M", bound=BaseModel)


async def _parse(request: Request, model: type[M]) -> M:
    """The request body as `model`; an empty body is the defaults (tritonclient sends one for index)."""
    body = await read_body(request, MAX_BODY_BYTES)
    if not body.strip():
        return model()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise InvalidInputError(
            f"invalid request body: {where}: {first.get('msg', 'invalid value')}"
        ) from exc


def _changed(name: str, report: ReloadReport) -> RepositoryChangeResponse:
    return RepositoryChangeResponse(
        name=name,
        loaded=list(report.loaded),
        kept=list(report.kept),
        failed=list(report.failed),
        removed=list(report.removed),
    )


@router.post(
    "/index",
    response_model=list[RepositoryIndexEntry],
    responses=INDEX_ERRORS,
    openapi_extra=_body_schema(RepositoryIndexRequest),
)
async def repository_index(
    request: Request, engine: EngineClient = Depends(get_engine)
) -> list[RepositoryIndexEntry]:
    """Every version of every model in the model store, served or not, with its state and reason."""
    wanted = await _parse(request, RepositoryIndexRequest)
    return [
        RepositoryIndexEntry(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in await engine.repository_index()
        if e.state == "READY" or not wanted.ready
    ]


@router.post(
    "/models/{model}/load",
    response_model=RepositoryChangeResponse,
    responses=LOAD_ERRORS,
    openapi_extra=_body_schema(RepositoryModelRequest),
)
async def load_model(
    model: str, request: Request, engine: EngineClient = Depends(get_engine)
) -> RepositoryChangeResponse:
    """Load the model's versions from the model store, or reload the ones that changed; answers once
    they serve."""
    parameters = (await _parse(request, RepositoryModelRequest)).parameters or {}
    for key in parameters:
        raise InvalidInputError(
            f"load parameter {key[:64]!r} is not supported: models load from their bundles in the model "
            "store (ranet export writes them)"
        )
    return _changed(model, await engine.load_model(model))


@router.post(
    "/models/{model}/unload",
    response_model=RepositoryChangeResponse,
    responses=UNLOAD_ERRORS,
    openapi_extra=_body_schema(RepositoryModelRequest),
)
async def unload_model(
    model: str, request: Request, engine: EngineClient = Depends(get_engine)
) -> RepositoryChangeResponse:
    """Stop serving the model: new requests for it answer 404 at once; answers once its in-flight
    requests have finished and its runtimes are released."""
    parameters = (await _parse(request, RepositoryModelRequest)).parameters or {}
    for key, value in parameters.items():
        if key != "unload_dependents" or not isinstance(value, bool):
            raise InvalidInputError(
                f"unload parameter {key[:64]!r} is not supported (only the boolean unload_dependents)"
            )
    return _changed(model, await engine.unload_model(model))
