"""Small pure pieces of the API layer: version ordering, body inflation limits, the error table."""

from __future__ import annotations

import gc
import gzip
import io
import zlib
from typing import Any, cast

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from helpers.images import png_bytes
from ranet_serve.api.body import inflate
from ranet_serve.api.errors import status_for
from ranet_serve.api.images import declared_pixels
from ranet_serve.api.knobs import parse_knobs
from ranet_serve.api.service import INLINE_DECODE_MAX_BYTES, EncodedImages, InferenceService
from ranet_serve.engine.catalog import version_key
from ranet_serve.errors import (
    BudgetError,
    DeadlineExceededError,
    InvalidInputError,
    InvalidRequestError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    StageExecutionError,
    UnsupportedMediaTypeError,
)
from ranet_serve.heap import freeze_heap
from ranet_serve.settings import Settings


def test_versions_order_numerically() -> None:
    versions = ["10", "9", "2", "1.10", "1.9", "v2", "1"]
    assert sorted(versions, key=version_key) == ["1", "1.9", "1.10", "2", "9", "10", "v2"]
    assert max(["9", "10", "11"], key=version_key) == "11"


def test_error_table_statuses() -> None:
    expected = {
        BudgetError("x"): 422,
        InvalidInputError("x"): 400,
        InvalidRequestError("x"): 422,
        PayloadTooLargeError("x"): 413,
        UnsupportedMediaTypeError("x"): 415,
        ModelNotFoundError("x"): 404,
        OverloadedError("x"): 429,
        NotReadyError("x"): 503,
        DeadlineExceededError("x"): 504,
        StageExecutionError("x"): 500,
        RuntimeError("x"): 500,
        RequestValidationError([]): 422,
    }
    assert {type(e).__name__: status_for(e) for e in expected} == {
        type(e).__name__: s for e, s in expected.items()
    }


def test_inflate_gzip_and_deflate_within_the_limit() -> None:
    data = b"ranet " * 1000
    assert inflate(gzip.compress(data), "gzip", 10_000) == data
    assert inflate(zlib.compress(data), "deflate", 10_000) == data
    assert inflate(data, None, 10_000) == data


def test_inflate_refuses_bombs_garbage_and_unknown_encodings() -> None:
    with pytest.raises(PayloadTooLargeError):
        inflate(gzip.compress(b"\x00" * 2_000_000), "gzip", 1_000_000)
    with pytest.raises(InvalidInputError):
        inflate(b"not gzip", "gzip", 1_000)
    with pytest.raises(InvalidInputError):
        inflate(gzip.compress(b"x" * 100)[:-12], "gzip", 1_000)
    with pytest.raises(UnsupportedMediaTypeError):
        inflate(b"x", "br", 1_000)


def test_knobs_parse_types_and_reject_unknown_names() -> None:
    knobs = parse_knobs({"max_flops": "20M", "top_k": "3", "version": 2, "deadline_ms": "250"})
    assert knobs.budget.max_flops == 20e6
    assert (knobs.top_k, knobs.version, knobs.deadline_ms) == (3, "2", 250.0)
    for bad in ({"top_k": True}, {"top_k": "x"}, {"deadline_ms": "0"}, {"version": "../1"}, {"maxflops": 1}):
        with pytest.raises(InvalidRequestError):
            parse_knobs(bad)


def test_openapi_schema_documents_both_protocols() -> None:
    from ranet_serve.api.app import create_app
    from ranet_serve.settings import Settings

    schema = create_app(Settings(model_store="/nonexistent")).openapi()
    paths = schema["paths"]
    assert "/v1/models/{model}/classify" in paths
    assert "/v2/models/{model}/versions/{version}/infer" in paths
    body = paths["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(body)


def _blank_png(width: int, height: int, comment: str = "") -> bytes:
    info = PngInfo()
    if comment:
        info.add_text("Comment", comment)
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True, pnginfo=info)
    return buffer.getvalue()


def test_only_small_requests_are_decoded_on_the_event_loop() -> None:
    service = InferenceService(Settings(), cast(Any, None), cast(Any, None))
    small = png_bytes(0)
    assert service._decodes_inline(EncodedImages((small,) * 4))
    assert service._decodes_inline(np.zeros((4, 1, 28, 28), dtype=np.float32))
    # Too many pixels in all, declared by a header the full decode never reaches: a 4096x4096 PNG of
    # zeros is a few KiB but would hold the event loop for tens of milliseconds.
    bomb = _blank_png(4096, 4096)
    assert len(bomb) < INLINE_DECODE_MAX_BYTES and declared_pixels(bomb) == 4096 * 4096
    assert declared_pixels(_blank_png(30, 17)) == 510  # PNG's IHDR read in place: width and height apart
    jpeg = io.BytesIO()
    Image.new("L", (40, 9)).save(jpeg, format="JPEG")
    assert declared_pixels(jpeg.getvalue()) == 360  # other formats through Pillow's header parser
    assert not service._decodes_inline(EncodedImages((bomb,)))
    assert not service._decodes_inline(EncodedImages((small,) * 21))  # 21 x 784 > 128 x 128 pixels
    assert not service._decodes_inline(np.zeros((64, 3, 32, 32), dtype=np.float32))
    # Bytes the header reader cannot judge go to the worker thread, whose decode names the problem.
    assert declared_pixels(b"not an image") is None and declared_pixels(small[:20]) is None
    assert not service._decodes_inline(EncodedImages((small, small[:20])))
    big = _blank_png(28, 28, comment="x" * INLINE_DECODE_MAX_BYTES)  # few pixels, many bytes
    assert declared_pixels(big) == 784 and len(big) > INLINE_DECODE_MAX_BYTES
    assert not service._decodes_inline(EncodedImages((big,)))
    off = InferenceService(Settings(inline_decode_max_pixels=0), cast(Any, None), cast(Any, None))
    assert not off._decodes_inline(EncodedImages((small,)))


def test_freezing_the_heap_takes_loaded_objects_out_of_gc_scans() -> None:
    loaded = [{"weights": [i]} for i in range(10_000)]  # stands for what the store loaded
    try:
        # Other threads may allocate between the freeze and a read of the process-wide count, so the
        # count is compared with what must be in it, not with a second read.
        assert freeze_heap() >= len(loaded)
        assert not any(obj is loaded for obj in gc.get_objects())  # no generation holds them now
        assert freeze_heap() >= len(loaded)  # a reload freezes again, after unfreezing
        assert not any(obj is loaded for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is loaded for obj in gc.get_objects())  # unfrozen: back in the generations
