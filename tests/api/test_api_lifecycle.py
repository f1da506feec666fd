"""Server lifecycle under real conditions: readiness, reload, broken bundles, overload, deadlines,
stage failures and graceful shutdown, each on a real server with a runtime the test controls."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers.bundles import make_store
from helpers.server import Faults, RunningServer, settings_for
from ranet_serve.export.bundle import load_bundle, write_manifest

URL = "/v1/models/tiny/classify"


def post_image(client: httpx.Client, image: bytes, url: str = URL, **params: object) -> httpx.Response:
    return client.post(url, files={"file": ("a.png", image, "image/png")}, params=params)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition the server exposes until it holds (no sleeping in place of an event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_readiness_is_503_until_bundles_are_warmed_up(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    faults = Faults(load_gate=threading.Event())
    server = RunningServer(settings_for(make_store(tmp_path, tiny_bundle_dir)), faults).start(
        wait_ready=False
    )
    try:
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/readyz").status_code == 503
            assert client.get("/v2/health/ready").status_code == 503
            response = post_image(client, images[0])
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "not_ready"
            assert response.headers["Retry-After"] == "1"
            faults.load_gate.set()  # type: ignore[union-attr]
            server.wait_ready(timeout=30)
            assert client.get("/readyz").json()["models"] == {"tiny": ["1"]}
            assert post_image(client, images[0]).status_code == 200
    finally:
        server.stop()


def test_a_broken_bundle_beside_a_good_one(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    store = make_store(tmp_path, tiny_bundle_dir)
    broken = store / "broken" / "1"
    shutil.copytree(tiny_bundle_dir, broken)
    write_manifest(broken, load_bundle(broken).manifest.model_copy(update={"name": "broken"}))
    with (broken / "stages" / "stage_3.onnx").open("ab") as handle:
        handle.write(b"tampered")
    (store / "empty" / "1").mkdir(parents=True)
    server = RunningServer(settings_for(store)).start()
    try:
        with server.client() as client:
            assert post_image(client, images[0]).status_code == 200
            models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            assert set(models) == {"broken", "empty", "tiny"}
            (version,) = models["broken"]["versions"]
            assert version["state"] == "failed"
            assert "checksum" in version["error"] and "stage_3.onnx" in version["error"]
            assert models["broken"]["default_version"] is None
            assert "manifest.json" in models["empty"]["versions"][0]["error"]
            assert models["tiny"]["versions"][0]["state"] == "ready"
            response = post_image(client, images[0], url="/v1/models/broken/classify")
            assert response.status_code == 503
            assert "checksum" in response.json()["error"]["message"]
            assert client.get("/v2/models/broken/ready").status_code == 503
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_model_listing_describes_exits_and_points(client: httpx.Client) -> None:
    info = client.get("/v1/models/tiny").json()
    assert info["default_version"] == "2"
    version = info["versions"][-1]
    assert version["state"] == "ready"
    assert version["input"]["channels"] == 1 and version["input"]["size"] == 28
    assert len(version["labels"]) == 10
    assert [e["cumulative_flops"] for e in version["exits"]] == [
        2030858,
        5210532,
        7604693,
        9495311,
        11346677,
        12649895,
    ]
    assert version["exits"][0]["val_accuracy"] == 0.6
    assert [p["name"] for p in version["operating_points"]] == ["fast", "balanced", "full-depth"]
    assert version["default_operating_point"] == "balanced"
    assert client.get("/v1/models").json()["default_model"] == "tiny"


def test_reload_keeps_serving(tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]) -> None:
    store = make_store(tmp_path, tiny_bundle_dir)
    server = RunningServer(settings_for(store)).start()
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with server.client() as client:
            while not stop.is_set():
                statuses.append(post_image(client, images[len(statuses) % 8]).status_code)

    try:
        with ThreadPoolExecutor(2) as pool, server.client() as admin:
            workers = [pool.submit(traffic) for _ in range(2)]
            wait_for(lambda: len(statuses) >= 3, "traffic before the reload")
            make_store(store, tiny_bundle_dir, versions=("2",))
            report = admin.post("/v1/admin/reload").json()
            assert report["loaded"] == ["tiny/2"] and report["kept"] == ["tiny/1"]
            assert post_image(admin, images[0]).json()["version"] == "2"
            shutil.rmtree(store / "tiny" / "1")
            report = admin.post("/v1/admin/reload").json()
            assert report["removed"] == ["tiny/1"] and report["kept"] == ["tiny/2"]
            assert [v["version"] for v in report["models"][0]["versions"]] == ["2"]
            answered = len(statuses)
            wait_for(lambda: len(statuses) >= answered + 3, "traffic after the reloads")
            stop.set()
            for worker in workers:
                worker.result()
            assert post_image(admin, images[0], version="1").status_code == 404
    finally:
        stop.set()
        server.stop()
    assert len(statuses) > 5
    assert set(statuses) == {200}


def test_deadline_is_honoured_with_504(
    client: httpx.Client, server: RunningServer, images: list[bytes]
) -> None:
    server.faults.stage_delay = 0.1
    started = time.monotonic()
    response = post_image(client, images[0], deadline_ms=150, confidence=1.0)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 0.55  # answered at the deadline, not after six slow stages
    server.faults.stage_delay = 0.0
    batcher = server.app.state.engine.engine.store.entry("tiny").batcher
    wait_for(lambda: batcher.in_flight_images == 0, "the abandoned batch to finish")
    assert post_image(client, images[0], deadline_ms=5000).status_code == 200


def test_full_queue_answers_429_with_retry_after(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    settings = settings_for(make_store(tmp_path, tiny_bundle_dir), max_queue_size=1, max_batch_size=1)
    server = RunningServer(settings).start()
    faults = server.faults
    try:
        faults.gate.clear()
        faults.entered.clear()
        faults.blocking = True
        with ThreadPoolExecutor(2) as pool, server.client() as client:
            running = pool.submit(post_image, client, images[0])
            assert faults.entered.wait(10)
            queued = pool.submit(post_image, client, images[1])
            entry = server.app.state.engine.engine.store.entry("tiny")
            deadline = time.monotonic() + 10
            while entry.batcher.queued < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            response = post_image(client, images[2])
            assert response.status_code == 429
            assert response.json()["error"]["code"] == "overloaded"
            assert int(response.headers["Retry-After"]) >= 1
            faults.blocking = False
            faults.gate.set()
            assert running.result().status_code == 200
            assert queued.result().status_code == 200
            metrics = client.get("/metrics").text
            assert 'ranet_rejected_total{model="tiny",reason="queue_full"} 1.0' in metrics
            assert 'ranet_requests_total{model="tiny",protocol="http",status="429"} 1.0' in metrics
    finally:
        server.stop()


def test_stage_exception_answers_500_with_error_id_then_recovers(
    client: httpx.Client, server: RunningServer, images: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.fail_next = 1
    with caplog.at_level(logging.ERROR, logger="ranet_serve.api.errors"):
        response = post_image(client, images[0])
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "stage_failed"
    assert re.fullmatch(r"[0-9a-f]{16}", error["error_id"])
    assert any(error["error_id"] in record.getMessage() for record in caplog.records)
    assert post_image(client, images[0]).status_code == 200


def test_shutdown_lets_in_flight_requests_finish(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    server = RunningServer(settings_for(make_store(tmp_path, tiny_bundle_dir))).start()
    server.faults.stage_delay = 0.1
    server.faults.entered.clear()  # warm-up set it: without this, shutdown could start before the request
    with ThreadPoolExecutor(1) as pool, server.client() as client:
        in_flight = pool.submit(post_image, client, images[0], confidence=1.0)
        assert server.faults.entered.wait(10)
        server.server.should_exit = True  # what SIGTERM does under uvicorn
        response = in_flight.result()
    server.thread.join(30)
    assert response.status_code == 200
    assert response.json()["results"][0]["exit"] == 5
    assert not server.thread.is_alive()
    server.socket.close()
