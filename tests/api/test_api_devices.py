"""The server over HTTP on bound stages: on the CPU (`io_binding=always`) here, on CUDA where visible.

The same requests go to the shared CPU server (plain numpy stages) and must get the same answers:
v1 multipart and v2 JSON tensors, the calibrated default point and full depth. A latency objective
moves the default point on the device as on the CPU, and the exit-agreement audit, which re-runs
early-exited images to the last exit on the worker, reports from the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from helpers.bundles import make_store
from helpers.devices import BINDING_DEVICES, require_device
from helpers.metrics import scrape, value
from helpers.server import RunningServer, settings_for
from helpers.waiting import wait_until

CHEAPEST_EXIT_FLOPS = 2030858  # the tiny bundle's `fast` point: everything at exit 0


@pytest.fixture(scope="module", params=BINDING_DEVICES)
def device_server(
    request: pytest.FixtureRequest, tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose stages run bound on the device; every early exit is audited when idle."""
    device: str = request.param
    require_device(device)
    store = make_store(tmp_path_factory.mktemp(f"store-{device}"), tiny_bundle_dir)
    settings = settings_for(store, device=device, io_binding="always", agreement_sample_fraction=1.0)
    running = RunningServer(settings).start()
    yield running
    running.stop()


def classify_v1(client: httpx.Client, images: list[bytes], **params: object) -> list[dict[str, Any]]:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = client.post("/v1/models/tiny/classify", files=files, params=params)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def assert_same_answers(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [r["exit"] for r in got] == [r["exit"] for r in want]
    assert [r["class_index"] for r in got] == [r["class_index"] for r in want]
    np.testing.assert_allclose([r["confidence"] for r in got], [r["confidence"] for r in want], atol=1e-4)


def test_v1_answers_match_the_cpu_server(
    device_server: RunningServer, client: httpx.Client, images: list[bytes]
) -> None:
    with device_server.client() as device_client:
        for params in ({}, {"confidence": 1.0}, {"operating_point": "fast"}):
            got = classify_v1(device_client, images, **params)
            assert_same_answers(got, classify_v1(client, images, **params))
    assert {r["exit"] for r in got} == {0}  # `fast` leaves everything at exit 0


def test_v2_tensor_request_matches_v1_on_the_device(
    device_server: RunningServer, images: list[bytes]
) -> None:
    from test_api_v2 import json_fp32_request, outputs_by_name, tensor_of

    tensor = tensor_of(images)
    with device_server.client() as device_client:
        want = classify_v1(device_client, images)
        response = device_client.post("/v2/models/tiny/infer", json=json_fp32_request(tensor))
    assert response.status_code == 200, response.text
    outputs = {name: o["data"] for name, o in outputs_by_name(response.json()).items()}
    assert outputs["exit"] == [r["exit"] for r in want]
    assert outputs["class_index"] == [r["class_index"] for r in want]
    np.testing.assert_allclose(outputs["confidence"], [r["confidence"] for r in want], atol=1e-5)


def test_the_agreement_audit_reports_from_the_device(
    device_server: RunningServer, images: list[bytes]
) -> None:
    series = ("ranet_exit_agreement_ratio", (("exit", "0"), ("model", "tiny")))
    with device_server.client() as device_client:
        early = classify_v1(device_client, images, operating_point="fast")
        assert all(r["exit"] == 0 for r in early)
        # The worker re-runs the sampled images to the last exit when idle: wait for the gauge.
        assert wait_until(lambda: series in scrape(device_client), 30)
        ratio = scrape(device_client)[series]
    assert 0.0 <= ratio <= 1.0


@pytest.mark.parametrize("device", BINDING_DEVICES)
def test_a_missed_objective_moves_the_default_point_on_the_device(
    device: str, tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory, images: list[bytes]
) -> None:
    require_device(device)
    store = make_store(tmp_path_factory.mktemp(f"slo-{device}"), tiny_bundle_dir)
    settings = settings_for(store, device=device, io_binding="always", slo_p99_ms=0.001, slo_dwell_s=0.0)
    server = RunningServer(settings).start()
    try:
        with server.client() as client:
            points = [
                client.post("/v1/classify", files=[("files", ("0.png", images[0], "image/png"))]).json()[
                    "operating_point"
                ]
                for _ in range(25)
            ]
            assert points[:20] == ["balanced"] * 20 and points[20:] == ["fast"] * 5
            assert value(scrape(client), "ranet_operating_point", model="tiny") == CHEAPEST_EXIT_FLOPS
    finally:
        server.stop()
