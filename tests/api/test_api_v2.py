"""KServe v2 / Open Inference Protocol: JSON and binary tensors, metadata, health, and tritonclient."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import numpy as np
import pytest

from helpers.server import RunningServer
from ranet_serve.api.images import ImageLimits, preprocess_batch
from ranet_serve.data.datasets import FASHION_MNIST_LABELS
from ranet_serve.export.defaults import default_input_spec
from ranet_serve.model.config import load_config

FLOPS = [2030858, 5210532, 7604693, 9495311, 11346677, 12649895]
INFER = "/v2/models/tiny/infer"


def tensor_of(images: list[bytes]) -> np.ndarray:
    """`images` preprocessed as the tiny model expects: float32 [N, 1, 28, 28]."""
    spec = default_input_spec(load_config("fmnist-default", n_channels=4, growth_rate=4))
    return np.asarray(preprocess_batch(images, spec, ImageLimits()), dtype=np.float32)


@pytest.fixture(scope="module")
def tensor(images: list[bytes]) -> np.ndarray:
    """The test images preprocessed as the model expects: float32 [8, 1, 28, 28]."""
    return tensor_of(images)


@pytest.fixture(scope="module")
def v1_answer(server: RunningServer, images: list[bytes]) -> list[dict[str, Any]]:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    with server.client() as client:
        response = client.post("/v1/models/tiny/classify", files=files)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def outputs_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in body["outputs"]}


def assert_matches_v1(outputs: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert list(outputs["class_index"]) == [r["class_index"] for r in expected]
    assert list(outputs["exit"]) == [r["exit"] for r in expected]
    assert list(outputs["flops"]) == [r["flops"] for r in expected]
    assert list(outputs["label"]) == [r["label"] for r in expected]
    assert np.allclose(outputs["confidence"], [r["confidence"] for r in expected], atol=1e-5)


def json_fp32_request(array: np.ndarray, nested: bool = False, **parameters: object) -> dict[str, Any]:
    data = array.tolist() if nested else array.ravel().tolist()
    request: dict[str, Any] = {
        "inputs": [{"name": "image", "shape": list(array.shape), "datatype": "FP32", "data": data}]
    }
    if parameters:
        request["parameters"] = parameters
    return request


def binary_request(header: dict[str, Any], payload: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + payload, {
        "Inference-Header-Content-Length": str(len(encoded)),
        "Content-Type": "application/octet-stream",
    }


# -- metadata and health ----------------------------------------------------------------------------------


def test_server_metadata_and_health(client: httpx.Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "ranet-serve"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_describes_the_input_spec(client: httpx.Client) -> None:
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny"
    assert meta["versions"] == ["1", "2"]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["image"] == {"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert inputs["image_bytes"]["datatype"] == "BYTES"
    outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
    assert outputs["label"] == "BYTES" and outputs["class_index"] == "INT64" and outputs["exit"] == "INT32"
    assert client.get("/v2/models/tiny/versions/1").json()["versions"] == ["1"]


def test_model_readiness_per_version(client: httpx.Client) -> None:
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/7/ready").status_code == 404
    response = client.get("/v2/models/nope/ready")
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str)  # the v2 error shape
    assert response.json()["code"] == "model_not_found"


# -- inference ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_json_fp32_tensor_matches_v1_on_the_same_images(
    client: httpx.Client, tensor: np.ndarray, v1_answer: list[dict[str, Any]], nested: bool
) -> None:
    response = client.post(INFER, json={**json_fp32_request(tensor, nested=nested), "id": "req-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "2" and body["id"] == "req-1"
    assert body["parameters"]["operating_point"] == "balanced"
    outputs = outputs_by_name(body)
    assert set(outputs) == {"label", "class_index", "confidence", "exit", "flops", "budget_limited"}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [8]
    assert_matches_v1({name: o["data"] for name, o in outputs.items()}, v1_answer)


def test_json_bytes_images_in_base64(
    client: httpx.Client, images: list[bytes], v1_answer: list[dict[str, Any]]
) -> None:
    data = [base64.b64encode(image).decode() for image in images]
    request = {"inputs": [{"name": "image_bytes", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    response = client.post("/v2/models/tiny/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"
    assert_matches_v1({n: o["data"] for n, o in outputs_by_name(response.json()).items()}, v1_answer)


def test_binary_fp32_input_and_binary_outputs(
    client: httpx.Client, tensor: np.ndarray, v1_answer: list[dict[str, Any]]
) -> None:
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": list(tensor.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": tensor.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    content, headers = binary_request(header, tensor.astype("<f4").tobytes())
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    body = json.loads(response.content[:length])
    buffer = response.content[length:]
    decoded: dict[str, Any] = {}
    offset = 0
    for output in body["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw = buffer[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            items, position = [], 0
            while position < len(raw):
                (n,) = struct.unpack_from("<I", raw, position)
                items.append(raw[position + 4 : position + 4 + n].decode())
                position += 4 + n
            decoded[output["name"]] = items
        else:
            dtype = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "BOOL": "?"}[output["datatype"]]
            decoded[output["name"]] = np.frombuffer(raw, dtype=dtype).tolist()
    assert offset == len(buffer)
    assert_matches_v1(decoded, v1_answer)


def test_binary_bytes_input(
    client: httpx.Client, images: list[bytes], v1_answer: list[dict[str, Any]]
) -> None:
    payload = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(payload)},
            }
        ]
    }
    content, headers = binary_request(header, payload)
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert_matches_v1({n: o["data"] for n, o in outputs_by_name(response.json()).items()}, v1_answer)


def test_budget_knobs_in_parameters_and_probabilities_output(
    client: httpx.Client, tensor: np.ndarray
) -> None:
    request = json_fp32_request(tensor, max_flops="3M", confidence=1.0)
    request["outputs"] = [
        {"name": "exit"},
        {"name": "budget_limited"},
        {"name": "probabilities"},
        {"name": "flops"},
    ]
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    outputs = outputs_by_name(response.json())
    assert list(outputs) == ["exit", "budget_limited", "probabilities", "flops"]
    assert outputs["exit"]["data"] == [0] * 8
    assert outputs["budget_limited"]["data"] == [True] * 8
    assert outputs["flops"]["data"] == [FLOPS[0]] * 8
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert probabilities.shape == (8, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_target_flops_parameter_picks_a_point(client: httpx.Client, tensor: np.ndarray) -> None:
    response = client.post(INFER, json=json_fp32_request(tensor[:2], target_flops=2.5e6))
    assert response.json()["parameters"]["operating_point"] == "fast"


@pytest.mark.parametrize(
    ("request_body", "status"),
    [
        ({"inputs": []}, 422),
        ({"inputs": "x"}, 422),
        ({"nothing": 1}, 422),
        ({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32"}]}, 422),
        (
            {
                "inputs": [
                    {"name": "image", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0.0] * 2352}
                ]
            },
            400,
        ),
        (
            {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 10}]},
            400,
        ),
        (
            {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "INT8", "data": [0] * 784}]},
            400,
        ),
        (
            {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["a"] * 784}]},
            400,
        ),
        (
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [2, 1, 28, 28],
                        "datatype": "FP32",
                        "data": [[0.0] * 784, [0.0]],
                    }
                ]
            },
            400,
        ),
        (
            {
                "inputs": [
                    {"name": "image", "shape": [-1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
                ]
            },
            422,
        ),
        (
            {
                "inputs": [
                    {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
                ]
                * 2
            },
            422,
        ),
        ({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, 400),
        ({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": ["aGVsbG8="]}]}, 400),
        ({"inputs": [{"name": "image", "shape": [0, 1, 28, 28], "datatype": "FP32", "data": []}]}, 400),
        (
            {
                "inputs": [
                    {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
                ],
                "outputs": [{"name": "logits"}],
            },
            422,
        ),
        (
            {
                "inputs": [
                    {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
                ],
                "parameters": {"max_flops": "-3"},
            },
            422,
        ),
    ],
)
def test_malformed_v2_requests_answer_4xx(
    client: httpx.Client, request_body: dict[str, Any], status: int
) -> None:
    response = client.post(INFER, json=request_body)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_non_finite_fp32_values_are_refused(client: httpx.Client) -> None:
    data = np.zeros((1, 1, 28, 28), dtype="<f4")
    data[0, 0, 0, 0] = np.nan
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": data.nbytes},
            }
        ]
    }
    content, headers = binary_request(header, data.tobytes())
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 400
    assert "NaN" in response.json()["error"]


@pytest.mark.parametrize(
    ("declared", "payload", "header_length"),
    [
        (784 * 4, b"\x00" * (784 * 4 - 4), None),  # fewer bytes than declared
        (784 * 4, b"\x00" * (784 * 4 + 8), None),  # bytes that belong to no input
        (100, b"\x00" * 100, None),  # declared size does not fit the shape
        (784 * 4, b"\x00" * (784 * 4), "999999"),  # header length beyond the body
        (784 * 4, b"\x00" * (784 * 4), "abc"),
    ],
)
def test_binary_byte_counts_are_checked(
    client: httpx.Client, declared: int, payload: bytes, header_length: str | None
) -> None:
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": declared},
            }
        ]
    }
    content, headers = binary_request(header, payload)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 400, response.text


def test_truncated_bytes_elements_are_refused(client: httpx.Client) -> None:
    payload = struct.pack("<I", 1000) + b"short"
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(payload)},
            }
        ]
    }
    content, headers = binary_request(header, payload)
    assert client.post(INFER, content=content, headers=headers).status_code == 400


def test_unknown_model_and_version(client: httpx.Client, tensor: np.ndarray) -> None:
    assert client.post("/v2/models/nope/infer", json=json_fp32_request(tensor[:1])).status_code == 404
    assert (
        client.post("/v2/models/tiny/versions/3/infer", json=json_fp32_request(tensor[:1])).status_code == 404
    )
    assert client.get("/v2/models/nope").status_code == 404


# -- the standard client ----------------------------------------------------------------------------------


def test_tritonclient_works_unchanged(
    server: RunningServer, tensor: np.ndarray, v1_answer: list[dict[str, Any]]
) -> None:
    tritonclient_http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert client.get_model_metadata("tiny")["inputs"][0]["shape"] == [-1, 1, 28, 28]

        # Binary input and binary outputs: the client's defaults.
        image = tritonclient_http.InferInput("image", list(tensor.shape), "FP32")
        image.set_data_from_numpy(tensor)
        result = client.infer("tiny", [image])
        decoded = {
            "label": [v.decode() for v in result.as_numpy("label")],
            "class_index": result.as_numpy("class_index").tolist(),
            "confidence": result.as_numpy("confidence").tolist(),
            "exit": result.as_numpy("exit").tolist(),
            "flops": result.as_numpy("flops").tolist(),
        }
        assert result.as_numpy("class_index").dtype == np.int64
        assert result.as_numpy("exit").dtype == np.int32
        assert_matches_v1(decoded, v1_answer)
        assert all(label in FASHION_MNIST_LABELS for label in decoded["label"])

        # JSON input, JSON outputs, budget knobs as parameters, a version.
        image = tritonclient_http.InferInput("image", list(tensor.shape), "FP32")
        image.set_data_from_numpy(tensor, binary_data=False)
        wanted = [tritonclient_http.InferRequestedOutput("exit", binary_data=False)]
        result = client.infer(
            "tiny", [image], model_version="1", outputs=wanted, parameters={"max_flops": "3M"}
        )
        assert result.as_numpy("exit").tolist() == [0] * 8
        assert result.get_response()["model_version"] == "1"

        # Compressed request bodies (Content-Encoding: gzip) are inflated under the body limit.
        result = client.infer("tiny", [image], request_compression_algorithm="gzip", outputs=wanted)
        assert result.as_numpy("exit").tolist() == [r["exit"] for r in v1_answer]

        with pytest.raises(InferenceServerException) as raised:
            client.infer("nope", [image])
        assert "nope" in str(raised.value)
        assert raised.value.status() == "404"
    finally:
        client.close()
