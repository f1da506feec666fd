"""v1 classify: every input form and every knob, checked against the cascade run directly."""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import numpy as np
import pytest
import torch
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser
from starlette.formparsers import FormParser

from helpers.bundles import BALANCED_THRESHOLDS
from helpers.images import jpeg_bytes, png_bytes
from helpers.metrics import delta, scrape, value
from helpers.server import RunningServer
from ranet_serve.api.images import ImageLimits, preprocess_batch
from ranet_serve.api.service import ClassifyResult
from ranet_serve.api.v1 import routes as v1_routes
from ranet_serve.api.v1.codec import encode_v1
from ranet_serve.api.v1.schemas import ClassifyResponse, ImagePrediction, Timings, TopKEntry
from ranet_serve.cascade.executor import BatchResult, CascadeExecutor, ImageResult
from ranet_serve.cascade.runtimes import create_runtime
from ranet_serve.data.datasets import FASHION_MNIST_LABELS
from ranet_serve.export.bundle import load_bundle

FLOPS = [2030858, 5210532, 7604693, 9495311, 11346677, 12649895]
LAST = len(FLOPS) - 1


@pytest.fixture(scope="module")
def reference(tiny_bundle_dir: Path) -> CascadeExecutor:
    """The same bundle run directly through the executor, without the server."""
    return CascadeExecutor(create_runtime(load_bundle(tiny_bundle_dir), "onnxruntime", "cpu", 1))


def run_reference(
    executor: CascadeExecutor,
    images: list[bytes],
    thresholds: tuple[float, ...],
    max_exit: int = LAST,
    top_k: int = 1,
) -> BatchResult:
    spec = executor.runtime.manifest.input
    batch = torch.as_tensor(preprocess_batch(images, spec, ImageLimits()))
    n = len(images)
    thresholds_array = np.tile(np.asarray(thresholds, dtype=np.float32), (n, 1))
    return executor.run(batch, thresholds_array, np.full(n, max_exit), top_k=top_k)


def multipart(images: list[bytes], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def classify(client: httpx.Client, images: list[bytes], **params: object) -> dict:
    response = client.post("/v1/models/tiny/classify", files=multipart(images), params=params)
    assert response.status_code == 200, response.text
    return response.json()


# -- input forms ------------------------------------------------------------------------------------------


def test_multipart_answers_like_the_cascade_run_directly(
    client: httpx.Client, images: list[bytes], reference: CascadeExecutor
) -> None:
    body = classify(client, images)
    expected = run_reference(reference, images, BALANCED_THRESHOLDS)
    assert body["model"] == "tiny"
    assert body["version"] == "2"  # the latest version
    assert body["operating_point"] == "balanced"
    assert len(body["results"]) == len(images)
    for result, want in zip(body["results"], expected.images, strict=True):
        assert result["exit"] == want.exit
        assert result["class_index"] == want.class_index
        assert result["confidence"] == pytest.approx(want.confidence, abs=1e-5)
        assert result["flops"] == FLOPS[want.exit]
        assert result["label"] == FASHION_MNIST_LABELS[want.class_index]
        assert result["budget_limited"] is False
        assert result["top_k"] == [
            {
                "label": result["label"],
                "class_index": result["class_index"],
                "probability": result["confidence"],
            }
        ]
    assert len({r["exit"] for r in body["results"]}) > 1, "the balanced point should spread images over exits"
    timings = body["timings"]
    assert 0 <= timings["queue_ms"] <= timings["total_ms"]
    assert 0 < timings["inference_ms"] <= timings["total_ms"]


def test_single_file_field_and_default_model_route(client: httpx.Client, images: list[bytes]) -> None:
    many = classify(client, images[:2])
    response = client.post("/v1/classify", files={"file": ("a.png", images[1], "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny"
    assert response.json()["results"] == [
        {**many["results"][1], "confidence": pytest.approx(many["results"][1]["confidence"], abs=1e-5)}
    ]


def test_raw_image_body_is_one_image(client: httpx.Client, images: list[bytes]) -> None:
    expected = classify(client, images[:1])["results"][0]
    response = client.post(
        "/v1/models/tiny/classify",
        content=images[0],
        headers={"Content-Type": "image/png"},
        params={"top_k": 2},
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert (result["class_index"], result["exit"]) == (expected["class_index"], expected["exit"])
    assert len(result["top_k"]) == 2


def test_json_base64_images_and_data_uri(client: httpx.Client, images: list[bytes]) -> None:
    expected = classify(client, images[:3])["results"]
    encoded = [base64.b64encode(data).decode() for data in images[:3]]
    encoded[2] = "data:image/png;base64," + encoded[2]
    response = client.post("/v1/models/tiny/classify", json={"images": encoded, "top_k": 1})
    assert response.status_code == 200, response.text
    got = response.json()["results"]
    assert [(r["class_index"], r["exit"]) for r in got] == [(r["class_index"], r["exit"]) for r in expected]


def test_colour_jpeg_of_another_size_is_converted(client: httpx.Client) -> None:
    response = client.post("/v1/models/tiny/classify", files={"file": ("a.jpg", jpeg_bytes(1), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1


# -- knobs ---------------------------------------------------------------------------------------------------


def test_max_flops_between_exit_0_and_1_always_answers_from_exit_0(
    client: httpx.Client, images: list[bytes], reference: CascadeExecutor
) -> None:
    body = classify(client, images, max_flops="3M")
    expected = run_reference(reference, images, BALANCED_THRESHOLDS, max_exit=0)
    for result, want in zip(body["results"], expected.images, strict=True):
        assert result["exit"] == 0
        assert result["flops"] == FLOPS[0]
        # Limited unless exit 0 was confident on its own (balanced threshold 0.3 there).
        assert result["budget_limited"] is (want.confidence < BALANCED_THRESHOLDS[0])
        assert result["confidence"] == pytest.approx(want.confidence, abs=1e-5)
    assert any(r["budget_limited"] for r in body["results"])


def test_max_flops_with_confidence_one_is_always_budget_limited(
    client: httpx.Client, images: list[bytes]
) -> None:
    body = classify(client, images, max_flops=str(FLOPS[1]), confidence=1.0)
    assert [r["exit"] for r in body["results"]] == [1] * len(images)
    assert all(r["budget_limited"] for r in body["results"])
    assert body["operating_point"] == "confidence=1"


def test_max_flops_accepts_g_suffix_and_plain_numbers(client: httpx.Client, images: list[bytes]) -> None:
    assert all(r["exit"] <= 2 for r in classify(client, images, max_flops=8e6, confidence=1.0)["results"])
    assert all(
        r["exit"] == LAST for r in classify(client, images, max_flops="1.5G", confidence=1.0)["results"]
    )


def test_max_flops_below_the_cheapest_exit_names_its_cost(client: httpx.Client, images: list[bytes]) -> None:
    response = client.post(
        "/v1/models/tiny/classify", files=multipart(images[:1]), params={"max_flops": "1M"}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_budget"
    assert str(FLOPS[0]) in error["message"]


@pytest.mark.parametrize(
    ("target", "point", "exits"),
    [("2.5M", "fast", {0}), ("20M", "full-depth", {LAST})],
)
def test_target_flops_picks_the_most_accurate_point_within_it(
    client: httpx.Client, images: list[bytes], target: str, point: str, exits: set[int]
) -> None:
    body = classify(client, images, target_flops=target)
    assert body["operating_point"] == point
    assert {r["exit"] for r in body["results"]} == exits


def test_target_flops_between_points_picks_balanced(client: httpx.Client, images: list[bytes]) -> None:
    assert classify(client, images, target_flops="7M")["operating_point"] == "balanced"


def test_confidence_one_runs_every_image_to_the_last_exit(client: httpx.Client, images: list[bytes]) -> None:
    body = classify(client, images, confidence="1.0")
    assert [r["exit"] for r in body["results"]] == [LAST] * len(images)
    assert [r["flops"] for r in body["results"]] == [FLOPS[LAST]] * len(images)
    assert not any(r["budget_limited"] for r in body["results"])


def test_confidence_zero_answers_everything_at_exit_0(client: httpx.Client, images: list[bytes]) -> None:
    assert {r["exit"] for r in classify(client, images, confidence=0)["results"]} == {0}


def test_thresholds_as_comma_list_and_json_list(client: httpx.Client, images: list[bytes]) -> None:
    body = classify(client, images, thresholds="1,0,1,1,1,1")
    assert body["operating_point"] == "custom-thresholds"
    assert {r["exit"] for r in body["results"]} == {1}
    encoded = [base64.b64encode(data).decode() for data in images[:2]]
    response = client.post(
        "/v1/models/tiny/classify", json={"images": encoded, "thresholds": [1, 1, 0, 1, 1, 1]}
    )
    assert response.status_code == 200, response.text
    assert {r["exit"] for r in response.json()["results"]} == {2}


@pytest.mark.parametrize("thresholds", ["0.5,0.5", "0.1,0.2,0.3,0.4,0.5,0.6,0.7"])
def test_thresholds_of_the_wrong_length_answer_422(
    client: httpx.Client, images: list[bytes], thresholds: str
) -> None:
    response = client.post(
        "/v1/models/tiny/classify", files=multipart(images[:1]), data={"thresholds": thresholds}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_budget"
    assert "6" in error["message"]


def test_operating_point_by_name(client: httpx.Client, images: list[bytes]) -> None:
    body = classify(client, images, operating_point="fast")
    assert body["operating_point"] == "fast"
    assert {r["exit"] for r in body["results"]} == {0}
    response = client.post(
        "/v1/models/tiny/classify", files=multipart(images[:1]), params={"operating_point": "turbo"}
    )
    assert response.status_code == 422
    assert "balanced" in response.json()["error"]["message"]


def test_top_k_lists_classes_by_probability(client: httpx.Client, images: list[bytes]) -> None:
    body = classify(client, images[:2], top_k=10)
    for result in body["results"]:
        probabilities = [entry["probability"] for entry in result["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert sorted(e["class_index"] for e in result["top_k"]) == list(range(10))
        assert result["top_k"][0]["class_index"] == result["class_index"]
        assert all(e["label"] == FASHION_MNIST_LABELS[e["class_index"]] for e in result["top_k"])


@pytest.mark.parametrize("top_k", ["0", "11", "abc", "1.5"])
def test_top_k_out_of_range_answers_422(client: httpx.Client, images: list[bytes], top_k: str) -> None:
    response = client.post("/v1/models/tiny/classify", files=multipart(images[:1]), params={"top_k": top_k})
    assert response.status_code == 422
    assert "top_k" in response.json()["error"]["message"]


def test_version_knob_selects_a_version(client: httpx.Client, images: list[bytes]) -> None:
    assert classify(client, images[:1], version="1")["version"] == "1"
    response = client.post("/v1/models/tiny/classify", files=multipart(images[:1]), params={"version": "9"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_knobs_in_form_fields(client: httpx.Client, images: list[bytes]) -> None:
    response = client.post(
        "/v1/models/tiny/classify", files=multipart(images[:2]), data={"confidence": "1", "max_flops": "6M"}
    )
    assert response.status_code == 200, response.text
    assert [r["exit"] for r in response.json()["results"]] == [1, 1]


def test_deadline_ms_generous_enough_succeeds(client: httpx.Client, images: list[bytes]) -> None:
    assert len(classify(client, images, deadline_ms=5000)["results"]) == len(images)


def test_more_images_share_one_request_up_to_the_limit(client: httpx.Client) -> None:
    eight = [png_bytes(100 + i) for i in range(8)]
    assert len(classify(client, eight)["results"]) == 8


# -- response encoding -------------------------------------------------------------------------------------


def _result(labels: tuple[str, ...]) -> ClassifyResult:
    """A result with awkward values: floats without short decimal forms, non-ASCII labels, k > 1."""
    images = (
        ImageResult(
            exit=2,
            class_index=1,
            confidence=1 / 3,
            top_k=((1, 1 / 3), (0, 0.1), (2, 1e-7)),
            flops=7604693,
            budget_limited=False,
            seconds=0.002,
        ),
        ImageResult(
            exit=0,
            class_index=2,
            confidence=0.9999999403953552,
            top_k=((2, 0.9999999403953552),),
            flops=2030858,
            budget_limited=True,
            seconds=0.001,
        ),
    )
    return ClassifyResult(
        model="tiny",
        version="2",
        operating_point="balanced",
        labels=labels,
        images=images,
        queue_seconds=0.000123,
        inference_seconds=0.0045678,
        total_seconds=0.01,
    )


def _pydantic_body(result: ClassifyResult) -> bytes:
    """What the route answered when it returned the pydantic model and FastAPI serialised it."""
    labels = result.labels
    model = ClassifyResponse(
        model=result.model,
        version=result.version,
        operating_point=result.operating_point,
        results=[
            ImagePrediction(
                label=labels[image.class_index],
                class_index=image.class_index,
                confidence=image.confidence,
                top_k=[TopKEntry(label=labels[c], class_index=c, probability=p) for c, p in image.top_k],
                exit=image.exit,
                flops=image.flops,
                budget_limited=image.budget_limited,
            )
            for image in result.images
        ],
        timings=Timings(
            queue_ms=1000 * result.queue_seconds,
            inference_ms=1000 * result.inference_seconds,
            total_ms=1000 * result.total_seconds,
        ),
    )
    return bytes(JSONResponse(jsonable_encoder(model)).body)


def test_encode_v1_writes_the_bytes_fastapi_wrote() -> None:
    result = _result(("T-shirt/top", "Trouser – ünïcode", 'Pull"over'))
    assert encode_v1(result) == _pydantic_body(result)


def test_encode_v1_refuses_non_finite_numbers() -> None:
    result = _result(("a", "b", "c"))
    broken = replace(result, images=(replace(result.images[0], confidence=math.nan),))
    with pytest.raises(ValueError):
        encode_v1(broken)


def test_the_response_body_is_the_documented_model(client: httpx.Client, images: list[bytes]) -> None:
    response = client.post("/v1/models/tiny/classify", files=multipart(images[:3]), params={"top_k": 2})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert ClassifyResponse.model_validate_json(response.content).model_dump(mode="json") == body
    assert list(body) == ["model", "version", "operating_point", "results", "timings"]
    assert list(body["results"][0]) == [
        "label",
        "class_index",
        "confidence",
        "top_k",
        "exit",
        "flops",
        "budget_limited",
        "deadline_limited",
    ]


def test_fastapi_does_not_validate_the_response_again(
    client: httpx.Client, images: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route returns serialised bytes; FastAPI's response-model pass would cost every request."""
    calls: list[object] = []
    original = fastapi.routing.serialize_response

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("field"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "serialize_response", counting)
    assert client.post("/v1/models/tiny/classify", files=multipart(images[:1])).status_code == 200
    assert calls == []
    assert client.get("/v1/models").status_code == 200  # the spy works: other routes still go through it
    assert len(calls) == 1


def test_an_encoding_failure_is_counted_as_a_500(
    server: RunningServer, client: httpx.Client, images: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding runs inside the service's request tracking, so its failure is the 500 the metrics count.

    The failing request has a connection of its own: after an unexpected error Starlette re-raises to
    uvicorn, which closes the connection once the 500 is sent.
    """

    def failing(result: ClassifyResult) -> bytes:
        raise RuntimeError("injected encoding failure")

    monkeypatch.setattr(v1_routes, "encode_v1", failing)
    before = scrape(client)
    with server.client() as own:
        response = own.post("/v1/models/tiny/classify", files=multipart(images[:1]))
    after = scrape(client)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert delta(before, after, "ranet_requests_total", model="tiny", status="500") == 1
    assert delta(before, after, "ranet_requests_total", model="tiny", status="200") == 0
    assert delta(before, after, "ranet_request_duration_seconds_count", model="tiny") == 1
    assert value(after, "ranet_inflight_requests", model="tiny") == 0


def test_only_multipart_requests_construct_a_form_parser(
    client: httpx.Client, images: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw bodies, JSON and v2 tensors (JSON or binary) never pay for form parsing."""
    built: list[str] = []
    for parser in (MultipartParser, FormParser):
        original = parser.__init__

        def spy(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            built.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(parser, "__init__", spy)

    encoded = base64.b64encode(images[0]).decode()
    v2_json = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [encoded]}]}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(images[0])},
                }
            ]
        }
    ).encode()
    binary = header + struct.pack("<I", len(images[0])) + images[0]
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/models/tiny/classify", {"content": images[0], "headers": {"Content-Type": "image/png"}}),
        (
            "/v1/models/tiny/classify",
            {"content": images[0], "headers": {"Content-Type": "application/octet-stream"}},
        ),
        ("/v1/models/tiny/classify", {"json": {"images": [encoded]}}),
        ("/v2/models/tiny/infer", {"json": v2_json}),
        (
            "/v2/models/tiny/infer",
            {
                "content": binary,
                "headers": {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            },
        ),
    ]
    for path, send in requests:
        response = client.post(path, **send)
        assert response.status_code == 200, (path, response.text)
    assert built == []
    assert client.post("/v1/models/tiny/classify", files=multipart(images[:1])).status_code == 200
    assert built == ["MultipartParser"]  # the spy sees the one form that needs it
