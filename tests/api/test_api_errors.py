"""Malformed requests get a clear 4xx JSON error with a stable code; never a 500, never a crash."""

from __future__ import annotations

import base64
import http.client
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers.images import png_bytes
from helpers.server import RunningServer

PNG = png_bytes(0)
B64 = base64.b64encode(PNG).decode()
URL = "/v1/models/tiny/classify"


def assert_error(response: httpx.Response, status: int, code: str, fragment: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert fragment.lower() in error["message"].lower()
    return error


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"", None, 400, "invalid_input"),
        (b"", "image/png", 400, "invalid_input"),
        (b"", "application/json", 400, "invalid_input"),
        (b"{not json", "application/json", 400, "invalid_input"),
        (b"[1, 2]", "application/json", 422, "invalid_request"),
        (b'{"images": "abc"}', "application/json", 422, "invalid_request"),
        (b'{"images": []}', "application/json", 422, "invalid_request"),
        (b'{"images": [123]}', "application/json", 422, "invalid_request"),
        (b'{"images": ["!!!not base64!!!"]}', "application/json", 400, "invalid_input"),
        (b'{"pictures": ["abc"]}', "application/json", 422, "invalid_request"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"hello", None, 415, "unsupported_media_type"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", 400, "invalid_input"),
    ],
)
def test_malformed_bodies(
    client: httpx.Client, content: bytes, content_type: str | None, status: int, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error(client.post(URL, content=content, headers=headers), status, code)


def test_json_with_an_unknown_knob_names_it(client: httpx.Client) -> None:
    response = client.post(URL, json={"images": [B64], "max_flop": "20M"})
    assert_error(response, 422, "invalid_request", "max_flop")


@pytest.mark.parametrize("data", [b"not an image at all", PNG[:40], b"\x89PNG\r\n\x1a\n" + b"\x00" * 64])
def test_undecodable_images_answer_4xx(client: httpx.Client, data: bytes) -> None:
    response = client.post(URL, files={"file": ("x.png", data, "image/png")})
    assert response.status_code in (400, 415), response.text
    assert response.json()["error"]["code"] in ("invalid_input", "unsupported_media_type")


def test_undecodable_image_in_json(client: httpx.Client) -> None:
    response = client.post(URL, json={"images": [base64.b64encode(b"garbage").decode()]})
    assert response.status_code in (400, 415), response.text


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"max_flops": "abc"}, "max_flops"),
        ({"max_flops": "nan"}, ""),
        ({"max_flops": "-5"}, ""),
        ({"max_flops": "inf"}, ""),
        ({"max_flops": "1e400"}, ""),
        ({"target_flops": "0"}, ""),
        ({"target_flops": "1k"}, "operating point"),
        ({"confidence": "1.5"}, ""),
        ({"confidence": "nan"}, ""),
        ({"confidence": "high"}, ""),
        ({"thresholds": "0.1,x,0.3,0.4,0.5,0.6"}, ""),
        ({"thresholds": "2,0,0,0,0,0"}, ""),
        ({"thresholds": "0.5,0.5,0.5,0.5,0.5,0.5", "confidence": "0.5"}, "not both"),
    ],
)
def test_bad_budgets_answer_422(client: httpx.Client, params: dict[str, str], fragment: str) -> None:
    assert_error(
        client.post(URL, files={"file": ("a.png", PNG, "image/png")}, params=params),
        422,
        "invalid_budget",
        fragment,
    )


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"deadline_ms": "-1"}, "deadline_ms"),
        ({"deadline_ms": "soon"}, "deadline_ms"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_request_fields_answer_422(client: httpx.Client, params: dict[str, str], fragment: str) -> None:
    assert_error(
        client.post(URL, files={"file": ("a.png", PNG, "image/png")}, params=params),
        422,
        "invalid_request",
        fragment,
    )


def test_knob_given_in_query_and_body_differently_is_rejected(client: httpx.Client) -> None:
    response = client.post(URL, json={"images": [B64], "top_k": 2}, params={"top_k": 3})
    assert_error(response, 422, "invalid_request", "top_k")


@pytest.mark.parametrize(
    "path", ["/v1/models/nope/classify", "/v1/models/..%2Fetc/classify", "/v1/models/nope"]
)
def test_unknown_models_answer_404(client: httpx.Client, path: str) -> None:
    response = (
        client.post(path, files={"file": ("a.png", PNG, "image/png")})
        if path.endswith("classify")
        else client.get(path)
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] in ("model_not_found", "not_found")


def test_path_like_model_names_never_reach_the_filesystem(server: RunningServer) -> None:
    # http.client sends the path as written (httpx would normalise the dot segments away).
    paths = [
        "/v1/models/../etc/classify",
        "/v1/models/..%2Fetc/classify",
        "/v1/models/%2E%2E/classify",
        "/v1/models/.hidden/classify",
        "/v1/models/a%20b/classify",
        "/v2/models/..%2F..%2Fetc/infer",
        "/v1/models/..",
    ]
    for path in paths:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request("POST", path, body=PNG, headers={"Content-Type": "image/png"})
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        assert response.status in (404, 405, 422), (path, response.status, body)
        assert "error" in body


def test_unknown_routes_and_methods_answer_json(client: httpx.Client) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    error = assert_error(client.get(URL), 405, "method_not_allowed")
    assert error["message"]


def test_body_over_the_limit_answers_413(client: httpx.Client) -> None:
    big = PNG + b"\x00" * (1 << 20)
    assert_error(
        client.post(URL, content=big, headers={"Content-Type": "image/png"}), 413, "payload_too_large"
    )


def test_chunked_body_over_the_limit_is_cut_off_while_streaming(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\x00" * 65536

    response = client.post(URL, content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(response, 413, "payload_too_large")


def test_multipart_over_the_limit_answers_413(client: httpx.Client) -> None:
    files = [("files", (f"{i}.png", b"\x00" * 300_000, "image/png")) for i in range(4)]
    assert_error(client.post(URL, files=files), 413, "payload_too_large")


def test_too_many_images_answer_413(client: httpx.Client) -> None:
    files = [("files", (f"{i}.png", PNG, "image/png")) for i in range(9)]
    assert_error(client.post(URL, files=files), 413, "payload_too_large", "8")
    assert_error(client.post(URL, json={"images": [B64] * 9}), 413, "payload_too_large", "8")
    files = [("files", (f"{i}.png", PNG, "image/png")) for i in range(30)]
    assert_error(client.post(URL, files=files), 413, "payload_too_large")


def test_multipart_with_wrong_fields(client: httpx.Client) -> None:
    assert_error(
        client.post(URL, files={"image": ("a.png", PNG, "image/png")}), 422, "invalid_request", "image"
    )
    text_file = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot-a-file\r\n--b--\r\n'
    response = client.post(
        URL, content=text_file, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert_error(response, 422, "invalid_request", "file upload")
    knobs_only = b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n2\r\n--b--\r\n'
    response = client.post(
        URL, content=knobs_only, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert_error(response, 400, "invalid_input", "no image")


def test_decompression_bomb_image_is_refused(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((5000, 5000), dtype=np.uint8)).save(buffer, format="PNG")
    response = client.post(URL, files={"file": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code in (400, 413), response.text
