"""The one table from domain errors to HTTP answers (and its gRPC twin), and the handlers `create_app`
registers once.

Every error answers JSON. v1 and the rest of the server answer `{"error": {"code", "message", ...}}`.
Under `/v2` the Open Inference Protocol prescribes `{"error": "<message>"}` and standard clients
(tritonclient) print that field as a string, so there the message stays a string and the stable code
travels beside it as `"code"`. Unexpected failures get an error id that is logged with the traceback,
so an operator can find the cause of a 500 a client reports.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ranet_serve.errors import (
    BudgetError,
    DeadlineExceededError,
    InvalidInputError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RanetServeError,
    StageExecutionError,
    UnsupportedMediaTypeError,
)

logger = logging.getLogger(__name__)


class BodyTimeoutError(RanetServeError):
    """The request body did not arrive within `body_read_timeout_s` (a slow or stalled client)."""

    code = "request_timeout"


class ClientDisconnectedError(RanetServeError):
    """The client closed the connection before its request body arrived: nobody is left to answer.

    Answered 499 (nginx's "client closed request") so metrics tell it from server failures; it is not
    logged as an error, since a client going away is not a fault of the server.
    """

    code = "client_disconnected"


# Most specific first: the first class an error is an instance of decides its status.
STATUS_TABLE: tuple[tuple[type[RanetServeError], int], ...] = (
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (InvalidRequestError, 422),
    (InvalidInputError, 400),
    (BudgetError, 422),
    (ModelNotFoundError, 404),
    (ModelLoadError, 400),  # Triton's status for a failed load (repository extension)
    (OverloadedError, 429),
    (NotReadyError, 503),
    (DeadlineExceededError, 504),
    (StageExecutionError, 500),
    (BodyTimeoutError, 408),
    (ClientDisconnectedError, 499),
)

# The same errors over gRPC (`api/grpc`), keyed the same way: one row per row above, in the same order
# (tests/api/test_api_grpc.py checks both tables name the same classes). Shed requests are
# RESOURCE_EXHAUSTED, as gRPC's own flow control says "try later"; every kind of bad input is
# INVALID_ARGUMENT, the one code gRPC clients treat as "do not retry as is".
GRPC_STATUS_TABLE: tuple[tuple[type[RanetServeError], grpc.StatusCode], ...] = (
    (PayloadTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaTypeError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (BudgetError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),  # a bundle in the store that does not load
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (StageExecutionError, grpc.StatusCode.INTERNAL),
    (BodyTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ClientDisconnectedError, grpc.StatusCode.CANCELLED),
)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def status_for(exc: BaseException) -> int:
    """The HTTP status an exception answers with (500 for anything unexpected)."""
    if isinstance(exc, RanetServeError):
        for cls, status in STATUS_TABLE:
            if isinstance(exc, cls):
                return status
        return 500
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    return 500


def grpc_status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code an exception answers with (INTERNAL for anything unexpected)."""
    if isinstance(exc, RanetServeError):
        for cls, code in GRPC_STATUS_TABLE:
            if isinstance(exc, cls):
                return code
    return grpc.StatusCode.INTERNAL


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    details: dict[str, Any] | None = None,
    error_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Shape the body for the protocol of the path the request came in on."""
    body = error_body(request.url.path, code, message, details=details, error_id=error_id)
    return JSONResponse(body, status_code=status, headers=headers)


def error_body(
    path: str,
    code: str,
    message: str,
    *,
    details: dict[str, Any] | None = None,
    error_id: str | None = None,
) -> dict[str, Any]:
    """The error document for `path`'s protocol (also used where no Request exists: the admission gate)."""
    body: dict[str, Any]
    if path == "/v2" or path.startswith("/v2/"):
        body = {"error": message, "code": code}
        if error_id is not None:
            body["error_id"] = error_id
    else:
        inner: dict[str, Any] = {"code": code, "message": message}
        if details:
            inner["details"] = details
        if error_id is not None:
            inner["error_id"] = error_id
        body = {"error": inner}
    return body


def _json_details(details: dict[str, object]) -> dict[str, Any]:
    """Only plain, finite values: details must never make the error answer itself fail."""
    clean: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            clean[key] = value
    return clean


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RanetServeError)
    status = status_for(exc)
    headers: dict[str, str] | None = None
    error_id: str | None = None
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_seconds)))}
    elif isinstance(exc, NotReadyError):
        headers = {"Retry-After": "1"}
    elif isinstance(exc, BodyTimeoutError):
        headers = {"Connection": "close"}  # the rest of a stalled body must not hold the connection
    if status >= 500 and not isinstance(exc, NotReadyError | DeadlineExceededError):
        error_id = uuid.uuid4().hex[:16]
        logger.error("error %s on %s %s: %s", error_id, request.method, request.url.path, exc, exc_info=exc)
    return error_response(
        request,
        status,
        exc.code,
        exc.message,
        details=_json_details(exc.details),
        error_id=error_id,
        headers=headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors:
        first = errors[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
        message = f"{where}: {first.get('msg', 'invalid value')}"
    else:
        message = "invalid request"
    return error_response(request, 422, "invalid_request", message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return error_response(
        request, exc.status_code, code, message, headers=dict(exc.headers) if exc.headers else None
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:16]
    logger.error("error %s on %s %s: unexpected", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(
        request, 500, "internal_error", f"internal error (error id {error_id})", error_id=error_id
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler; called once by `create_app`."""
    app.add_exception_handler(RanetServeError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
