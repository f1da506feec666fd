"""The v1 wire format: images and knobs out of a request; a `ClassifyResult` into the response body.

Images arrive as multipart files (field `file` or `files`, several allowed), as a raw body with an
image Content-Type, or as JSON `{"images": [base64, ...], ...knobs}`. Knobs come from the query
string and from form fields or JSON keys; giving one in both places is an error rather than a guess.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ranet_serve.api.body import parse_json, read_body, receive_chunks
from ranet_serve.api.knobs import KNOBS
from ranet_serve.api.multipart import read_form
from ranet_serve.api.service import ClassifyResult
from ranet_serve.cascade.results import ImageResult
from ranet_serve.errors import (
    InvalidInputError,
    InvalidRequestError,
    UnsupportedMediaTypeError,
)

FILE_FIELDS = ("file", "files")
RAW_TYPES = ("application/octet-stream",)
_MAX_FORM_FIELDS = 2 * len(KNOBS)


@dataclass(frozen=True)
class V1Input:
    images: tuple[bytes, ...]
    knobs: dict[str, object]


async def read_v1_input(request: Request, max_body_bytes: int, max_images: int) -> V1Input:
    """Parse any of the three v1 forms; knobs from the query string are merged in."""
    knobs = _query_knobs(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise UnsupportedMediaTypeError(
                "compressed multipart bodies are not supported; send them uncompressed"
            )
        images, body_knobs = await _read_multipart(request, max_body_bytes, max_images)
    elif media_type == "application/json" or media_type.endswith("+json"):
        # json.loads and base64 of up to max_body_bytes take milliseconds: keep them off the loop.
        images, body_knobs = await run_in_threadpool(_parse_json, await read_body(request, max_body_bytes))
    elif media_type.startswith("image/") or media_type in RAW_TYPES:
        body = await read_body(request, max_body_bytes)
        if not body:
            raise InvalidInputError("empty body: send an image, multipart files or JSON with base64 images")
        images, body_knobs = (body,), {}
    else:
        # Decided from the headers: an unusable body is not worth reading.
        if _declares_empty_body(request):
            raise InvalidInputError(
                "empty body: send images as multipart files (field 'file'), a raw image body with an "
                'image/* Content-Type, or JSON {"images": [base64, ...]}'
            )
        shown = media_type or "none"
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {shown[:64]!r}; use multipart/form-data, image/*, or application/json"
        )
    for key, value in body_knobs.items():
        if key in knobs and knobs[key] != value:
            raise InvalidRequestError(f"{key} is given both in the query string and in the body")
        knobs[key] = value
    return V1Input(images=images, knobs=knobs)


def _declares_empty_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() == "0"
    return "transfer-encoding" not in request.headers


def _query_knobs(request: Request) -> dict[str, object]:
    knobs: dict[str, object] = {}
    for key, value in request.query_params.multi_items():
        if key in knobs:
            raise InvalidRequestError(f"query parameter {key!r} is given more than once")
        knobs[key] = value
    return knobs


async def _read_multipart(
    request: Request, max_body_bytes: int, max_images: int
) -> tuple[tuple[bytes, ...], dict[str, object]]:
    parts = read_form(
        request.headers.get("content-type", ""),
        await receive_chunks(request, max_body_bytes),
        max_files=max_images + 1,  # one more than allowed, so the count check names the limit
        max_fields=_MAX_FORM_FIELDS,
    )
    images: list[bytes] = []
    knobs: dict[str, object] = {}
    for key, data in parts.files:
        if key not in FILE_FIELDS:
            raise InvalidRequestError(f"unexpected file field {key!r}; send images as 'file' or 'files'")
        images.append(data)
    for key, value in parts.fields:
        if key in FILE_FIELDS:
            raise InvalidRequestError(f"field {key!r} must be a file upload (multipart part with a filename)")
        if key in knobs:
            raise InvalidRequestError(f"form field {key!r} is given more than once")
        knobs[key] = value
    if not images:
        raise InvalidInputError("no image files in the multipart body (use the field 'file' or 'files')")
    return tuple(images), knobs


def _parse_json(body: bytes) -> tuple[tuple[bytes, ...], dict[str, object]]:
    if not body:
        raise InvalidInputError('empty body: send JSON {"images": [base64, ...]}')
    document = parse_json(body, "body")
    if not isinstance(document, dict):
        raise InvalidRequestError('the JSON body must be an object: {"images": [base64, ...], ...knobs}')
    images = document.pop("images", None)
    if not isinstance(images, list) or not images:
        raise InvalidRequestError('"images" must be a non-empty list of base64-encoded image files')
    decoded = tuple(decode_base64(item, f"images[{index}]") for index, item in enumerate(images))
    return decoded, {key: value for key, value in document.items() if value is not None}


def decode_base64(value: object, where: str) -> bytes:
    """Standard or URL-safe base64, optionally as a `data:image/...;base64,` URI."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where} must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInputError(f"{where}: only base64 data URIs are supported")
    text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{where} is not valid base64 ({exc})") from exc
    if not data:
        raise InvalidInputError(f"{where} is empty")
    return data


def encode_v1(result: ClassifyResult) -> bytes:
    """The response body, serialised here rather than by FastAPI.

    Built as plain dicts in `ClassifyResponse`'s field order and written with the separators and
    options Starlette's `JSONResponse` uses, so the bytes are what returning the pydantic model gave,
    without building (and FastAPI validating) a model per image, per top-k entry, per request.
    `tests/api/test_api_v1.py` checks the body against `ClassifyResponse`. Non-finite numbers raise
    (`allow_nan=False`), as they did: JSON has no NaN, so a NaN confidence is a server error.
    """
    document = {
        "model": result.model,
        "version": result.version,
        "operating_point": result.operating_point,
        "results": [image_fields(image, result.labels) for image in result.images],
        "timings": timings(result),
    }
    return dump_json(document)


def image_fields(image: ImageResult, labels: tuple[str, ...]) -> dict[str, object]:
    """One image's v1 result fields (`ImagePrediction`'s, in its order)."""
    return {
        "label": labels[image.class_index],
        "class_index": int(image.class_index),
        "confidence": float(image.confidence),
        "top_k": [
            {"label": labels[c], "class_index": int(c), "probability": float(p)} for c, p in image.top_k
        ],
        "exit": int(image.exit),
        "flops": int(image.flops),
        "budget_limited": bool(image.budget_limited),
        "deadline_limited": bool(image.deadline_limited),
    }


def timings(result: ClassifyResult) -> dict[str, float]:
    return {
        "queue_ms": 1000 * float(result.queue_seconds),
        "inference_ms": 1000 * float(result.inference_seconds),
        "total_ms": 1000 * float(result.total_seconds),
    }


def dump_json(document: object) -> bytes:
    """JSON as Starlette's `JSONResponse` writes it; NaN raises (JSON has none)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
