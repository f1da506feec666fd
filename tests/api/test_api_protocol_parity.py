"""v1 and v2 take the same knobs (one table, `api/knobs.py`), reject the same wrong ones the same way, and
both honour top_k; v2's standard Triton parameters are accepted, used or refused as `v2/codec.py` says."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest

from helpers.server import RunningServer
from ranet_serve.api.knobs import KNOBS

V1 = "/v1/models/tiny/classify"
V2 = "/v2/models/tiny/infer"

# One valid value per knob, each sent alone; the set must stay the knob table's (checked below).
VALID: dict[str, object] = {
    "max_flops": "6M",
    "target_flops": "2.5M",
    "confidence": 1.0,
    "thresholds": "0.5,0.5,0.5,0.5,0.5,0.99",
    "operating_point": "fast",
    "top_k": 3,
    "version": "1",
    "deadline_ms": 5000,
    "on_deadline": "best",
}


def v1_classify(client: httpx.Client, images: list[bytes], knobs: dict[str, object]) -> httpx.Response:
    encoded = [base64.b64encode(data).decode() for data in images]
    return client.post(V1, json={"images": encoded, **knobs})


def v2_infer(
    client: httpx.Client,
    images: list[bytes],
    parameters: dict[str, object] | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> httpx.Response:
    encoded = [base64.b64encode(data).decode() for data in images]
    request: dict[str, Any] = {
        "inputs": [{"name": "image_bytes", "shape": [len(images)], "datatype": "BYTES", "data": encoded}]
    }
    if parameters is not None:
        request["parameters"] = parameters
    if outputs is not None:
        request["outputs"] = outputs
    return client.post(V2, json=request)


def outputs_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in body["outputs"]}


def test_the_valid_values_cover_the_knob_table() -> None:
    assert set(VALID) == set(KNOBS)


@pytest.mark.parametrize("knob", list(VALID))
def test_both_protocols_accept_each_knob_and_answer_alike(
    client: httpx.Client, images: list[bytes], knob: str
) -> None:
    """Same knob, same images: the same version, point, exits and classes on either protocol."""
    v1 = v1_classify(client, images[:4], {knob: VALID[knob]})
    v2 = v2_infer(client, images[:4], {knob: VALID[knob]})
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text
    one, two = v1.json(), v2.json()
    outputs = outputs_by_name(two)
    assert two["model_version"] == one["version"]
    assert two["parameters"]["operating_point"] == one["operating_point"]
    assert outputs["exit"]["data"] == [r["exit"] for r in one["results"]]
    assert outputs["class_index"]["data"] == [r["class_index"] for r in one["results"]]
    assert outputs["budget_limited"]["data"] == [r["budget_limited"] for r in one["results"]]
    if knob == "version":
        assert one["version"] == "1"  # the latest is 2: the knob was used, not dropped


def test_a_knob_in_the_path_and_in_parameters_must_agree(client: httpx.Client, images: list[bytes]) -> None:
    path = "/v2/models/tiny/versions/1/infer"
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(images[0]).decode()],
            }
        ]
    }
    assert client.post(path, json={**body, "parameters": {"version": "1"}}).status_code == 200
    clash = client.post(path, json={**body, "parameters": {"version": "2"}})
    assert clash.status_code == 422
    assert "version" in clash.json()["error"]


@pytest.mark.parametrize("name", ["colour", "max_flop", "topk", "binary_data"])
def test_an_unknown_knob_is_refused_alike_by_both(
    client: httpx.Client, images: list[bytes], name: str
) -> None:
    v1 = v1_classify(client, images[:1], {name: "1"})
    v2 = v2_infer(client, images[:1], {name: "1"})
    assert (v1.status_code, v2.status_code) == (422, 422), (v1.text, v2.text)
    v1_error, v2_error = v1.json()["error"], v2.json()
    assert v1_error["code"] == v2_error["code"] == "invalid_request"
    assert v1_error["details"] == {"parameter": name}
    for message in (v1_error["message"], v2_error["error"]):
        assert message.startswith(f"unknown parameter {name!r}; known: ")
        listed = message.split("; known: ", 1)[1].split(", ")
        assert listed[: len(KNOBS)] == list(KNOBS)  # every knob, in the table's order
    # Each protocol lists its own parameters after the knobs: v1 only `stream`, v2 Triton's.
    assert v1_error["message"].split("; known: ", 1)[1].split(", ") == [*KNOBS, "stream"]
    assert "binary_data_output" in v2_error["error"]


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("top_k", "many"),
        ("top_k", 0),
        ("deadline_ms", -1),
        ("version", "../1"),
        ("max_flops", "abc"),
        ("on_deadline", "later"),
    ],
)
def test_a_wrong_knob_value_gets_the_same_message_on_both(
    client: httpx.Client, images: list[bytes], knob: str, value: object
) -> None:
    v1 = v1_classify(client, images[:1], {knob: value})
    v2 = v2_infer(client, images[:1], {knob: value})
    assert (v1.status_code, v2.status_code) == (422, 422), (v1.text, v2.text)
    assert v1.json()["error"]["message"] == v2.json()["error"]
    assert v1.json()["error"]["code"] == v2.json()["code"]
    assert knob in v2.json()["error"]


def test_top_k_is_honoured_by_both(client: httpx.Client, images: list[bytes]) -> None:
    v1 = v1_classify(client, images[:3], {"top_k": 3})
    assert v1.status_code == 200, v1.text
    expected = [r["top_k"] for r in v1.json()["results"]]
    assert all(len(entries) == 3 for entries in expected)

    # No output list: the defaults, plus the top-k outputs because top_k was given.
    v2 = v2_infer(client, images[:3], {"top_k": 3})
    assert v2.status_code == 200, v2.text
    body = v2.json()
    assert body["parameters"]["top_k"] == 3
    outputs = outputs_by_name(body)
    assert {"label", "class_index", "top_k_label", "top_k_class_index", "top_k_probability"} <= set(outputs)
    for name, datatype in (
        ("top_k_label", "BYTES"),
        ("top_k_class_index", "INT64"),
        ("top_k_probability", "FP32"),
    ):
        assert outputs[name]["datatype"] == datatype
        assert outputs[name]["shape"] == [3, 3]
    indices = np.asarray(outputs["top_k_class_index"]["data"]).reshape(3, 3)
    probabilities = np.asarray(outputs["top_k_probability"]["data"]).reshape(3, 3)
    labels = np.asarray(outputs["top_k_label"]["data"]).reshape(3, 3)
    for row, entries in enumerate(expected):
        assert indices[row].tolist() == [e["class_index"] for e in entries]
        assert labels[row].tolist() == [e["label"] for e in entries]
        assert np.allclose(probabilities[row], [e["probability"] for e in entries], atol=1e-5)

    # Without top_k the default outputs are what they were; asked for by name, top-k outputs hold one class.
    plain = outputs_by_name(v2_infer(client, images[:3]).json())
    assert not any(name.startswith("top_k") for name in plain)
    one = v2_infer(client, images[:3], outputs=[{"name": "top_k_class_index"}]).json()
    assert one["parameters"]["top_k"] == 1
    assert outputs_by_name(one)["top_k_class_index"]["shape"] == [3, 1]


def test_top_k_with_dense_probabilities(client: httpx.Client, images: list[bytes]) -> None:
    """`probabilities` makes the engine return every class; the top-k outputs still hold k of them."""
    response = v2_infer(
        client, images[:2], {"top_k": 2}, outputs=[{"name": "probabilities"}, {"name": "top_k_probability"}]
    )
    assert response.status_code == 200, response.text
    outputs = outputs_by_name(response.json())
    dense = np.asarray(outputs["probabilities"]["data"]).reshape(2, 10)
    top = np.asarray(outputs["top_k_probability"]["data"]).reshape(2, 2)
    assert np.allclose(np.sort(dense, axis=1)[:, ::-1][:, :2], top, atol=1e-6)


# -- v2's standard parameters ------------------------------------------------------------------------------


def test_standard_triton_parameters_are_accepted(client: httpx.Client, images: list[bytes]) -> None:
    parameters = {
        "priority": 3,
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "binary_data_output": False,
        "timeout": 5_000_000,  # microseconds
    }
    response = v2_infer(client, images[:2], parameters)
    assert response.status_code == 200, response.text
    assert v2_infer(client, images[:1], {"timeout": 0}).status_code == 200  # Triton's "no timeout"
    # They are v2's, not knobs: v1 refuses them as it refuses any unknown name.
    refused = v1_classify(client, images[:1], {"priority": 3})
    assert refused.status_code == 422
    assert refused.json()["error"]["message"].startswith("unknown parameter 'priority'")


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"sequence_id": 7, "sequence_start": True}, "stateless"),
        ({"timeout": 1000, "deadline_ms": 5}, "not both"),
        ({"timeout": "soon"}, "timeout"),
        ({"binary_data_output": "yes"}, "binary_data_output"),
    ],
)
def test_standard_parameters_that_cannot_be_honoured_are_refused(
    client: httpx.Client, images: list[bytes], parameters: dict[str, object], fragment: str
) -> None:
    response = v2_infer(client, images[:1], parameters)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (
            {"name": "label", "parameters": {"colour": 1}},
            "unknown parameter 'colour' of output 'label'; known:",
        ),
        ({"name": "label", "parameters": {"classification": 2}}, "probabilities"),
        ({"name": "probabilities", "parameters": {"classification": 0}}, "classification"),
        (
            {"name": "label", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8}},
            "shared",
        ),
    ],
)
def test_output_parameters_are_checked(
    client: httpx.Client, images: list[bytes], output: dict[str, Any], fragment: str
) -> None:
    response = v2_infer(client, images[:1], outputs=[output])
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]


def test_shared_memory_inputs_are_refused(client: httpx.Client) -> None:
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 3136},
            }
        ]
    }
    response = client.post(V2, json=request)
    assert response.status_code == 422
    assert "shared memory" in response.json()["error"]


def test_classification_extension_on_probabilities(client: httpx.Client, images: list[bytes]) -> None:
    v1 = v1_classify(client, images[:2], {"top_k": 3}).json()["results"]
    response = v2_infer(
        client, images[:2], outputs=[{"name": "probabilities", "parameters": {"classification": 3}}]
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 3])
    rows = np.asarray(output["data"]).reshape(2, 3)
    for row, expected in zip(rows, v1, strict=True):
        parsed = [entry.split(":", 2) for entry in row]
        assert [int(index) for _, index, _ in parsed] == [e["class_index"] for e in expected["top_k"]]
        assert [label for _, _, label in parsed] == [e["label"] for e in expected["top_k"]]
        assert np.allclose([float(p) for p, _, _ in parsed], [e["probability"] for e in expected["top_k"]])


def test_tritonclient_top_k_and_class_count_in_binary(server: RunningServer, images: list[bytes]) -> None:
    """The binary encoding of the 2-D outputs, read by the standard client."""
    tritonclient_http = pytest.importorskip("tritonclient.http")
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        image = tritonclient_http.InferInput("image_bytes", [3], "BYTES")
        image.set_data_from_numpy(np.array(images[:3], dtype=object))
        wanted = [
            tritonclient_http.InferRequestedOutput("top_k_label"),
            tritonclient_http.InferRequestedOutput("top_k_class_index"),
            tritonclient_http.InferRequestedOutput("probabilities", class_count=2),
        ]
        result = client.infer("tiny", [image], outputs=wanted, parameters={"top_k": 2}, timeout=10_000_000)
        labels = result.as_numpy("top_k_label")
        indices = result.as_numpy("top_k_class_index")
        classes = result.as_numpy("probabilities")
        assert labels.shape == indices.shape == classes.shape == (3, 2)
        assert indices.dtype == np.int64
        for row in range(3):
            parsed = [entry.decode().split(":", 2) for entry in classes[row]]
            assert [int(index) for _, index, _ in parsed] == indices[row].tolist()
            assert [label for _, _, label in parsed] == [label.decode() for label in labels[row]]
        assert result.get_response()["parameters"]["top_k"] == 2
    finally:
        client.close()


def test_the_schema_documents_the_same_knobs_for_both() -> None:
    from ranet_serve.api.app import create_app
    from ranet_serve.api.v2.codec import PROTOCOL_PARAMETERS
    from ranet_serve.settings import Settings

    paths = create_app(Settings(model_store="/nonexistent")).openapi()["paths"]
    v1_body = paths["/v1/models/{model}/classify"]["post"]["requestBody"]["content"]
    for media_type in ("multipart/form-data", "application/json"):
        assert set(KNOBS) <= set(v1_body[media_type]["schema"]["properties"])
    v2_body = paths["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]
    documented = v2_body["schema"]["properties"]["parameters"]
    assert list(documented["properties"]) == [*KNOBS, *PROTOCOL_PARAMETERS]
    assert documented["additionalProperties"] is False  # anything else is the unknown-parameter 422
