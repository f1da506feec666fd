"""The bad-input corpus: every malformed, hostile or unusual request the server must answer well, as data.

Each `Case` is one request (built here, byte for byte) with the status and stable error code it must get,
or, for inputs that must succeed (CMYK, 16-bit, palette, alpha, 1x1, extreme aspect ratios, animated GIF,
EXIF rotation), a reference request whose answer it must equal: an animated GIF must classify exactly like
its first frame as a PNG, an EXIF-rotated JPEG exactly like its decoded pixels turned upright. Comparing
with a reference request (not with numbers computed here) tests the whole path, decoding included, without
depending on what the tiny test model predicts.

`test_bad_input_corpus.py` sends the whole corpus to a real server while good requests run beside it.
With `RANET_BAD_INPUT_TABLE=<file>` set it writes the case -> status table there (markdown) for the
issue note; `topic` names the issue's item each case covers.

The server under test is `helpers.server.settings_for(...)`: model `tiny` (1x28x28, 10 classes, 6 exits,
versions 1 and 2), 1 MiB bodies, 8 images per request, the default image limits (4096 x 4096 pixels).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

V1 = "/v1/models/tiny/classify"
V2 = "/v2/models/tiny/infer"
BODY_LIMIT = 1 << 20  # settings_for's max_body_bytes
IMAGE_LIMIT = 8  # settings_for's max_images_per_request
# Reference comparisons: every exit's answer would do, but the last exit's is the one most sensitive to
# the input, and top_k=10 returns the whole distribution.
COMPARE = {"top_k": "10", "operating_point": "full-depth"}


@dataclass(frozen=True)
class Send:
    """One HTTP request as it goes on the wire. `raw_path` sends the path unnormalised (http.client)."""

    method: str = "POST"
    path: str = V1
    content: bytes | Callable[[], Iterator[bytes]] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    raw_path: bool = False


@dataclass(frozen=True)
class Case:
    """A request and what it must get: `code` None means success (200), checked against `same_as`."""

    name: str
    topic: str
    send: Send
    status: int
    code: str | None
    fragment: str = ""  # must appear in the error message (case-insensitive)
    same_as: Send | None = None  # success: the answer must equal this request's
    differs_from: Send | None = None  # success: ...and differ from this one (the check has teeth)
    image: bytes = b""  # success: the image file as sent, so a test can check it is what it claims


@dataclass(frozen=True)
class Seen:
    status: int
    code: str | None
    message: str
    body: object
    content_type: str


# --------------------------------------------------------------------------------------------- builders


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height with one row of data: a decompression bomb in under 100 bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    stream = zlib.compressobj()
    row = stream.compress(b"\x00" * (width + 1)) + stream.flush(zlib.Z_SYNC_FLUSH)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def multipart(
    files: list[tuple[str, bytes]] | None = None,
    data: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    path: str = V1,
) -> Send:
    """A multipart body exactly as httpx encodes it (files as (field, bytes), each named x.png)."""
    request = httpx.Request(
        "POST",
        "http://corpus" + path,
        files=[
            (name, (f"{i}.bin", content, "application/octet-stream"))
            for i, (name, content) in enumerate(files or [])
        ],
        data=dict(data or {}),
    )
    return Send(
        path=path,
        content=request.read(),
        headers={"Content-Type": request.headers["content-type"]},
        params=dict(params or {}),
    )


def image_file(data: bytes, params: Mapping[str, str] | None = None, path: str = V1) -> Send:
    return multipart([("file", data)], params=params, path=path)


def raw(content: bytes, content_type: str | None, path: str = V1, **headers: str) -> Send:
    all_headers = dict(headers)
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return Send(path=path, content=content, headers=all_headers)


def json_send(document: object, path: str = V1, params: Mapping[str, str] | None = None) -> Send:
    """JSON as Python writes it: NaN and Infinity literals included (clients do send them)."""
    return Send(
        path=path,
        content=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
        params=dict(params or {}),
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_fp32(
    shape: list[int],
    data: list[float] | None = None,
    datatype: str = "FP32",
    parameters: dict[str, object] | None = None,
    path: str = V2,
) -> Send:
    count = int(np.prod(shape)) if all(d >= 0 for d in shape) else 0
    document: dict[str, object] = {
        "inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data or [0.0] * count}]
    }
    if parameters:
        document["parameters"] = parameters
    return json_send(document, path)


def v2_binary(header: dict[str, object], payload: bytes, header_length: str | None = None) -> Send:
    encoded = json.dumps(header).encode()
    return Send(
        path=V2,
        content=encoded + payload,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": header_length or str(len(encoded)),
        },
    )


def v2_bytes_named(name: str, items: list[str]) -> Send:
    return json_send(
        {"inputs": [{"name": name, "shape": [len(items)], "datatype": "BYTES", "data": items}]}, V2
    )


def v2_bytes(items: list[str], shape: list[int] | None = None) -> Send:
    document = {
        "inputs": [
            {"name": "image_bytes", "shape": shape or [len(items)], "datatype": "BYTES", "data": items}
        ]
    }
    return json_send(document, V2)


def chunked_zeros() -> Iterator[bytes]:
    """A body with no Content-Length (chunked) that runs past the limit."""
    for _ in range(40):
        yield b"\x00" * 65536


# --------------------------------------------------------------------------------------------- images

PNG = encode(noise(28, 28, 0))
B64 = b64(PNG)
RGB64 = noise(64, 64, 1, "RGB")


def _truncated(fmt: str, **options: object) -> bytes:
    data = encode(RGB64, fmt, **options)
    return data[: len(data) // 2]


def _reference(image: Image.Image) -> Send:
    """The same pixels as a lossless grayscale PNG: what a must-succeed image has to classify like."""
    return image_file(encode(image.convert("L") if image.mode != "L" else image), COMPARE)


def _success(
    name: str,
    topic: str,
    data: bytes,
    same_as: Image.Image | None = None,
    differs_from: Image.Image | None = None,
) -> Case:
    """A must-succeed image, compared (when references are given) on the whole probability vector."""
    params = COMPARE if same_as is not None else None
    return Case(
        name,
        topic,
        image_file(data, params),
        200,
        None,
        same_as=_reference(same_as) if same_as is not None else None,
        differs_from=_reference(differs_from) if differs_from is not None else None,
        image=data,
    )


def _success_images() -> list[Case]:
    ink = np.random.default_rng(2).integers(0, 256, 28 * 28 * 4, dtype=np.uint8).tobytes()
    cmyk = encode(Image.frombytes("CMYK", (28, 28), ink), "JPEG", quality=90)

    gray = np.asarray(noise(28, 28, 3))
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)  # mode I;16: v * 257 is v / 255 of full scale

    palette = Image.new("P", (28, 28))
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.putdata(list(gray.ravel()))  # index = gray level: the palette is the identity

    alpha = np.where(np.arange(28)[None, :] < 10, 0, 255).astype(np.uint8).repeat(28, axis=0)
    hidden_black = Image.fromarray(np.where(alpha == 0, 0, gray).astype(np.uint8))  # L models: black
    la = Image.merge("LA", (Image.fromarray(gray), Image.fromarray(alpha)))
    rgba = Image.merge("RGBA", (*[Image.fromarray(gray)] * 3, Image.fromarray(alpha)))

    ramp = (np.arange(4000) * 255 // 3999).astype(np.uint8)
    first, second = noise(28, 28, 6), noise(28, 28, 7)
    gif = encode(first, "GIF", save_all=True, append_images=[second], duration=50, loop=0)

    stored = noise(48, 32, 8)  # wider than high: turning it changes what the resize sees
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    jpeg = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = Image.open(io.BytesIO(jpeg))
    decoded.load()

    return [
        _success("cmyk-jpeg", "CMYK", cmyk, same_as=Image.open(io.BytesIO(cmyk)).convert("L")),
        _success(
            "png-16-bit", "16-bit", encode(sixteen), Image.fromarray(gray), differs_from=noise(28, 28, 4)
        ),
        _success("png-palette", "palette", encode(palette), Image.fromarray(gray)),
        _success("png-alpha-la", "alpha", encode(la), hidden_black, differs_from=Image.fromarray(gray)),
        _success("png-alpha-rgba", "alpha", encode(rgba), hidden_black),
        _success("png-1x1", "1x1", encode(Image.new("L", (1, 1), 200)), Image.new("L", (28, 28), 200)),
        _success("png-4000x1", "extreme aspect ratio", encode(Image.fromarray(ramp[None, :]))),
        _success("png-1x4000", "extreme aspect ratio", encode(Image.fromarray(ramp[:, None]))),
        _success("png-16000x2", "extreme aspect ratio", encode(noise(16000, 2, 5))),
        _success("gif-animated", "animated GIF (first frame)", gif, first, differs_from=second),
        _success(
            "jpeg-exif-rotated",
            "EXIF-rotated JPEG",
            jpeg,
            decoded.transpose(Image.Transpose.ROTATE_270),  # what orientation 6 means
            differs_from=decoded,  # the pixels as stored, not turned
        ),
        _success(
            "png-exif-rotated",
            "EXIF-rotated PNG (eXIf chunk)",
            encode(stored, "PNG", exif=exif.tobytes()),
            stored.transpose(Image.Transpose.ROTATE_270),
            differs_from=stored,
        ),
    ]


# --------------------------------------------------------------------------------------------- the corpus


def _bad_cases() -> list[Case]:
    bad_knob = lambda **params: image_file(PNG, params)  # noqa: E731
    zeros_784 = [0.0] * 784
    fp32_header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 3136},
            }
        ]
    }
    gzip_bomb = gzip.compress(json.dumps({"inputs": [], "pad": " " * (2 * BODY_LIMIT)}).encode())
    multipart_knobs_only = b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n2\r\n--b--\r\n'
    multipart_text_file = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot-a-file\r\n--b--\r\n'
    boundary_b = {"Content-Type": "multipart/form-data; boundary=b"}
    deep_json = b"[" * 100_000 + b"]" * 100_000  # past the interpreter's recursion limit
    v2_document = {
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": zeros_784}]
    }
    S = Send
    return [
        # -- empty bodies
        Case("empty-no-content-type", "empty body", raw(b"", None), 400, "invalid_input"),
        Case("empty-image-png", "empty body", raw(b"", "image/png"), 400, "invalid_input"),
        Case("empty-json", "empty body", raw(b"", "application/json"), 400, "invalid_input"),
        Case("empty-multipart-file", "empty body", image_file(b""), 400, "invalid_input", "empty"),
        Case("empty-v2", "empty body", raw(b"", "application/json", V2), 400, "invalid_input"),
        # -- truncated and corrupt images
        Case(
            "truncated-png", "truncated PNG", image_file(_truncated("PNG")), 400, "invalid_input", "truncated"
        ),
        Case("truncated-png-header", "truncated PNG", image_file(PNG[:40]), 400, "invalid_input"),
        Case(
            "truncated-jpeg", "truncated JPEG", image_file(_truncated("JPEG")), 400, "invalid_input", "jpeg"
        ),
        Case("truncated-gif", "truncated GIF", image_file(_truncated("GIF")), 400, "invalid_input", "gif"),
        Case(
            "truncated-webp", "truncated WebP", image_file(_truncated("WEBP")), 400, "invalid_input", "webp"
        ),
        Case(
            "png-magic-then-zeros",
            "truncated PNG",
            image_file(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
            400,
            "invalid_input",
            "png",
        ),
        # -- bytes that are no image
        Case(
            "random-bytes-raw-image-png",
            "random bytes as image",
            raw(np.random.default_rng(9).bytes(2048), "image/png"),
            400,
            "invalid_input",
            "not a supported image format",
        ),
        Case(
            "random-bytes-multipart",
            "random bytes as image",
            image_file(np.random.default_rng(10).bytes(999)),
            400,
            "invalid_input",
        ),
        Case(
            "text-raw-image-jpeg",
            "text as image",
            raw(b"hello, I am text", "image/jpeg"),
            400,
            "invalid_input",
            "not a supported image format",
        ),
        Case("text-multipart", "text as image", image_file(b"not an image at all"), 400, "invalid_input"),
        Case(
            "text-json-base64",
            "text as image",
            json_send({"images": [b64(b"garbage")]}),
            400,
            "invalid_input",
        ),
        Case("text-v2-bytes", "text as image", v2_bytes([b64(b"hello")]), 400, "invalid_input"),
        # -- pixel limits
        Case(
            "bomb-png-20000x20000",
            "decompression bomb",
            image_file(png_header_only(20000, 20000)),
            413,
            "image_too_large",
        ),
        Case(
            "bomb-png-8000x6000",
            "decompression bomb",
            image_file(png_header_only(8000, 6000)),
            413,
            "image_too_large",
            "8000x6000",
        ),
        Case(
            "bomb-v2-bytes",
            "decompression bomb",
            v2_bytes([b64(png_header_only(20000, 20000))]),
            413,
            "image_too_large",
        ),
        Case(
            "png-5000x5000",
            "over the pixel limit",
            image_file(encode(Image.new("L", (5000, 5000)))),
            413,
            "image_too_large",
        ),
        Case(
            "png-side-16385",
            "over the pixel limit",
            image_file(encode(Image.new("L", (16385, 1)))),
            413,
            "image_too_large",
        ),
        # -- body limits
        Case(
            "raw-over-body-limit",
            "body over the size limit",
            raw(PNG + b"\x00" * BODY_LIMIT, "image/png"),
            413,
            "payload_too_large",
        ),
        Case(
            "chunked-over-body-limit",
            "body over the size limit",
            S(content=chunked_zeros, headers={"Content-Type": "image/png"}),
            413,
            "payload_too_large",
        ),
        Case(
            "multipart-over-body-limit",
            "body over the size limit",
            multipart([("files", b"\x00" * 300_000)] * 4),
            413,
            "payload_too_large",
        ),
        Case(
            "json-over-body-limit",
            "body over the size limit",
            json_send({"images": [b64(b"\x00" * 800_000)]}),
            413,
            "payload_too_large",
        ),
        Case(
            "v2-over-body-limit",
            "body over the size limit",
            v2_fp32([1, 1, 512, 512]),
            413,
            "payload_too_large",
        ),
        Case(
            "v2-gzip-bomb",
            "body over the size limit",
            raw(gzip_bomb, "application/json", V2, **{"Content-Encoding": "gzip"}),
            413,
            "payload_too_large",
        ),
        # -- images per request
        Case(
            "multipart-9-images",
            "too many images",
            multipart([("files", PNG)] * 9),
            413,
            "payload_too_large",
            str(IMAGE_LIMIT),
        ),
        Case(
            "multipart-30-images",
            "too many images",
            multipart([("files", PNG)] * 30),
            413,
            "payload_too_large",
        ),
        Case(
            "json-9-images",
            "too many images",
            json_send({"images": [B64] * 9}),
            413,
            "payload_too_large",
            str(IMAGE_LIMIT),
        ),
        Case("v2-9-images", "too many images", v2_bytes([B64] * 9), 413, "payload_too_large"),
        # -- JSON and base64
        Case("json-invalid", "invalid JSON", raw(b"{not json", "application/json"), 400, "invalid_input"),
        Case(
            "json-not-utf8",
            "invalid JSON",
            raw(b'{"images": ["\xff\xfe"]}', "application/json"),
            400,
            "invalid_input",
        ),
        Case(
            "json-trailing-garbage",
            "invalid JSON",
            raw(b'{"images": []} x', "application/json"),
            400,
            "invalid_input",
        ),
        Case(
            "v2-json-invalid",
            "invalid JSON",
            raw(b'{"inputs": [', "application/json", V2),
            400,
            "invalid_input",
        ),
        Case(
            "base64-invalid",
            "invalid base64",
            json_send({"images": ["!!!not base64!!!"]}),
            400,
            "invalid_input",
        ),
        Case(
            "base64-data-uri-not-base64",
            "invalid base64",
            json_send({"images": ["data:image/png,abc"]}),
            400,
            "invalid_input",
            "base64",
        ),
        Case("v2-base64-invalid", "invalid base64", v2_bytes(["%%%"]), 400, "invalid_input"),
        # -- wrong field types
        Case(
            "json-array-body", "wrong field types", raw(b"[1, 2]", "application/json"), 422, "invalid_request"
        ),
        Case("json-images-string", "wrong field types", json_send({"images": "abc"}), 422, "invalid_request"),
        Case("json-images-empty", "wrong field types", json_send({"images": []}), 422, "invalid_request"),
        Case("json-images-number", "wrong field types", json_send({"images": [123]}), 422, "invalid_request"),
        Case(
            "json-no-images-field",
            "wrong field types",
            json_send({"pictures": ["abc"]}),
            422,
            "invalid_request",
        ),
        Case(
            "json-top-k-string",
            "wrong field types",
            json_send({"images": [B64], "top_k": "many"}),
            422,
            "invalid_request",
            "top_k",
        ),
        Case(
            "json-top-k-bool",
            "wrong field types",
            json_send({"images": [B64], "top_k": True}),
            422,
            "invalid_request",
            "top_k",
        ),
        Case(
            "json-top-k-too-large",
            "wrong field types",
            json_send({"images": [B64], "top_k": 11}),
            422,
            "invalid_request",
            "top_k",
        ),
        Case(
            "json-thresholds-object",
            "wrong field types",
            json_send({"images": [B64], "thresholds": {"a": 1}}),
            422,
            "invalid_budget",
        ),
        Case(
            "json-max-flops-list",
            "wrong field types",
            json_send({"images": [B64], "max_flops": [1, 2]}),
            422,
            "invalid_budget",
        ),
        Case(
            "json-unknown-knob",
            "wrong field types",
            json_send({"images": [B64], "max_flop": "20M"}),
            422,
            "invalid_request",
            "max_flop",
        ),
        Case(
            "query-unknown-knob",
            "wrong field types",
            bad_knob(colour="red"),
            422,
            "invalid_request",
            "colour",
        ),
        Case(
            "knob-in-query-and-body",
            "wrong field types",
            json_send({"images": [B64], "top_k": 2}, params={"top_k": "3"}),
            422,
            "invalid_request",
            "top_k",
        ),
        Case(
            "deadline-negative",
            "wrong field types",
            bad_knob(deadline_ms="-1"),
            422,
            "invalid_request",
            "deadline_ms",
        ),
        Case(
            "deadline-text",
            "wrong field types",
            bad_knob(deadline_ms="soon"),
            422,
            "invalid_request",
            "deadline_ms",
        ),
        Case("v2-inputs-string", "wrong field types", json_send({"inputs": "x"}, V2), 422, "invalid_request"),
        Case(
            "v2-unknown-parameter",
            "wrong field types",
            v2_fp32([1, 1, 28, 28], zeros_784, parameters={"colour": "red"}),
            422,
            "invalid_request",
            "unknown parameter 'colour'",
        ),
        Case(
            "v2-top-k-too-large",
            "wrong field types",
            v2_fp32([1, 1, 28, 28], zeros_784, parameters={"top_k": 11}),
            422,
            "invalid_request",
            "top_k",
        ),
        Case(
            "v2-sequence-id",
            "wrong field types",
            v2_fp32([1, 1, 28, 28], zeros_784, parameters={"sequence_id": 42, "sequence_start": True}),
            422,
            "invalid_request",
            "sequence_id",
        ),
        Case(
            "v2-shape-strings",
            "wrong field types",
            json_send({"inputs": [{"name": "image", "shape": ["a"], "datatype": "FP32", "data": [0.0]}]}, V2),
            422,
            "invalid_request",
        ),
        # -- budgets
        Case("max-flops-nan", "NaN budget", bad_knob(max_flops="nan"), 422, "invalid_budget"),
        Case(
            "json-max-flops-nan-literal",
            "NaN budget",
            json_send({"images": [B64], "max_flops": float("nan")}),
            422,
            "invalid_budget",
        ),
        Case("confidence-nan", "NaN budget", bad_knob(confidence="nan"), 422, "invalid_budget"),
        Case(
            "v2-max-flops-nan",
            "NaN budget",
            v2_fp32([1, 1, 28, 28], zeros_784, parameters={"max_flops": float("nan")}),
            422,
            "invalid_budget",
        ),
        Case("max-flops-inf", "infinite budget", bad_knob(max_flops="inf"), 422, "invalid_budget"),
        Case(
            "json-confidence-infinity",
            "infinite budget",
            json_send({"images": [B64], "confidence": float("inf")}),
            422,
            "invalid_budget",
        ),
        Case("max-flops-1e400", "infinite budget", bad_knob(max_flops="1e400"), 422, "invalid_budget"),
        Case("max-flops-negative", "negative budget", bad_knob(max_flops="-5"), 422, "invalid_budget"),
        Case("target-flops-zero", "negative budget", bad_knob(target_flops="0"), 422, "invalid_budget"),
        Case(
            "target-flops-negative", "negative budget", bad_knob(target_flops="-20M"), 422, "invalid_budget"
        ),
        Case("max-flops-absurd-1e30", "absurd budget", bad_knob(max_flops="1e30"), 422, "invalid_budget"),
        Case(
            "max-flops-below-cheapest-exit", "absurd budget", bad_knob(max_flops="1"), 422, "invalid_budget"
        ),
        Case(
            "target-flops-below-every-point",
            "absurd budget",
            bad_knob(target_flops="1k"),
            422,
            "invalid_budget",
            "operating point",
        ),
        Case(
            "max-flops-text", "absurd budget", bad_knob(max_flops="abc"), 422, "invalid_budget", "max_flops"
        ),
        Case("confidence-1.5", "thresholds out of [0, 1]", bad_knob(confidence="1.5"), 422, "invalid_budget"),
        Case(
            "confidence-text", "thresholds out of [0, 1]", bad_knob(confidence="high"), 422, "invalid_budget"
        ),
        Case(
            "thresholds-above-1",
            "thresholds out of [0, 1]",
            bad_knob(thresholds="2,0,0,0,0,0"),
            422,
            "invalid_budget",
        ),
        Case(
            "thresholds-negative",
            "thresholds out of [0, 1]",
            bad_knob(thresholds="-0.1,0,0,0,0,0"),
            422,
            "invalid_budget",
        ),
        Case(
            "thresholds-bad-entry",
            "thresholds out of [0, 1]",
            bad_knob(thresholds="0.1,x,0.3,0.4,0.5,0.6"),
            422,
            "invalid_budget",
        ),
        Case(
            "thresholds-5-of-6",
            "thresholds of the wrong length",
            bad_knob(thresholds="0.5,0.5,0.5,0.5,0.5"),
            422,
            "invalid_budget",
            "6",
        ),
        Case(
            "thresholds-7-of-6",
            "thresholds of the wrong length",
            json_send({"images": [B64], "thresholds": [0.5] * 7}),
            422,
            "invalid_budget",
            "6",
        ),
        Case(
            "thresholds-empty-entry",
            "thresholds of the wrong length",
            bad_knob(thresholds="0.5,,0.5,0.5,0.5,0.5"),
            422,
            "invalid_budget",
        ),
        Case(
            "thresholds-and-confidence",
            "thresholds of the wrong length",
            bad_knob(thresholds="0.5,0.5,0.5,0.5,0.5,0.5", confidence="0.5"),
            422,
            "invalid_budget",
            "not both",
        ),
        Case(
            "operating-point-and-confidence",
            "absurd budget",
            bad_knob(operating_point="nonexistent", confidence="0.5"),
            422,
            "invalid_budget",
            "give either `operating_point` or `confidence`",
        ),
        Case(
            "operating-point-and-target-flops",
            "absurd budget",
            bad_knob(operating_point="full-depth", target_flops="1"),
            422,
            "invalid_budget",
            "give either `operating_point` or `target_flops`",
        ),
        Case(
            "operating-point-unknown",
            "absurd budget",
            bad_knob(operating_point="warp-speed"),
            422,
            "invalid_budget",
        ),
        # -- unknown models and versions
        Case(
            "model-unknown",
            "unknown model or version",
            image_file(PNG, path="/v1/models/nope/classify"),
            404,
            "model_not_found",
        ),
        Case(
            "model-unknown-get",
            "unknown model or version",
            S("GET", "/v1/models/nope"),
            404,
            "model_not_found",
        ),
        Case("version-unknown", "unknown model or version", bad_knob(version="99"), 404, "model_not_found"),
        Case(
            "version-path-like", "unknown model or version", bad_knob(version="../1"), 422, "invalid_request"
        ),
        Case(
            "v2-model-unknown",
            "unknown model or version",
            v2_fp32([1, 1, 28, 28], zeros_784, path="/v2/models/nope/infer"),
            404,
            "model_not_found",
        ),
        Case(
            "v2-version-unknown",
            "unknown model or version",
            S("GET", "/v2/models/tiny/versions/3"),
            404,
            "model_not_found",
        ),
        Case(
            "v2-input-misnamed",
            "v2 tensor wrong dtype",
            json_send({"inputs": [{**v2_document["inputs"][0], "name": "foo"}]}, V2),  # type: ignore[index]
            400,
            "invalid_input",
            "must be named 'image'",
        ),
        Case(
            "v2-bytes-input-named-image",
            "v2 tensor wrong dtype",
            v2_bytes_named("image", [B64]),
            400,
            "invalid_input",
            "must be named 'image_bytes'",
        ),
        Case(
            "v2-infer-query-version-unknown",
            "unknown model or version",
            json_send(v2_document, V2, params={"version": "9"}),
            404,
            "model_not_found",
        ),
        Case(
            "v2-infer-query-version-conflict",
            "unknown model or version",
            json_send(v2_document, "/v2/models/tiny/versions/1/infer", params={"version": "2"}),
            422,
            "invalid_request",
            "both in the path",
        ),
        Case(
            "v2-infer-query-unknown-key",
            "unknown knob",
            json_send(v2_document, V2, params={"top_k": "3"}),
            422,
            "invalid_request",
            "unknown query parameter 'top_k'",
        ),
        # -- path-like model names (sent unnormalised: httpx would resolve the dot segments itself)
        Case(
            "path-dotdot",
            "path-like model names",
            S(
                path="/v1/models/../etc/classify",
                content=PNG,
                headers={"Content-Type": "image/png"},
                raw_path=True,
            ),
            404,
            "not_found",
        ),
        Case(
            "path-dotdot-encoded",
            "path-like model names",
            S(
                path="/v1/models/..%2Fetc/classify",
                content=PNG,
                headers={"Content-Type": "image/png"},
                raw_path=True,
            ),
            404,
            "not_found",
        ),
        Case(
            "path-dotdot-dots-encoded",
            "path-like model names",
            S(
                path="/v1/models/%2E%2E/classify",
                content=PNG,
                headers={"Content-Type": "image/png"},
                raw_path=True,
            ),
            404,
            "model_not_found",
        ),
        Case(
            "path-hidden-name",
            "path-like model names",
            S(
                path="/v1/models/.hidden/classify",
                content=PNG,
                headers={"Content-Type": "image/png"},
                raw_path=True,
            ),
            404,
            "model_not_found",
        ),
        Case(
            "path-space",
            "path-like model names",
            S(
                path="/v1/models/a%20b/classify",
                content=PNG,
                headers={"Content-Type": "image/png"},
                raw_path=True,
            ),
            404,
            "model_not_found",
        ),
        Case(
            "path-etc-passwd",
            "path-like model names",
            S(
                path="/v1/models/%2Fetc%2Fpasswd/classify",
                content=PNG,
                headers={"Content-Type": "image/png"},
                raw_path=True,
            ),
            404,
            "not_found",
        ),
        Case(
            "path-v2-dotdot-encoded",
            "path-like model names",
            S(
                path="/v2/models/..%2F..%2Fetc/infer",
                content=b'{"inputs": []}',
                headers={"Content-Type": "application/json"},
                raw_path=True,
            ),
            404,
            "not_found",
        ),
        Case(
            "path-model-dotdot-get",
            "path-like model names",
            S("GET", "/v1/models/..", raw_path=True),
            404,
            "model_not_found",
        ),
        # -- media types
        Case(
            "text-plain", "unsupported media type", raw(b"hello", "text/plain"), 415, "unsupported_media_type"
        ),
        Case("no-content-type", "unsupported media type", raw(b"hello", None), 415, "unsupported_media_type"),
        Case(
            "application-xml",
            "unsupported media type",
            raw(b"<images/>", "application/xml"),
            415,
            "unsupported_media_type",
        ),
        Case(
            "content-encoding-br",
            "unsupported media type",
            raw(b"{}", "application/json", **{"Content-Encoding": "br"}),
            415,
            "unsupported_media_type",
        ),
        Case(
            "multipart-gzip",
            "unsupported media type",
            S(
                content=b"x",
                headers={"Content-Encoding": "gzip", "Content-Type": "multipart/form-data; boundary=b"},
            ),
            415,
            "unsupported_media_type",
        ),
        # -- multipart structure
        Case(
            "multipart-broken",
            "malformed multipart",
            raw(b"--x\r\nbroken", "multipart/form-data; boundary=x"),
            400,
            "invalid_input",
        ),
        Case(
            "multipart-wrong-file-field",
            "malformed multipart",
            multipart([("image", PNG)]),
            422,
            "invalid_request",
            "image",
        ),
        Case(
            "multipart-file-as-text",
            "malformed multipart",
            S(content=multipart_text_file, headers=boundary_b),
            422,
            "invalid_request",
            "file upload",
        ),
        Case(
            "multipart-image-without-filename",
            "malformed multipart",
            S(
                content=b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\n'
                + PNG
                + b"\r\n--b--\r\n",
                headers=boundary_b,
            ),
            400,
            "invalid_input",
            "a file part needs a filename",
        ),
        Case(
            "multipart-knobs-only",
            "malformed multipart",
            S(content=multipart_knobs_only, headers=boundary_b),
            400,
            "invalid_input",
            "no image",
        ),
        # -- v2 tensors
        Case(
            "v2-shape-3-channels",
            "v2 tensor wrong shape",
            v2_fp32([1, 3, 28, 28]),
            400,
            "invalid_input",
            "shape",
        ),
        Case("v2-shape-3d", "v2 tensor wrong shape", v2_fp32([1, 28, 28]), 400, "invalid_input", "shape"),
        Case(
            "v2-shape-negative",
            "v2 tensor wrong shape",
            v2_fp32([-1, 1, 28, 28], zeros_784),
            422,
            "invalid_request",
        ),
        Case(
            "v2-dtype-int8",
            "v2 tensor wrong dtype",
            v2_fp32([1, 1, 28, 28], datatype="INT8"),
            400,
            "invalid_input",
            "datatype",
        ),
        Case(
            "v2-dtype-fp64",
            "v2 tensor wrong dtype",
            v2_fp32([1, 1, 28, 28], datatype="FP64"),
            400,
            "invalid_input",
            "datatype",
        ),
        Case(
            "v2-data-count",
            "v2 tensor wrong byte count",
            v2_fp32([1, 1, 28, 28], [0.0] * 10),
            400,
            "invalid_input",
        ),
        Case(
            "v2-binary-short",
            "v2 tensor wrong byte count",
            v2_binary(fp32_header, b"\x00" * 3132),
            400,
            "invalid_input",
        ),
        Case(
            "v2-binary-extra",
            "v2 tensor wrong byte count",
            v2_binary(fp32_header, b"\x00" * 3144),
            400,
            "invalid_input",
        ),
        Case(
            "v2-header-length-text",
            "v2 tensor wrong byte count",
            v2_binary(fp32_header, b"\x00" * 3136, "abc"),
            400,
            "invalid_input",
        ),
        Case(
            "v2-bytes-count", "v2 tensor wrong byte count", v2_bytes([B64], shape=[2]), 400, "invalid_input"
        ),
        # -- routes
        Case("route-unknown", "unknown route", S("GET", "/nowhere"), 404, "not_found"),
        Case("method-not-allowed", "unknown route", S("GET", V1), 405, "method_not_allowed"),
        Case(
            "route-trailing-slash",
            "unknown route",
            S("POST", "/v1/classify/", headers={"Host": "evil.example"}),
            404,
            "not_found",
        ),
        # -- inputs that raised past the codecs (500s found in session 13's review)
        Case("json-nested-deep", "invalid JSON", raw(deep_json, "application/json"), 400, "invalid_input"),
        Case(
            "v2-json-nested-deep",
            "invalid JSON",
            raw(deep_json, "application/json", V2),
            400,
            "invalid_input",
        ),
        Case(
            "json-5000-digit-integer",
            "absurd budget",
            raw(b'{"images": ["' + B64.encode() + b'"], "top_k": ' + b"9" * 5000 + b"}", "application/json"),
            400,
            "invalid_input",
        ),
        Case(
            "v2-5000-digit-dimension",
            "v2 tensor wrong shape",
            raw(
                b'{"inputs": [{"name": "image", "shape": [' + b"9" * 5000 + b'], "datatype": "FP32", '
                b'"data": []}]}',
                "application/json",
                V2,
            ),
            400,
            "invalid_input",
        ),
        Case(
            "json-top-k-2-to-the-64",
            "absurd budget",
            json_send({"images": [B64], "top_k": 2**64}),
            422,
            "invalid_request",
            "top_k",
        ),
        Case(
            "v2-classification-2-to-the-64",
            "absurd budget",
            json_send(
                {
                    "inputs": [
                        {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": zeros_784}
                    ],
                    "outputs": [{"name": "probabilities", "parameters": {"classification": 2**64}}],
                },
                V2,
            ),
            422,
            "invalid_request",
            "classification",
        ),
        Case(
            "multipart-boundary-257",
            "malformed multipart",
            S(
                content=b"--" + b"B" * 257 + b"\r\n--" + b"B" * 257 + b"--\r\n",
                headers={"Content-Type": "multipart/form-data; boundary=" + "B" * 257},
            ),
            400,
            "invalid_input",
            "boundary",
        ),
    ]


CASES: list[Case] = [*_bad_cases(), *_success_images()]


def error_code(body: object) -> tuple[str | None, str]:
    """(code, message) of either error shape: v1 `{"error": {...}}` or v2 `{"error": "...", "code"}`."""
    if not isinstance(body, dict):
        return None, ""
    inner = body.get("error")
    if isinstance(inner, dict):
        return inner.get("code"), str(inner.get("message", ""))
    if isinstance(inner, str):
        code = body.get("code")
        return (code if isinstance(code, str) else None), inner
    return None, ""


def markdown_table(rows: list[tuple[Case, Seen]]) -> str:
    lines = ["| case | covers | expected | seen |", "|---|---|---|---|"]
    for case, seen in rows:
        expected = f"{case.status} {case.code or 'ok'}"
        got = f"{seen.status} {seen.code or ('ok' if seen.status == 200 else '?')}"
        lines.append(f"| {case.name} | {case.topic} | {expected} | {got} |")
    return "\n".join(lines) + "\n"


def send(client: httpx.Client, port: int, request: Send) -> Seen:
    """Send one corpus request; `raw_path` ones go through http.client so the path stays as written."""
    content = request.content() if callable(request.content) else request.content
    if request.raw_path:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            body = content if isinstance(content, bytes) else b"".join(content)
            connection.request(request.method, request.path, body=body or None, headers=dict(request.headers))
            answer = connection.getresponse()
            status, raw_body = answer.status, answer.read()
            content_type = answer.getheader("content-type") or ""
        finally:
            connection.close()
    else:
        response = client.request(
            request.method,
            request.path,
            content=content if content or request.method != "GET" else None,
            headers=dict(request.headers),
            params=dict(request.params),
        )
        status, raw_body, content_type = (
            response.status_code,
            response.content,
            response.headers.get("content-type", ""),
        )
    try:
        body: object = json.loads(raw_body)
    except ValueError:
        body = None
    code, message = error_code(body)
    return Seen(status, code, message, body, content_type)
