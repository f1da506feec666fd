"""Triton's model repository extension on REST (index, load, unload), driven by tritonclient.

Each test serves its own store (tiny/1, tiny/2, other/1), since load and unload change what it serves:
unloading stops new requests at once and lets the ones in flight finish before the runtimes go,
loading serves the model again, and readiness, metadata, listings and `ranet_model_info` follow; in
process and with front-end processes around an engine process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from helpers.bundles import make_store
from helpers.images import png_bytes
from helpers.metrics import scrape
from helpers.process import ServeProcess
from helpers.server import RunningServer, settings_for
from ranet_serve.export.bundle import load_bundle, write_manifest
from ranet_serve.heap import freeze_heap

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ADMIN_KEY = "repo-admin-key-7Qx"
INDEX = "/v2/repository/index"
UNLOADED = "is unloaded"  # what a request for an unloaded model is told


def store_with_two_models(root: Path, template: Path) -> Path:
    make_store(root, template, versions=("1", "2"))
    return make_store(root, template, name="other")


@pytest.fixture
def server(tiny_bundle_dir: Path, tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(settings_for(store_with_two_models(tmp_path / "store", tiny_bundle_dir))).start()
    yield running
    running.stop()


@pytest.fixture
def triton(server: RunningServer) -> Iterator[Any]:
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


def classify(client: httpx.Client, model: str | None = "tiny", seed: int = 0) -> httpx.Response:
    url = "/v1/classify" if model is None else f"/v1/models/{model}/classify"
    return client.post(url, files={"file": ("a.png", png_bytes(seed), "image/png")})


def triton_infer(triton: Any, model: str) -> Any:
    image = tritonclient_http.InferInput("image", [1, 1, 28, 28], "FP32")
    image.set_data_from_numpy(np.zeros((1, 1, 28, 28), dtype=np.float32))
    return triton.infer(model, [image])


def index(triton: Any) -> list[tuple[str, str, str, str]]:
    return [(e["name"], e["version"], e["state"], e["reason"]) for e in triton.get_model_repository_index()]


def model_info(client: httpx.Client) -> set[tuple[str, str]]:
    """(model, version) of every `ranet_model_info` series."""
    return {
        (dict(labels)["model"], dict(labels)["version"])
        for (name, labels), value in scrape(client).items()
        if name == "ranet_model_info" and value == 1
    }


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition the server exposes until it holds (no sleeping in place of an event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_index_lists_every_version_with_its_triton_state(
    server: RunningServer, triton: Any, tiny_bundle_dir: Path
) -> None:
    assert "model_repository" in triton.get_server_metadata()["extensions"]
    assert index(triton) == [
        ("other", "1", "READY", ""),
        ("tiny", "1", "READY", ""),
        ("tiny", "2", "READY", ""),
    ]
    make_store(server.settings.model_store, tiny_bundle_dir, versions=("2",), name="other")
    (reason,) = [e[3] for e in index(triton) if e[:3] == ("other", "2", "UNAVAILABLE")]
    assert reason.startswith("not loaded")
    triton.unload_model("tiny")
    with server.client() as client:
        assert client.post(INDEX, json={"ready": True}).json() == [
            {"name": "other", "version": "1", "state": "READY", "reason": ""}
        ]
        # Loading a model loads its new versions and keeps the unchanged ones.
        loaded = client.post("/v2/repository/models/other/load")
        assert loaded.status_code == 200, loaded.text
        assert loaded.json() == {
            "name": "other",
            "loaded": ["other/2"],
            "kept": ["other/1"],
            "failed": [],
            "removed": [],
        }
    assert index(triton) == [
        ("other", "1", "READY", ""),
        ("other", "2", "READY", ""),
        ("tiny", "1", "UNAVAILABLE", "unloaded"),
        ("tiny", "2", "UNAVAILABLE", "unloaded"),
    ]


def test_unloaded_model_answers_404_everywhere_until_it_is_loaded_again(
    server: RunningServer, triton: Any
) -> None:
    with server.client() as client:
        assert classify(client).status_code == 200
        assert model_info(client) == {("other", "1"), ("tiny", "1"), ("tiny", "2")}

        triton.unload_model("tiny")
        assert not triton.is_model_ready("tiny") and triton.is_model_ready("other")
        with pytest.raises(InferenceServerException) as raised:
            triton_infer(triton, "tiny")
        assert raised.value.status() == "404" and UNLOADED in str(raised.value)
        refused = classify(client)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "model_not_found"
        assert UNLOADED in refused.json()["error"]["message"]
        # The default model (tiny) too: the request names none, the answer names the model and why.
        default = classify(client, model=None)
        assert default.status_code == 404 and "'tiny' is unloaded" in default.json()["error"]["message"]
        assert client.get("/v2/models/tiny").status_code == 404
        assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["other"]
        assert client.get("/readyz").json()["models"] == {"other": ["1"]}
        assert model_info(client) == {("other", "1")}
        assert classify(client, "other").status_code == 200
        # A reload (and SIGHUP, its twin) leaves an unloaded model unloaded, as Triton's explicit mode.
        reload = client.post("/v1/admin/reload").json()
        assert reload["kept"] == ["other/1"] and reload["loaded"] == []
        assert classify(client).status_code == 404
        # Unloading again is no error.
        assert client.post("/v2/repository/models/tiny/unload").json()["removed"] == []

        triton.load_model("tiny")
        assert triton.is_model_ready("tiny") and triton.is_model_ready("tiny", "1")
        assert triton_infer(triton, "tiny").get_response()["model_version"] == "2"
        assert classify(client).json()["model"] == "tiny"
        assert client.get("/v2/models/tiny").json()["versions"] == ["1", "2"]
        assert model_info(client) == {("other", "1"), ("tiny", "1"), ("tiny", "2")}
        assert client.get("/readyz").json()["models"] == {"other": ["1"], "tiny": ["1", "2"]}


def test_unloading_the_only_model_turns_readiness_off(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    server = RunningServer(settings_for(make_store(tmp_path, tiny_bundle_dir))).start()
    try:
        with server.client() as client:
            assert client.post("/v2/repository/models/tiny/unload").json()["removed"] == ["tiny/1"]
            assert client.get("/readyz").status_code == 503
            assert client.get("/v2/health/ready").status_code == 503
            assert client.post("/v2/repository/models/tiny/load").status_code == 200
            assert client.get("/readyz").status_code == 200
            assert classify(client).status_code == 200
    finally:
        server.stop()


def test_a_request_in_flight_finishes_before_unload_releases_the_runtimes(
    server: RunningServer, triton: Any
) -> None:
    store = server.app.state.engine.engine.store
    versions = [weakref.ref(store.entry("tiny", v)) for v in ("1", "2")]
    runtimes = [weakref.ref(store.entry("tiny", v).executor.runtime) for v in ("1", "2")]
    workers = [store.entry("tiny", v).batcher._thread for v in ("1", "2")]
    faults = server.faults
    faults.gate.clear()
    faults.entered.clear()
    faults.blocking = True
    with ThreadPoolExecutor(2) as pool, server.client() as client:
        in_flight = pool.submit(classify, client, "tiny")
        assert faults.entered.wait(10)  # the request is inside a stage, holding its version
        faults.blocking = False  # it stays at the gate; later stage runs (model `other`) pass
        unloading = pool.submit(triton.unload_model, "tiny")
        wait_for(lambda: "tiny" in server.app.state.engine.catalog.unloaded, "the unload to take effect")
        with server.client() as other:
            assert classify(other).status_code == 404  # new requests are refused at once
            assert classify(other, "other").status_code == 200
        assert not unloading.done()  # the unload waits for the request in flight
        faults.gate.set()
        answer = in_flight.result(30)
        unloading.result(30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "tiny" and answer.json()["version"] == "2"
    assert not any(worker.is_alive() for worker in workers)  # every batcher drained and closed
    freeze_heap()  # what the server runs after every change: a full collection
    assert [ref() for ref in versions + runtimes] == [None] * 4  # nothing holds the models any more


def test_loading_an_unknown_model_is_404_json(server: RunningServer, triton: Any) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.load_model("nope")
    assert raised.value.status() == "404" and "'nope' not found in the model store" in str(raised.value)
    with server.client() as client:
        for action in ("load", "unload"):
            response = client.post(f"/v2/repository/models/nope/{action}")
            assert response.status_code == 404
            assert response.json()["code"] == "model_not_found"
        assert client.post("/v2/repository/models/..%2Fetc/load").status_code == 404
        refused = client.post("/v2/repository/models/tiny/load", json={"parameters": {"config": "{}"}})
        assert refused.status_code == 400 and "'config' is not supported" in refused.json()["error"]
        assert client.post(INDEX, content=b"{not json").status_code == 400
    assert index(triton)[0] == ("other", "1", "READY", "")


def _copy_as(bundle: Path, server: RunningServer, name: str) -> Path:
    """A copy of `bundle` as model `name`, version 1, in the server's store (not loaded yet)."""
    copy = Path(server.settings.model_store) / name / "1"
    shutil.copytree(bundle, copy)
    write_manifest(copy, load_bundle(copy).manifest.model_copy(update={"name": name}))
    return copy


def _tamper(path: Path) -> None:
    """Change a bundle file after its checksum was written."""
    with path.open("ab") as handle:
        handle.write(b"tampered")


def test_a_broken_bundle_fails_to_load_with_its_reason_and_the_others_keep_serving(
    server: RunningServer, triton: Any, tiny_bundle_dir: Path
) -> None:
    broken = _copy_as(tiny_bundle_dir, server, "broken")
    _tamper(broken / "stages" / "stage_3.onnx")
    with pytest.raises(InferenceServerException) as raised:
        triton.load_model("broken")
    assert raised.value.status() == "400"
    assert "broken/1" in str(raised.value) and "checksum" in str(raised.value)
    assert "stage_3.onnx" in str(raised.value)
    (entry,) = [e for e in index(triton) if e[0] == "broken"]
    assert entry[:3] == ("broken", "1", "UNAVAILABLE") and "checksum" in entry[3]
    # The reason names the bundle's place in the store, not the server's file system.
    assert str(server.settings.model_store) not in str(raised.value) + entry[3]
    assert "broken/1/stages/stage_3.onnx" in entry[3]
    assert not triton.is_model_ready("broken")
    with server.client() as client:
        assert client.post("/v2/repository/models/broken/load").json()["code"] == "load_failed"
        assert classify(client, "broken").status_code == 503  # listed, failed, as at startup
        assert classify(client).status_code == 200
        assert classify(client, "other").status_code == 200
        assert model_info(client) == {("other", "1"), ("tiny", "1"), ("tiny", "2")}


def test_a_stage_file_changed_in_place_is_a_changed_version_on_load(
    server: RunningServer, triton: Any, tiny_bundle_dir: Path
) -> None:
    # Only the manifest's time and size used to count: a stage file replaced in place kept serving the
    # old weights, its checksum never checked again.
    bundle = _copy_as(tiny_bundle_dir, server, "changing")
    triton.load_model("changing")
    assert triton.is_model_ready("changing")
    _tamper(bundle / "stages" / "stage_2.onnx")
    with pytest.raises(InferenceServerException) as raised:
        triton.load_model("changing")
    assert "changing/1/stages/stage_2.onnx" in str(raised.value) and "checksum" in str(raised.value)
    assert not triton.is_model_ready("changing")


def post_from(server: RunningServer, peer: tuple[str, int], path: str, **kwargs: Any) -> httpx.Response:
    """POST to the app in process as if the connection came from `peer` (refused before the engine)."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=server.app, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://ranet.test") as http:
            return await http.post(path, **kwargs)

    return asyncio.run(call())


REPOSITORY_ROUTES = (INDEX, "/v2/repository/models/tiny/load", "/v2/repository/models/tiny/unload")


def test_without_an_admin_key_only_loopback_may_use_the_repository(server: RunningServer) -> None:
    for path in REPOSITORY_ROUTES:
        response = post_from(server, ("10.1.2.3", 40000), path)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "admin_disabled"  # the v2 error shape, as every /v2 route
        assert "RANET_ADMIN_API_KEY" in response.json()["error"]
    assert server.app.state.engine.catalog.find_ready("tiny").ready  # nothing was unloaded


def test_with_an_admin_key_the_repository_needs_it(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    store = store_with_two_models(tmp_path, tiny_bundle_dir)
    server = RunningServer(settings_for(store, admin_api_key=ADMIN_KEY)).start()
    triton = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        for path in REPOSITORY_ROUTES:
            assert post_from(server, ("10.1.2.3", 40000), path).status_code == 401
        with pytest.raises(InferenceServerException) as raised:
            triton.unload_model("tiny")  # from loopback too
        assert raised.value.status() == "401"
        with pytest.raises(InferenceServerException) as raised:
            triton.unload_model("tiny", headers={"Authorization": "Bearer wrong"})
        assert raised.value.status() == "401"
        assert triton.is_model_ready("tiny")
        triton.unload_model("tiny", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert not triton.is_model_ready("tiny")
        with server.client() as client:
            schema = client.get("/openapi.json").json()
        operation = schema["paths"]["/v2/repository/models/{model}/load"]["post"]
        assert {"400", "401", "403", "404", "503"} <= set(operation["responses"])
        assert operation["security"] == [{"adminKey": []}]
        entry = schema["components"]["schemas"]["RepositoryIndexEntry"]
        assert set(entry["properties"]) == {"name", "version", "state", "reason"}
    finally:
        triton.close()
        server.stop()


def test_front_end_processes_follow_unload_and_load(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    store = store_with_two_models(tmp_path / "store", tiny_bundle_dir)
    args = ["--model-store", str(store), "--default-model", "tiny", "--threads", "1", "--frontends", "2"]
    env = {**os.environ, "RANET_RUN_DIR": str(tmp_path / "runs"), "RANET_GRACEFUL_SHUTDOWN_SECONDS": "5"}
    served = ServeProcess(args, log=tmp_path / "server.log", env=env)
    triton = tritonclient_http.InferenceServerClient(f"127.0.0.1:{served.port}")

    def every_front_end(path: str, status: int) -> bool:
        """Whether 16 fresh connections (spread over the front-ends by the kernel) all answer `status`."""
        statuses = set()
        for _ in range(16):
            with httpx.Client(base_url=served.url, timeout=10) as fresh:
                statuses.add(fresh.get(path).status_code)
        return statuses == {status}

    def fresh_classify(seed: int) -> httpx.Response:
        with httpx.Client(base_url=served.url, timeout=30) as fresh:
            return classify(fresh, seed=seed)

    try:
        served.wait_ready(90, also=lambda: len(list((tmp_path / "runs").glob("*/frontend-*.pid"))) == 2)
        triton.unload_model("tiny")
        assert index(triton)[1:] == [
            ("tiny", "1", "UNAVAILABLE", "unloaded"),
            ("tiny", "2", "UNAVAILABLE", "unloaded"),
        ]
        wait_for(lambda: every_front_end("/v2/models/tiny/ready", 404), "every front-end's catalog")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(fresh_classify, range(8)))
        assert {a.status_code for a in answers} == {404}
        assert all(UNLOADED in a.json()["error"]["message"] for a in answers)
        assert every_front_end("/v2/models/other/ready", 200)

        triton.load_model("tiny")
        wait_for(lambda: every_front_end("/v2/models/tiny/ready", 200), "every front-end's catalog")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(fresh_classify, range(8)))
        assert {a.status_code for a in answers} == {200}
        with httpx.Client(base_url=served.url) as client:
            assert model_info(client) == {("other", "1"), ("tiny", "1"), ("tiny", "2")}
    finally:
        triton.close()
        assert served.stop() == 0, served.log.read_text()
