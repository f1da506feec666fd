"""KServe v2 over gRPC: tritonclient.grpc against a live server, answers equal to v2 REST, error codes,
admission shared with HTTP, grpc.health.v1, the port setting, and several front-end processes.

Typed contents (`contents.fp32_contents`, `bytes_contents`), which tritonclient never sends, go
through the server's own generated stub.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers.bundles import make_store
from helpers.metrics import metric
from helpers.process import ServeProcess, free_port
from helpers.server import Faults, RunningServer, settings_for
from helpers.waiting import wait_until
from ranet_serve.api.errors import GRPC_STATUS_TABLE, STATUS_TABLE
from ranet_serve.api.grpc.protos import grpc_service_pb2 as pb
from ranet_serve.api.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from ranet_serve.api.grpc.servicer import _deadline_ms, is_loopback_peer
from ranet_serve.api.images import ImageLimits, preprocess_batch
from ranet_serve.api.server import _reserve_grpc_port
from ranet_serve.errors import DeadlineExceededError
from ranet_serve.export.defaults import default_input_spec
from ranet_serve.model.config import load_config
from ranet_serve.settings import Settings

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

FLOPS = [2030858, 5210532, 7604693, 9495311, 11346677, 12649895]
DEFAULT_OUTPUTS = ["label", "class_index", "confidence", "exit", "flops", "budget_limited"]
KEY = "grpc-test-key"


@pytest.fixture(scope="module")
def tensor(images: list[bytes]) -> np.ndarray:
    spec = default_input_spec(load_config("fmnist-default", n_channels=4, growth_rate=4))
    return np.asarray(preprocess_batch(images, spec, ImageLimits()), dtype=np.float32)


@pytest.fixture(scope="module")
def served(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One in-process server with gRPC on a free port: tiny/1 and tiny/2."""
    store = make_store(tmp_path_factory.mktemp("grpc-store"), tiny_bundle_dir, versions=("1", "2"))
    running = RunningServer(settings_for(store, grpc_port=free_port())).start()
    yield running
    running.stop()


@pytest.fixture
def triton(served: RunningServer) -> Iterator[Any]:
    served.faults.reset()
    client = tritonclient_grpc.InferenceServerClient(served.grpc_target)
    yield client
    client.close()
    served.faults.reset()


def image_input(array: np.ndarray) -> Any:
    tensor = tritonclient_grpc.InferInput("image", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def outputs_of(result: Any) -> dict[str, np.ndarray]:
    return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}


def rest_outputs(server: RunningServer, request: dict[str, Any]) -> dict[str, np.ndarray]:
    with server.client() as client:
        response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def rest_fp32(array: np.ndarray, **parameters: object) -> dict[str, Any]:
    request: dict[str, Any] = {
        "inputs": [
            {"name": "image", "shape": list(array.shape), "datatype": "FP32", "data": array.ravel().tolist()}
        ]
    }
    if parameters:
        request["parameters"] = parameters
    return request


def assert_same_answers(grpc_outputs: dict[str, np.ndarray], rest: dict[str, np.ndarray]) -> None:
    assert list(grpc_outputs) == list(rest)
    for name, values in rest.items():
        got = grpc_outputs[name]
        assert got.shape == values.shape, name
        if got.dtype == object:
            assert [v.decode() for v in got.ravel()] == [str(v) for v in values.ravel()], name
        elif got.dtype.kind == "f":
            assert np.allclose(got, values, atol=1e-5), name
        else:
            assert got.tolist() == values.tolist(), name


def grpc_error(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call(*args, **kwargs)
    return raised.value


def stub(target: str) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


# -- health and metadata ----------------------------------------------------------------------------


def test_health_and_metadata_match_rest(triton: Any, served: RunningServer) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny") and triton.is_model_ready("tiny", "1")
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "ranet-serve" and meta["extensions"] == ["model_repository"]
    with served.client() as client:
        rest = client.get("/v2/models/tiny").json()
    grpc_meta = triton.get_model_metadata("tiny", as_json=True)
    for tensor in (*grpc_meta["inputs"], *grpc_meta["outputs"]):  # protobuf's JSON spells int64 as str
        tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert grpc_meta == rest
    assert triton.get_model_metadata("tiny", "1", as_json=True)["versions"] == ["1"]
    error = grpc_error(triton.is_model_ready, "nope")
    assert error.status() == "StatusCode.NOT_FOUND" and "nope" in error.message()


def test_health_v1_check_answers_readiness_and_liveness(served: RunningServer) -> None:
    with grpc.insecure_channel(served.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "liveness"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nothing"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# -- inference ----------------------------------------------------------------------------------------


def test_fp32_raw_contents_answer_as_v2_rest(triton: Any, served: RunningServer, tensor: np.ndarray) -> None:
    result = triton.infer("tiny", [image_input(tensor)], request_id="r-1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("tiny", "2", "r-1")
    assert response.parameters["operating_point"].string_param == "balanced"
    outputs = outputs_of(result)
    assert list(outputs) == DEFAULT_OUTPUTS
    assert outputs["class_index"].dtype == np.int64 and outputs["exit"].dtype == np.int32
    assert outputs["flops"].tolist() == [FLOPS[e] for e in outputs["exit"]]
    assert_same_answers(outputs, rest_outputs(served, rest_fp32(tensor)))


def test_bytes_png_input_answers_as_v2_rest(
    triton: Any, served: RunningServer, images: list[bytes], tensor: np.ndarray
) -> None:
    pngs = tritonclient_grpc.InferInput("image_bytes", [len(images)], "BYTES")
    pngs.set_data_from_numpy(np.array(images, dtype=object))
    outputs = outputs_of(triton.infer("tiny", [pngs], model_version="1"))
    assert_same_answers(outputs, rest_outputs(served, rest_fp32(tensor)))


def test_typed_contents_answer_as_raw_contents(
    served: RunningServer, images: list[bytes], tensor: np.ndarray
) -> None:
    channel, inference = stub(served.grpc_target)
    with channel:
        typed = pb.ModelInferRequest(model_name="tiny")
        typed.inputs.add(
            name="image", datatype="FP32", shape=list(tensor.shape)
        ).contents.fp32_contents.extend(tensor.ravel().tolist())
        encoded = pb.ModelInferRequest(model_name="tiny")
        encoded.inputs.add(
            name="image_bytes", datatype="BYTES", shape=[len(images)]
        ).contents.bytes_contents.extend(images)
        answers = [inference.ModelInfer(request) for request in (typed, encoded)]
    expected = rest_outputs(served, rest_fp32(tensor))
    for answer in answers:
        assert [o.name for o in answer.outputs] == DEFAULT_OUTPUTS
        assert len(answer.raw_output_contents) == len(DEFAULT_OUTPUTS)
        by_name = dict(zip((o.name for o in answer.outputs), answer.raw_output_contents, strict=True))
        assert np.frombuffer(by_name["exit"], "<i4").tolist() == expected["exit"].tolist()
        assert np.frombuffer(by_name["flops"], "<i8").tolist() == expected["flops"].tolist()
        assert np.allclose(np.frombuffer(by_name["confidence"], "<f4"), expected["confidence"], atol=1e-5)


def stream_infer(served: RunningServer, requests: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """Send `requests` (keyword arguments of `async_stream_infer`) on one ModelStreamInfer stream and
    collect (result, error) until every request has sent its triton_final_response."""
    client = tritonclient_grpc.InferenceServerClient(served.grpc_target)
    heard: list[tuple[Any, Any]] = []
    done = threading.Event()
    finals = 0

    def callback(result: Any, error: Any) -> None:
        nonlocal finals
        heard.append((result, error))
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            finals += 1
            if finals == len(requests):
                done.set()

    client.start_stream(callback)
    try:
        for request in requests:
            client.async_stream_infer("tiny", **request)
        assert done.wait(30)
    finally:
        client.stop_stream()
        client.close()
    return heard


def test_a_stream_asking_for_an_empty_final_response_is_served(
    served: RunningServer, tensor: np.ndarray
) -> None:
    # tritonclient sends triton_enable_empty_final_response as a request parameter; it was refused as unknown.
    heard = stream_infer(
        served,
        [
            {
                "inputs": [image_input(tensor[:1])],
                "enable_empty_final_response": True,
                "parameters": {"confidence": 0},
            }
        ],
    )
    assert [error for _, error in heard] == [None]
    assert heard[0][0].get_response().parameters["triton_final_response"].bool_param


def test_model_stream_infer_answers_every_exit_in_order_then_final(
    served: RunningServer, tensor: np.ndarray
) -> None:
    heard = stream_infer(
        served,
        [
            {"inputs": [image_input(tensor[:2])], "request_id": "deep", "parameters": {"confidence": 1}},
            {"inputs": [image_input(tensor[2:3])], "request_id": "early", "parameters": {"confidence": 0}},
        ],
    )
    assert all(error is None for _, error in heard)
    by_request: dict[str, list[tuple[int, int, bool, bool]]] = {"deep": [], "early": []}
    for result, _ in heard:
        response = result.get_response()
        parameters = response.parameters
        (exit_index,) = result.as_numpy("exit").tolist()
        by_request[response.id].append(
            (
                parameters["image"].int64_param,
                exit_index,
                parameters["final"].bool_param,
                parameters["triton_final_response"].bool_param,
            )
        )
    for image in (0, 1):  # every exit in order; the image's last one final
        mine = [(e, f) for i, e, f, _ in by_request["deep"] if i == image]
        assert mine == [(k, k == len(FLOPS) - 1) for k in range(len(FLOPS))]
    assert [last for *_, last in by_request["deep"]] == [False] * (2 * len(FLOPS) - 1) + [True]
    assert by_request["early"] == [(0, 0, True, True)]
    # The finals equal what ModelInfer answers for the same images.
    finals = [
        r
        for r, _ in heard
        if r.get_response().id == "deep" and r.get_response().parameters["final"].bool_param
    ]
    finals.sort(key=lambda r: r.get_response().parameters["image"].int64_param)
    unary = outputs_of(
        tritonclient_grpc.InferenceServerClient(served.grpc_target).infer(
            "tiny", [image_input(tensor[:2])], parameters={"confidence": 1}
        )
    )
    assert [int(r.as_numpy("class_index")[0]) for r in finals] == unary["class_index"].tolist()


def test_model_stream_infer_reports_a_bad_request_and_goes_on(
    served: RunningServer, tensor: np.ndarray
) -> None:
    heard = stream_infer(
        served,
        [
            {"inputs": [image_input(tensor[:1])], "request_id": "bad", "parameters": {"top_k": 0}},
            {"inputs": [image_input(tensor[:1])], "request_id": "good", "parameters": {"confidence": 0}},
        ],
    )
    errors = [error for _, error in heard if error is not None]
    assert len(errors) == 1 and "INVALID_ARGUMENT: top_k must be at least 1, got 0" in str(errors[0])
    good = [result for result, error in heard if error is None]
    assert [r.get_response().id for r in good] == ["good"]


def test_closing_a_model_stream_withdraws_its_requests_at_the_next_stage(
    served: RunningServer, tensor: np.ndarray
) -> None:
    faults = served.faults
    faults.gate.clear()
    faults.hold_stage = 2
    engine_metrics = served.app.state.engine.engine.metrics
    cancelled = engine_metrics.cancelled.labels("tiny", "cascade")
    before = cancelled._value.get()
    stages_before = _stage_runs(engine_metrics)
    with served.client() as http:
        gone_before = metric(http, "ranet_requests_total", model="tiny", status="499", protocol="grpc")
        client = tritonclient_grpc.InferenceServerClient(served.grpc_target)
        try:
            client.start_stream(lambda result, error: None)
            client.async_stream_infer("tiny", [image_input(tensor[:2])], parameters={"confidence": 1})
            assert faults.held.wait(30)
            client.stop_stream(cancel_requests=True)  # the client goes away mid-cascade
        finally:
            client.close()
        # The server saw the call end (its request counts as 499) while stage 2 still runs...
        assert wait_until(
            lambda: (
                metric(http, "ranet_requests_total", model="tiny", status="499", protocol="grpc")
                > gone_before
            )
        )
    faults.gate.set()  # ...so when stage 2 ends, its survivors are dropped instead of running stage 3
    assert wait_until(lambda: cancelled._value.get() > before)
    stages = _stage_runs(engine_metrics)
    assert stages["2"] - stages_before["2"] == 1 and stages["3"] == stages_before["3"]


def _stage_runs(metrics: Any) -> dict[str, float]:
    return {
        sample.labels["stage"]: sample.value
        for family in metrics.batch_size.collect()
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels["model"] == "tiny"
    }


def test_budget_parameters_as_in_rest(triton: Any, tensor: np.ndarray) -> None:
    capped = outputs_of(
        triton.infer("tiny", [image_input(tensor)], parameters={"max_flops": "3M", "confidence": 1.0})
    )
    assert capped["exit"].tolist() == [0] * 8 and capped["budget_limited"].tolist() == [True] * 8
    assert capped["flops"].tolist() == [FLOPS[0]] * 8
    deepest = outputs_of(triton.infer("tiny", [image_input(tensor)], parameters={"confidence": 1.0}))
    assert deepest["exit"].tolist() == [5] * 8 and deepest["flops"].tolist() == [FLOPS[5]] * 8
    wanted = [
        tritonclient_grpc.InferRequestedOutput(name) for name in ("exit", "top_k_label", "top_k_probability")
    ]
    ranked = triton.infer("tiny", [image_input(tensor[:2])], outputs=wanted, parameters={"top_k": 3})
    assert ranked.as_numpy("top_k_label").shape == (2, 3)
    assert ranked.get_response().parameters["top_k"].int64_param == 3
    probabilities = ranked.as_numpy("top_k_probability")
    assert (np.diff(probabilities, axis=1) <= 0).all()  # most probable first
    point = triton.infer("tiny", [image_input(tensor[:2])], parameters={"target_flops": 2.5e6})
    assert point.get_response().parameters["operating_point"].string_param == "fast"


def test_bad_requests_are_invalid_argument_with_the_rest_message(
    triton: Any, served: RunningServer, tensor: np.ndarray
) -> None:
    with served.client() as client:
        rest = client.post("/v2/models/tiny/infer", json=rest_fp32(tensor[:1], bogus=1))
    assert rest.status_code == 422
    error = grpc_error(triton.infer, "tiny", [image_input(tensor[:1])], parameters={"bogus": 1})
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == rest.json()["error"]  # "unknown parameter 'bogus'; known: max_flops, ..."
    error = grpc_error(triton.infer, "tiny", [image_input(tensor[:1])], parameters={"max_flops": "-3"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "max_flops" in error.message()
    wrong = tritonclient_grpc.InferInput("image", [1, 3, 28, 28], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 28, 28), np.float32))
    error = grpc_error(triton.infer, "tiny", [wrong])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "[N, 1, 28, 28]" in error.message()
    error = grpc_error(triton.infer, "nope", [image_input(tensor[:1])])
    assert error.status() == "StatusCode.NOT_FOUND" and "nope" in error.message()
    error = grpc_error(triton.infer, "tiny", [image_input(tensor[:1])], model_version="7")
    assert error.status() == "StatusCode.NOT_FOUND"


def test_grpc_requests_are_counted_with_their_protocol(
    triton: Any, served: RunningServer, tensor: np.ndarray
) -> None:
    def count(status: str) -> float:
        with served.client() as client:
            return metric(client, "ranet_requests_total", model="tiny", status=status, protocol="grpc")

    ok, bad = count("200"), count("422")
    triton.infer("tiny", [image_input(tensor[:1])])
    grpc_error(triton.infer, "tiny", [image_input(tensor[:1])], parameters={"bogus": 1})
    assert (count("200"), count("422")) == (ok + 1, bad + 1)
    with served.client() as client:
        assert metric(client, "ranet_request_duration_seconds_count", model="tiny", protocol="grpc") >= 2


def test_a_deadline_that_passes_is_deadline_exceeded(
    triton: Any, served: RunningServer, tensor: np.ndarray
) -> None:
    faults = served.faults
    faults.gate.clear()
    faults.entered.clear()
    faults.blocking = True
    try:
        error = grpc_error(triton.infer, "tiny", [image_input(tensor[:1])], parameters={"deadline_ms": 100})
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in error.message()
        assert faults.entered.is_set()
    finally:
        faults.blocking = False
        faults.gate.set()


def test_in_flight_calls_finish_when_the_server_stops(
    tiny_bundle_dir: Path, tmp_path: Path, tensor: np.ndarray
) -> None:
    faults = Faults()
    settings = settings_for(make_store(tmp_path, tiny_bundle_dir), grpc_port=free_port())
    server = RunningServer(settings, faults).start()
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        faults.entered.clear()
        faults.gate.clear()
        faults.blocking = True
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(
                client.infer, "tiny", [image_input(tensor[:1])], parameters={"confidence": 1.0}
            )
            assert faults.entered.wait(10)
            server.server.should_exit = True  # what SIGTERM does under uvicorn
            faults.blocking = False
            faults.gate.set()
            assert call.result(30).as_numpy("exit").tolist() == [5]
        server.thread.join(30)
        assert not server.thread.is_alive()
        with pytest.raises(InferenceServerException):
            client.is_server_live()  # stopped: nothing listens any more
    finally:
        client.close()
        server.stop()


# -- credentials, readiness, admission --------------------------------------------------------------


def test_a_missing_or_wrong_token_is_unauthenticated(
    tiny_bundle_dir: Path, tmp_path: Path, tensor: np.ndarray
) -> None:
    settings = settings_for(make_store(tmp_path, tiny_bundle_dir), grpc_port=free_port(), api_key=KEY)
    server = RunningServer(settings).start()
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        assert client.is_server_ready()  # health stays open, as over REST
        for headers in (None, {"authorization": "Bearer nope"}, {"authorization": KEY}):
            error = grpc_error(client.infer, "tiny", [image_input(tensor[:1])], headers=headers)
            assert error.status() == "StatusCode.UNAUTHENTICATED", headers
            assert "API key" in error.message()
            assert grpc_error(client.get_model_metadata, "tiny", headers=headers).status() == (
                "StatusCode.UNAUTHENTICATED"
            )
        good = {"authorization": f"Bearer {KEY}"}
        assert client.infer("tiny", [image_input(tensor[:1])], headers=good).as_numpy("exit").shape == (1,)
        with server.client() as http:
            assert metric(http, "ranet_requests_total", model="tiny", status="401", protocol="grpc") == 3
            assert metric(http, "ranet_rejected_total", model="tiny", reason="unauthorized") == 3
    finally:
        client.close()
        server.stop()


def test_not_ready_is_unavailable_until_the_models_load(
    tiny_bundle_dir: Path, tmp_path: Path, tensor: np.ndarray
) -> None:
    faults = Faults(load_gate=threading.Event())
    settings = settings_for(make_store(tmp_path, tiny_bundle_dir), grpc_port=free_port())
    server = RunningServer(settings, faults).start(wait_ready=False)
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    channel = grpc.insecure_channel(server.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        assert client.is_server_live() and not client.is_server_ready()
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        live = health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert live.status == health_pb2.HealthCheckResponse.SERVING
        error = grpc_error(client.infer, "tiny", [image_input(tensor[:1])])
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert faults.load_gate is not None
        faults.load_gate.set()
        server.wait_ready()
        assert client.is_server_ready() and client.is_model_ready("tiny")
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert client.infer("tiny", [image_input(tensor[:1])]).as_numpy("exit").shape == (1,)
    finally:
        channel.close()
        client.close()
        server.stop()


def test_grpc_and_http_share_one_admission_and_shed_is_resource_exhausted(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes], tensor: np.ndarray
) -> None:
    settings = settings_for(
        make_store(tmp_path, tiny_bundle_dir), grpc_port=free_port(), max_inflight_requests=1
    )
    server = RunningServer(settings).start()
    faults = server.faults
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        with ThreadPoolExecutor(1) as pool, server.client() as http:
            # An HTTP request holds the one slot: a gRPC call is shed.
            faults.entered.clear()
            faults.gate.clear()
            faults.blocking = True
            running = pool.submit(
                http.post, "/v1/classify", files={"file": ("a.png", images[0], "image/png")}
            )
            assert faults.entered.wait(10)
            error = grpc_error(client.infer, "tiny", [image_input(tensor[:1])])
            assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert "too many requests in flight" in error.message()
            faults.blocking = False
            faults.gate.set()
            assert running.result(30).status_code == 200

            # A gRPC call holds it: an HTTP request is shed with 429.
            faults.entered.clear()
            faults.gate.clear()
            faults.blocking = True
            call = pool.submit(client.infer, "tiny", [image_input(tensor[:1])])
            assert faults.entered.wait(10)
            shed = http.post("/v1/classify", files={"file": ("a.png", images[0], "image/png")})
            assert shed.status_code == 429
            faults.blocking = False
            faults.gate.set()
            assert call.result(30).as_numpy("exit").shape == (1,)
            assert metric(http, "ranet_requests_total", model="tiny", status="429", protocol="grpc") == 1
            assert metric(http, "ranet_requests_total", model="tiny", status="429", protocol="http") == 1
            assert metric(http, "ranet_rejected_total", model="tiny", reason="inflight_limit") == 2
    finally:
        client.close()
        server.stop()


# -- repository, port setting, tables -----------------------------------------------------------------


def test_repository_index_unload_and_load(tiny_bundle_dir: Path, tmp_path: Path, tensor: np.ndarray) -> None:
    settings = settings_for(make_store(tmp_path, tiny_bundle_dir, versions=("1", "2")), grpc_port=free_port())
    server = RunningServer(settings).start()
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            ("tiny", "1", "READY"),
            ("tiny", "2", "READY"),
        ]
        client.unload_model("tiny")
        for error in (
            grpc_error(client.is_model_ready, "tiny"),  # as REST's 404: the model is not served now
            grpc_error(client.infer, "tiny", [image_input(tensor[:1])]),
        ):
            assert error.status() == "StatusCode.NOT_FOUND" and "unloaded" in error.message()
        client.load_model("tiny")
        assert client.is_model_ready("tiny")
        assert client.infer("tiny", [image_input(tensor[:1])]).as_numpy("exit").shape == (1,)
        assert grpc_error(client.load_model, "nope").status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()
        server.stop()


def test_repository_calls_need_the_admin_key_when_one_is_set(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(
        make_store(tmp_path, tiny_bundle_dir), grpc_port=free_port(), api_key=KEY, admin_api_key="admin"
    )
    server = RunningServer(settings).start()
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        for headers in (None, {"authorization": f"Bearer {KEY}"}):
            error = grpc_error(client.get_model_repository_index, headers=headers)
            assert error.status() == "StatusCode.UNAUTHENTICATED"
        index = client.get_model_repository_index(headers={"authorization": "Bearer admin"}, as_json=True)
        assert [m["state"] for m in index["models"]] == ["READY"]
    finally:
        client.close()
        server.stop()


def test_loopback_peers_are_recognised() -> None:
    assert is_loopback_peer("ipv4:127.0.0.1:5000") and is_loopback_peer("ipv6:[::1]:5000")
    assert is_loopback_peer("ipv6:[::ffff:127.0.0.1]:5000")
    assert not is_loopback_peer("ipv4:10.0.0.1:5000") and not is_loopback_peer("unix:/tmp/s")


def test_grpc_port_zero_serves_no_grpc(server: RunningServer) -> None:
    assert server.settings.grpc_port == 0 and server.app.state.grpc is None  # the shared server: HTTP only
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/readyz").status_code == 200


def test_the_grpc_code_table_names_the_http_table_errors() -> None:
    assert [cls for cls, _ in GRPC_STATUS_TABLE] == [cls for cls, _ in STATUS_TABLE]
    codes = dict(GRPC_STATUS_TABLE)
    assert {codes[cls] for cls, status in STATUS_TABLE if status == 429} == {
        grpc.StatusCode.RESOURCE_EXHAUSTED
    }
    assert {codes[cls] for cls, status in STATUS_TABLE if status == 503} == {grpc.StatusCode.UNAVAILABLE}


def test_two_front_end_processes_share_the_grpc_port(
    tiny_bundle_dir: Path, tmp_path: Path, tensor: np.ndarray
) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)
    runs = tmp_path / "runs"
    args = ["--model-store", str(store), "--default-model", "tiny", "--threads", "1", "--frontends", "2"]
    env = {**os.environ, "RANET_RUN_DIR": str(runs), "RANET_GRACEFUL_SHUTDOWN_SECONDS": "5"}
    served = ServeProcess(args, log=tmp_path / "server.log", env=env)

    def frontend_pids() -> set[int]:
        return {int(p.read_text()) for p in runs.glob("ranet-serve-*/frontend-*.pid")}

    try:
        served.wait_ready(
            90, also=lambda: len(frontend_pids()) == 2 and _listening(served.grpc_port, frontend_pids())
        )
        # Each front-end listens on the port itself (SO_REUSEPORT); new channels land on either.
        assert _listening(served.grpc_port, frontend_pids())
        answers = []
        for _ in range(4):
            client = tritonclient_grpc.InferenceServerClient(served.grpc_target)
            try:
                answers.append(client.infer("tiny", [image_input(tensor[:2])]).as_numpy("exit").tolist())
            finally:
                client.close()
        assert all(len(a) == 2 for a in answers) and len({tuple(a) for a in answers}) == 1
        with httpx.Client(base_url=served.url) as http:
            text = http.get("/metrics").text
        # Either front-end's /metrics counts every front-end's gRPC calls.
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ranet_requests_total{")
            and re.search(r'protocol="grpc"', line)
            and re.search(r'status="200"', line)
        ]
        assert sum(counted) == 4
        assert served.stop() == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


def test_a_grpc_deadline_with_on_deadline_best_leaves_time_to_send_the_best_answer() -> None:
    # The call's own deadline: as it is for on_deadline=error; brought forward for best, so the answer
    # the engine gives at the next stage boundary reaches the client before it gives up.
    assert _deadline_ms(None, 0.040) == pytest.approx(40.0)
    assert _deadline_ms(None, 0.040, best_effort=True) == pytest.approx(30.0)  # a quarter earlier
    assert _deadline_ms(None, 0.004, best_effort=True) == pytest.approx(2.0)  # at least 2 ms earlier
    assert _deadline_ms(None, 2.0, best_effort=True) == pytest.approx(1900.0)  # at most 100 ms earlier
    # A deadline_ms the client chose is honoured as given.
    assert _deadline_ms(25.0, 0.040, best_effort=True) == pytest.approx(25.0)
    assert _deadline_ms(25.0, None, best_effort=True) == 25.0
    with pytest.raises(DeadlineExceededError, match="no time to answer"):
        _deadline_ms(None, 0.0015, best_effort=True)


def test_a_taken_grpc_port_stops_the_server_at_start_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot use port {port} for gRPC.*RANET_GRPC_PORT"):
            _reserve_grpc_port(Settings(grpc_port=port))
    assert _reserve_grpc_port(Settings(grpc_port=0)) is None


def test_a_grpc_port_another_server_shares_with_so_reuseport_is_taken_too() -> None:
    # Another ranet serve holds its port with SO_REUSEPORT; a second server of the same user must not
    # join it (the kernel would hand it part of the first one's connections).
    with socket.socket() as other_server:
        other_server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot use port {port} for gRPC"):
            _reserve_grpc_port(Settings(grpc_port=port))
    reservation = _reserve_grpc_port(Settings(grpc_port=port))  # free again: reserved
    assert reservation is not None
    with reservation, socket.socket() as front_end:  # and this server's own front-ends still share it
        front_end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        front_end.bind(("127.0.0.1", port))


def _listening(port: int, pids: set[int]) -> bool:
    """Whether every process in `pids` holds a listening TCP socket on `port` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    for pid in pids:
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            return False
        if not any(f"socket:[{inode}]" in links for inode in inodes):
            return False
    return bool(pids)
