"""The real default bundle over HTTP on Fashion-MNIST test images: budgets hold on real data."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers.server import RunningServer, settings_for
from ranet_serve.data.datasets import FASHION_MNIST_DIR, load_fashion_mnist

STORE = Path(__file__).resolve().parents[2] / "model_store"
pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist missing"
)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[httpx.Client, dict]]:
    server = RunningServer(
        settings_for(STORE, default_model="ranet-fmnist", max_images_per_request=64, max_body_bytes=1 << 22)
    ).start()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, client.get("/v1/models/ranet-fmnist").json()
    server.stop()


@pytest.fixture(scope="module")
def test_images() -> tuple[list[bytes], np.ndarray]:
    data = load_fashion_mnist("test")
    encoded = []
    for image in data.images[:640, 0]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded, data.labels[:640]


def classify_all(client: httpx.Client, images: list[bytes], **knobs: str) -> list[dict]:
    results = []
    for start in range(0, len(images), 64):
        files = [("files", (f"{i}.png", data)) for i, data in enumerate(images[start : start + 64])]
        response = client.post("/v1/classify", params=knobs, files=files)
        assert response.status_code == 200, response.text
        results.extend(response.json()["results"])
    return results


def test_target_flops_keeps_the_average_within_the_target(served, test_images) -> None:
    client, _ = served
    images, labels = test_images
    for target in (6e6, 9e6, 14e6):
        results = classify_all(client, images, target_flops=f"{target:.0f}")
        mean = float(np.mean([r["flops"] for r in results]))
        assert mean <= target * 1.05, (target, mean)  # fitted on validation data; 5% covers the shift
        accuracy = float(np.mean([r["class_index"] for r in results] == labels))
        assert accuracy > 0.88


def test_max_flops_below_exit_one_always_answers_from_exit_zero(served, test_images) -> None:
    client, info = served
    flops = [e["cumulative_flops"] for e in info["versions"][0]["exits"]]
    results = classify_all(client, test_images[0][:128], max_flops=str(flops[1] - 1))
    assert {r["exit"] for r in results} == {0}
    assert all(r["flops"] == flops[0] for r in results)


def test_default_point_matches_its_calibrated_cost_and_accuracy(served, test_images) -> None:
    client, info = served
    images, labels = test_images
    results = classify_all(client, images)
    version = info["versions"][0]
    last_exit_flops = version["exits"][-1]["cumulative_flops"]
    mean = float(np.mean([r["flops"] for r in results]))
    assert mean <= 0.5 * last_exit_flops
    accuracy = 100 * float(np.mean([r["class_index"] for r in results] == labels))
    full = classify_all(client, images, confidence="1.0")
    full_accuracy = 100 * float(np.mean([r["class_index"] for r in full] == labels))
    assert {r["exit"] for r in full} == {len(version["exits"]) - 1}
    assert accuracy >= full_accuracy - 1.0  # 640 images: allow sampling noise around the 0.5-point bar
