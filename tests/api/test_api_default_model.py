"""The default model of `POST /v1/classify`: on a store holding exactly one model and with no
RANET_DEFAULT_MODEL set, that model; a default the store lacks answers 404 naming the models served and
how to set the default. Real servers on copies of the committed bundle under other names."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from helpers.bundles import make_store
from helpers.metrics import metric
from helpers.server import RunningServer
from ranet_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_BUNDLE = ROOT / "model_store" / "ranet-fmnist" / "1"
SAMPLE = ROOT / "clients" / "python" / "ranet_client" / "samples" / "fmnist_test_00000.png"


@pytest.fixture(autouse=True)
def no_default_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANET_DEFAULT_MODEL", raising=False)


def settings(store: Path) -> Settings:
    """The server's settings with default_model left unset (read from the environment, if there)."""
    return Settings(model_store=store, device="cpu", threads=1, warmup=False, log_level="warning")


def classify(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/classify", files={"file": ("a.png", SAMPLE.read_bytes(), "image/png")})


def assert_default_missing(response: httpx.Response, serving: str) -> None:
    """A 404 that names the missing default, the models served and how to set the default."""
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert f"default model 'ranet-fmnist' not found; serving: {serving}" in message
    assert "RANET_DEFAULT_MODEL" in message and "--default-model" in message


@pytest.fixture
def start() -> Iterator[Callable[[Path], RunningServer]]:
    """Start a server on a store (stopped after the test)."""
    servers: list[RunningServer] = []

    def starter(store: Path) -> RunningServer:
        server = RunningServer(settings(store))
        servers.append(server)
        return server.start()

    yield starter
    for server in servers:
        server.stop()


def test_a_store_holding_one_other_model_serves_it_when_no_default_was_set(
    tmp_path: Path, start: Callable[[Path], RunningServer]
) -> None:
    server = start(make_store(tmp_path, COMMITTED_BUNDLE, name="other"))
    with server.client() as client:
        response = classify(client)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "other"
        # Metrics count the request under the model that served it, not under "unknown".
        assert metric(client, "ranet_requests_total", model="other", status="200") == 1
        assert client.get("/v1/models").json()["default_model"] == "other"  # the listing says so too


def test_a_default_set_but_missing_from_the_store_is_a_404_saying_how_to_set_it(
    tmp_path: Path, start: Callable[[Path], RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANET_DEFAULT_MODEL", "ranet-fmnist")  # set, so kept though the store lacks it
    server = start(make_store(tmp_path, COMMITTED_BUNDLE, name="other"))
    with server.client() as client:
        assert_default_missing(classify(client), serving="other")
        assert (
            client.post(
                "/v1/models/other/classify", files={"file": ("a.png", SAMPLE.read_bytes(), "image/png")}
            ).json()["model"]
            == "other"
        )


def test_a_store_of_several_models_without_the_default_lists_them_in_the_404(
    tmp_path: Path, start: Callable[[Path], RunningServer]
) -> None:
    store = make_store(tmp_path, COMMITTED_BUNDLE, name="beta")
    make_store(store, COMMITTED_BUNDLE, name="alpha")
    server = start(store)
    with server.client() as client:
        assert_default_missing(classify(client), serving="alpha, beta")


def test_a_default_counts_as_set_from_the_environment_or_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().default_model_explicit
    assert Settings(default_model="other").default_model_explicit  # ranet serve --default-model
    monkeypatch.setenv("RANET_DEFAULT_MODEL", "ranet-fmnist")  # even when it names the built-in default
    assert Settings().default_model_explicit


def test_whether_the_default_was_set_reaches_front_end_and_engine_processes() -> None:
    """The supervisor hands its settings to the processes it starts by pickling them."""
    assert pickle.loads(pickle.dumps(Settings(default_model="other"))).default_model_explicit
    assert not pickle.loads(pickle.dumps(Settings())).default_model_explicit
