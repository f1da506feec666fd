"""Client pieces that need no server: image encoding, knob serialisation, error mapping, budget mixes,
report arithmetic."""

from __future__ import annotations

import asyncio
import io
import json
import random

import httpx
import numpy as np
import pytest
from PIL import Image
from ranet_client import (
    AsyncRanetClient,
    BudgetError,
    InvalidInputError,
    Knobs,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RanetClient,
    RanetError,
    RetryPolicy,
    ServerError,
    UnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
    encode_image,
    encode_png,
    parse_flops,
)
from ranet_client._protocol import error_from_response, normalize_url, prepare_classify
from ranet_client.errors import ConnectionFailedError, RequestError
from ranet_client.image_sets import bundled_samples, folder_samples
from ranet_client.images import encode_images
from ranet_client.load import (
    BudgetChoice,
    ImageRecord,
    LoadConfig,
    RequestRecord,
    parse_budget_mix,
    percentile,
    summarize,
)
from ranet_client.retry import parse_retry_after


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4)])
def test_numpy_arrays_encode_to_png_that_decodes_to_the_same_pixels(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
    assert decoded.shape == (shape if len(shape) == 3 and shape[2] != 1 else shape[:2])
    assert np.array_equal(decoded.reshape(pixels.shape), pixels)


def test_non_contiguous_arrays_encode_in_logical_order() -> None:
    pixels = np.arange(48, dtype=np.uint8).reshape(6, 8)[:, ::2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels)))), pixels)


def test_float_arrays_and_odd_shapes_are_rejected_with_a_hint() -> None:
    with pytest.raises(TypeError, match="uint8"):
        encode_png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        encode_png(np.zeros((0, 4), dtype=np.uint8))


def test_every_input_kind_becomes_an_image_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    png = encode_png(np.full((3, 3), 7, dtype=np.uint8))
    path = tmp_path / "shoe.png"
    path.write_bytes(png)
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    assert encode_image(path).name == "shoe.png"
    assert encode_image(str(path)).content_type == "image/png"
    assert encode_image(png, 3).name == "image_3.png"
    assert encode_image(jpeg.getvalue()).content_type == "image/jpeg"
    assert encode_image(Image.new("L", (4, 4))).content_type == "image/png"
    with path.open("rb") as handle:
        assert encode_image(handle).data == png
    assert encode_image(b"not an image").content_type == "application/octet-stream"
    with pytest.raises(TypeError, match="cannot send"):
        encode_image(3.5)


def test_a_list_is_many_images_and_an_array_is_one() -> None:
    array = np.zeros((2, 28, 28), dtype=np.uint8)  # H x W x C with C=28 is not an image: one bad image
    with pytest.raises(ValueError):
        encode_images(array)
    assert len(encode_images([np.zeros((2, 2), dtype=np.uint8)] * 3)) == 3
    with pytest.raises(ValueError, match="no images"):
        encode_images([])


def test_knobs_keep_strings_as_written_and_numbers_exact() -> None:
    knobs = Knobs(max_flops="20M", target_flops=15e6, confidence=0.5, thresholds=[0.9, 0.8, 1.0], top_k=3)
    assert knobs.as_json() == {
        "max_flops": "20M",
        "target_flops": 15000000,
        "confidence": 0.5,
        "thresholds": [0.9, 0.8, 1],
        "top_k": 3,
    }
    assert knobs.as_strings() == {
        "max_flops": "20M",
        "target_flops": "15000000",
        "confidence": "0.5",
        "thresholds": "0.9,0.8,1",
        "top_k": "3",
    }


def test_numpy_scalars_are_sent_as_plain_numbers() -> None:
    knobs = Knobs(max_flops=np.int64(5_000_000), confidence=np.float32(0.5), thresholds=np.array([0.5, 1.0]))
    assert knobs.as_json() == {"max_flops": 5000000, "confidence": 0.5, "thresholds": [0.5, 1]}
    assert knobs.as_strings() == {"max_flops": "5000000", "confidence": "0.5", "thresholds": "0.5,1"}


def test_each_encoding_carries_images_and_knobs_where_the_server_reads_them() -> None:
    images = encode_images([b"\x89PNG\r\n\x1a\nxx"])
    knobs = Knobs(max_flops="20M")
    multipart = prepare_classify(images, knobs, None, "multipart")
    assert multipart.path == "/v1/classify"
    assert multipart.kwargs["files"][0][0] == "files" and multipart.kwargs["data"] == {"max_flops": "20M"}
    as_json = prepare_classify(images, knobs, "a/b", "json")
    assert as_json.path == "/v1/models/a%2Fb/classify"
    assert as_json.kwargs["json"]["max_flops"] == "20M" and len(as_json.kwargs["json"]["images"]) == 1
    raw = prepare_classify(images, knobs, None, "raw")
    assert raw.kwargs["headers"]["Content-Type"] == "image/png" and raw.kwargs["params"] == {
        "max_flops": "20M"
    }
    with pytest.raises(ValueError, match="exactly one"):
        prepare_classify(images * 2, knobs, None, "raw")


def test_parse_flops_reads_decimal_units() -> None:
    assert parse_flops("20M") == 20e6
    assert parse_flops("1.5G") == 1.5e9
    assert parse_flops("300k") == 300e3
    assert parse_flops("2e7") == 2e7
    assert parse_flops(12) == 12.0
    for bad in ("", "M", "-3M", "20X", "0"):
        with pytest.raises(ValueError):
            parse_flops(bad)


def test_urls_get_a_scheme_and_lose_the_trailing_slash() -> None:
    assert normalize_url("127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert normalize_url("https://x.example/base/") == "https://x.example/base"


def _answer(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_input", InvalidInputError),
        (404, "model_not_found", NotFoundError),
        (404, "not_found", NotFoundError),
        (413, "payload_too_large", PayloadTooLargeError),
        (415, "unsupported_media_type", UnsupportedMediaTypeError),
        (422, "invalid_request", ValidationError),
        (422, "invalid_budget", BudgetError),
        (429, "overloaded", OverloadedError),
        (503, "not_ready", UnavailableError),
        (500, "stage_failed", ServerError),
        (502, "bad_gateway", ServerError),
        (418, "teapot", RequestError),
    ],
)
def test_error_answers_map_to_exception_classes(status: int, code: str, cls: type[Exception]) -> None:
    error = error_from_response(_answer(status, {"error": {"code": code, "message": "m"}}))
    assert type(error) is cls
    assert (error.status, error.code, error.message) == (status, code, "m")


def test_error_fields_come_from_the_body_and_headers() -> None:
    body = {
        "error": {"code": "invalid_budget", "message": "too small", "details": {"cheapest_exit_flops": 5}}
    }
    error = error_from_response(_answer(422, body))
    assert isinstance(error, BudgetError) and error.details == {"cheapest_exit_flops": 5}
    overloaded = error_from_response(
        _answer(429, {"error": {"code": "overloaded", "message": "full"}}, {"Retry-After": "3"})
    )
    assert overloaded.retry_after == 3.0
    v2 = error_from_response(_answer(404, {"error": "no model", "code": "model_not_found"}))
    assert isinstance(v2, NotFoundError) and v2.message == "no model"
    html = error_from_response(_answer(502, b"<html>bad gateway</html>"))
    assert isinstance(html, ServerError) and "bad gateway" in html.message and html.code == "http_502"


@pytest.mark.parametrize("body", [{"model": "x"}, {"model": "x", "version": "1", "results": [{"label": 3}]}])
def test_a_200_the_client_cannot_read_is_a_ranet_error_not_a_key_error(body: dict) -> None:
    # A proxy's page or another server on the port: every call raises RanetError(invalid_response).
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    with RanetClient("http://stub", transport=transport) as client:
        for call in (lambda: client.classify(b"png"), lambda: client.model("m")):
            with pytest.raises(RanetError) as raised:
                call()
            assert (raised.value.code, raised.value.status) == ("invalid_response", 200)
            assert "cannot read" in raised.value.message

    async def classify_async() -> None:
        async with AsyncRanetClient("http://stub", transport=transport) as client:
            await client.classify(b"png")

    with pytest.raises(RanetError, match="cannot read"):
        asyncio.run(classify_async())


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_initial=0.1, backoff_max=1.0, jitter=0.5)
    error = ConnectionFailedError("down", code="connection_error")
    rng = random.Random(1)
    for attempt in range(1, 10):
        wait = policy.delay(attempt, error, rng)
        full = min(1.0, 0.1 * 2 ** (attempt - 1))
        assert wait is not None and full * 0.5 <= wait <= full
    assert policy.delay(10, error, rng) is None


def test_retry_after_is_a_floor_and_too_long_a_wait_ends_retries() -> None:
    policy = RetryPolicy(max_attempts=5, max_retry_after=10.0)
    rng = random.Random(0)
    asked = OverloadedError("full", status=429, code="overloaded", retry_after=4.0)
    wait = policy.delay(1, asked, rng)
    assert wait is not None and 4.0 <= wait <= 4.0 + policy.jitter * policy.backoff(0)
    assert policy.delay(1, OverloadedError("full", status=429, retry_after=60.0), rng) is None
    assert policy.delay(1, BudgetError("no", status=422), rng) is None


def test_budget_mix_parses_weights_knobs_and_thresholds() -> None:
    mix = parse_budget_mix("none:0.5, max_flops=20M:0.3,target_flops=15M&top_k=3:0.2,thresholds=0.9/0.5/1")
    assert mix == (
        BudgetChoice("none", {}, 0.5),
        BudgetChoice("max_flops=20M", {"max_flops": "20M"}, 0.3),
        BudgetChoice("target_flops=15M&top_k=3", {"target_flops": "15M", "top_k": "3"}, 0.2),
        BudgetChoice("thresholds=0.9/0.5/1", {"thresholds": "0.9,0.5,1"}, 1.0),
    )
    assert parse_budget_mix(None) == (BudgetChoice("none", {}, 1.0),)
    for bad in ("max_flop=20M", "max_flops=lots", "none:-1", "none:x", "max_flops"):
        with pytest.raises(ValueError):
            parse_budget_mix(bad)


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summary_counts_exits_flops_accuracy_and_errors() -> None:
    image = ImageRecord
    records = [
        RequestRecord(
            "none", 0.010, "200", images=(image(0, 100, 0.9, False, True), image(2, 300, 0.5, False, False))
        ),
        RequestRecord("cap", 0.020, "200", images=(image(1, 200, 0.4, True, None),)),
        RequestRecord("cap", 0.5, "429", "overloaded"),
        RequestRecord("none", 0.5, "connection_error", "connection_error"),
    ]
    config = LoadConfig(mix=(BudgetChoice("none", {}, 1.0), BudgetChoice("cap", {"max_flops": "1"}, 1.0)))
    report = summarize(records, config, duration_s=2.0)
    assert (report.requests_sent, report.requests_ok, report.requests_failed, report.images_ok) == (
        4,
        2,
        2,
        3,
    )
    assert report.exit_counts == {0: 1, 1: 1, 2: 1}
    assert report.total_flops == 600 and report.mean_flops_per_image == 200
    assert (report.labelled_images, report.correct_images, report.accuracy) == (2, 1, 0.5)
    assert report.errors_by_status == {"429": 1, "connection_error": 1}
    assert report.throughput_rps == 1.0 and report.budget_limited_images == 1
    assert report.latency_ms["max"] == pytest.approx(20.0)
    assert report.by_budget["cap"].requests == 2 and report.by_budget["cap"].ok == 1
    json.dumps(report.to_dict())  # JSON-ready


def test_load_config_is_bounded() -> None:
    assert LoadConfig().validated().requests == 100
    assert LoadConfig(duration=10_000).validated().duration == 600
    assert LoadConfig(requests=5).validated().duration == 600  # a count run still has a time limit
    for bad in (LoadConfig(concurrency=0), LoadConfig(rate=0), LoadConfig(batch=0), LoadConfig(requests=0)):
        with pytest.raises(ValueError):
            bad.validated()


def test_bundled_samples_are_labelled_fashion_mnist_pngs() -> None:
    samples = bundled_samples()
    assert len(samples) == 20
    assert sorted({s.class_index for s in samples}) == list(range(10))
    for sample in samples:
        image = Image.open(io.BytesIO(sample.data))
        assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
    assert sum(len(s.data) for s in samples) < 20_000


def test_folder_samples_read_short_and_long_label_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(encode_png(np.zeros((2, 2), dtype=np.uint8)))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "labels.json").write_text(json.dumps({"a.png": 3, "b.png": "Dress"}))
    samples = folder_samples(tmp_path)
    assert [(s.name, s.class_index, s.label) for s in samples] == [
        ("a.png", 3, None),
        ("b.png", None, "Dress"),
        ("c.png", None, None),
    ]
    assert samples[1].is_correct(3, "Dress") and samples[2].is_correct(0, "x") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder_samples(tmp_path / "empty")
