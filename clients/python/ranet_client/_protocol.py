"""What the sync and async clients share: building requests and reading answers, with no I/O.

Keeping this free of I/O is what lets both clients stay thin loops around `httpx` and lets the error
mapping be tested without a server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from ranet_client.budget import Knobs
from ranet_client.errors import (
    ConnectionFailedError,
    RanetError,
    RequestTimeoutError,
    error_class,
)
from ranet_client.images import EncodedImage
from ranet_client.retry import parse_retry_after

Encoding = Literal["multipart", "json", "raw"]
ENCODINGS: tuple[str, ...] = ("multipart", "json", "raw")
DEFAULT_URL = "http://127.0.0.1:8080"
EVENT_STREAM = "text/event-stream"

Parsed = TypeVar("Parsed")


@dataclass(frozen=True)
class Prepared:
    """One HTTP request, described as arguments to `httpx.Client.request` (re-sendable as is)."""

    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def normalize_url(url: str) -> str:
    """`host:port` gets `http://`; a trailing slash is dropped so paths join predictably."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def classify_path(model: str | None) -> str:
    """`/v1/classify` serves the server's default model; a named model has its own route."""
    if model is None:
        return "/v1/classify"
    return f"/v1/models/{quote(model, safe='')}/classify"


def prepare_classify(
    images: list[EncodedImage], knobs: Knobs, model: str | None, encoding: Encoding, *, stream: bool = False
) -> Prepared:
    """The request for one classify call in the chosen wire encoding.

    multipart (default): files as repeated `files` parts, knobs as form fields; smallest and streamable.
    json: base64 images and typed knobs in one JSON document (for proxies that only pass JSON).
    raw: one image as the body with its image Content-Type, knobs in the query string (what curl sends).
    `stream`: ask for Server-Sent Events (one per exit each image passes): the `stream` parameter beside
    the knobs, in the same place, and `Accept: text/event-stream`.
    """
    path = classify_path(model)
    strings = knobs.as_strings() | ({"stream": "true"} if stream else {})
    headers = {"Accept": EVENT_STREAM} if stream else {}
    if encoding == "multipart":
        files = [("files", (image.name, image.data, image.content_type)) for image in images]
        return Prepared("POST", path, {"files": files, "data": strings, **_headers(headers)})
    if encoding == "json":
        document: dict[str, Any] = {
            "images": [base64.b64encode(image.data).decode("ascii") for image in images]
        }
        document.update(knobs.as_json())
        if stream:
            document["stream"] = True
        return Prepared("POST", path, {"json": document, **_headers(headers)})
    if encoding == "raw":
        if len(images) != 1:
            raise ValueError(f"the raw encoding sends exactly one image per request, got {len(images)}")
        image = images[0]
        content_type = (
            image.content_type if image.content_type.startswith("image/") else "application/octet-stream"
        )
        return Prepared(
            "POST",
            path,
            {"content": image.data, "headers": {"Content-Type": content_type, **headers}, "params": strings},
        )
    raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def _headers(headers: dict[str, str]) -> dict[str, Any]:
    return {"headers": headers} if headers else {}


def error_from_response(response: httpx.Response, attempts: int = 1) -> RanetError:
    """The exception for an error answer, from the server's error body when it sent one.

    v1 and the rest of the server answer `{"error": {"code", "message", "details", "error_id"}}`;
    under /v2 the Open Inference Protocol shape `{"error": "<message>", "code": ...}` is used.
    Anything else (a proxy's HTML page) still yields an error with the status and the text.
    """
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    return error_from_document(
        response.status_code,
        body,
        fallback=response.text[:500].strip() or response.reason_phrase or "request failed",
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        attempts=attempts,
    )


def error_from_document(
    status: int,
    body: object,
    *,
    fallback: str = "request failed",
    retry_after: float | None = None,
    attempts: int = 1,
) -> RanetError:
    """The exception for an error status and the server's error document (`body`, parsed JSON or None).

    Shared by error answers and a stream's `error` event (whose document is the v1 error body plus the
    HTTP `status` the request would have had), so both map to the same classes.
    """
    code: str | None = None
    message = ""
    details: dict[str, Any] = {}
    error_id: str | None = None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            code = _str_or_none(inner.get("code"))
            message = str(inner.get("message", ""))
            found = inner.get("details")
            details = found if isinstance(found, dict) else {}
            error_id = _str_or_none(inner.get("error_id"))
        elif isinstance(inner, str):
            message = inner
            code = _str_or_none(body.get("code"))
            error_id = _str_or_none(body.get("error_id"))
        elif "detail" in body:  # a plain FastAPI/Starlette answer
            message = str(body["detail"])
    cls = error_class(status, code)
    return cls(
        message or fallback,
        status=status,
        code=code or f"http_{status}",
        details=details,
        retry_after=retry_after,
        error_id=error_id,
        attempts=attempts,
    )


def error_from_exception(exc: httpx.HTTPError, url: str, attempts: int = 1) -> RanetError:
    """The exception for a request that got no HTTP answer."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return RequestTimeoutError(
            f"no answer from {url} in time ({type(exc).__name__})", code="timeout", attempts=attempts
        )
    detail = str(exc) or type(exc).__name__
    return ConnectionFailedError(f"cannot reach {url}: {detail}", code="connection_error", attempts=attempts)


TRANSPORT_ERRORS: tuple[type[httpx.HTTPError], ...] = (httpx.TransportError,)


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; a non-object answer is a server bug worth surfacing."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise RanetError(
            f"the server answered {response.status_code} with a body that is not JSON",
            status=response.status_code,
            code="invalid_response",
        ) from exc
    if not isinstance(body, dict):
        raise RanetError(
            "the server answered with JSON that is not an object",
            status=response.status_code,
            code="invalid_response",
        )
    return body


def parse_body(response: httpx.Response, parse: Callable[[dict[str, Any]], Parsed]) -> Parsed:
    """`parse` (a result class's `from_dict`) applied to the answer's JSON object.

    A 200 whose object lacks or mistypes a field (a proxy's page, another server on the port) is a
    `RanetError` like any other failure, not the `KeyError` the parser would raise."""
    return parse_document(json_body(response), parse, response.status_code)


def parse_document(
    document: dict[str, Any], parse: Callable[[dict[str, Any]], Parsed], status: int
) -> Parsed:
    """`parse(document)`, with a missing or mistyped field raised as `RanetError` (code invalid_response)."""
    try:
        return parse(document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = f"no field {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise RanetError(
            f"the server answered {status} with JSON this client cannot read ({problem})",
            status=status,
            code="invalid_response",
        ) from exc


def json_or_empty(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of an answer whose body is informative but optional (health, readiness)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
