"""Error bodies as OpenAPI documents them, and the `responses=` tables routes declare.

`api/errors.py` builds these bodies; declaring them here makes the schema tell the truth about every
4xx/5xx a route answers, so a client generator (or a schema fuzzer checking conformance) sees the real
shapes instead of FastAPI's default `{"detail": [...]}` validation body, which this server never sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable error code, e.g. invalid_budget")
    message: str
    details: dict[str, Any] | None = Field(None, description="structured fields: the limit, the image index")
    error_id: str | None = Field(None, description="quote it when reporting a 500; it is in the server log")


class ErrorResponse(BaseModel):
    """v1 and every route outside /v2."""

    error: ErrorDetail


class V2ErrorResponse(BaseModel):
    """Open Inference Protocol: the message is a string; the stable code travels beside it."""

    error: str
    code: str
    error_id: str | None = None


class Readiness(BaseModel):
    ready: bool
    status: str
    models: dict[str, list[str]] | None = None


class V2Readiness(BaseModel):
    ready: bool


class V2ModelReadiness(BaseModel):
    name: str
    ready: bool


_WHY = {
    400: "undecodable image, malformed body or tensor",
    401: "API key missing or wrong (only when the server has one)",
    404: "unknown model, version or route",
    408: "the request body did not arrive in time (slow or stalled client)",
    413: "body, image, pixels or images per request over the limit",
    415: "unsupported Content-Type or Content-Encoding",
    422: "a knob or field has the wrong type or range; or the budget cannot be honoured",
    429: "queue full: retry after the Retry-After header",
    500: "a stage failed or an unexpected error (with an error id)",
    503: "not ready: still loading, or the version failed to load",
    504: "the deadline passed before an answer",
}

INFERENCE = (400, 401, 404, 408, 413, 415, 422, 429, 500, 503, 504)
METADATA = (401, 404, 422, 503)  # 422: FastAPI's parameter validation, in our shape


def v1_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for v1 routes (the `{"error": {"code", "message"}}` shape)."""
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in statuses}


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for /v2 routes (the `{"error": "<message>", "code"}` shape)."""
    return {status: {"model": V2ErrorResponse, "description": _WHY[status]} for status in statuses}
