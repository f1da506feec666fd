"""Security: the optional API keys, model names that cannot leave the store, weights-only checkpoint
loading, and size limits that are on by default.

(The container's non-root user is checked by `tests/test_deploy.py`; that request handling never
unpickles is checked by the bad-input corpus run, `test_bad_input_corpus.py`.)
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from ranet_client import RanetClient, UnauthorizedError
from starlette.requests import Request
from typer.testing import CliRunner

from helpers.bundles import make_store
from helpers.images import png_bytes
from helpers.metrics import delta, scrape
from helpers.server import RunningServer, settings_for
from ranet_serve.api import auth
from ranet_serve.cli import app as cli_app
from ranet_serve.export.bundle import load_bundle
from ranet_serve.model.checkpoint import CheckpointError
from ranet_serve.settings import Settings

KEY = "inference-key-Zq81"
ADMIN_KEY = "admin-key-Wm27"
PNG = png_bytes(0)
V1 = "/v1/models/tiny/classify"
V2 = "/v2/models/tiny/infer"
V2_BODY = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}


@pytest.fixture(scope="module")
def keyed(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with both keys, whose store has a real bundle right beside it (`../escape/1`)."""
    root = tmp_path_factory.mktemp("keyed")
    store = make_store(root / "store", tiny_bundle_dir)
    make_store(root, tiny_bundle_dir, name="escape")  # root/escape/1: outside the store, one `..` away
    running = RunningServer(settings_for(store, api_key=KEY, admin_api_key=ADMIN_KEY)).start()
    yield running
    running.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the API keys ------------------------------------------------------------------------------------

PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", V1, {"files": {"file": ("a.png", PNG, "image/png")}}),
    ("POST", "/v1/classify", {"content": PNG, "headers": {"Content-Type": "image/png"}}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/tiny", {}),
    ("POST", V2, {"json": V2_BODY}),
    ("POST", "/v2/models/tiny/versions/1/infer", {"json": V2_BODY}),
    ("GET", "/v2/models/tiny", {}),
    ("POST", "/v1/admin/reload", {}),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/tiny/ready",
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer", f"bearer {KEY[:-1]}"],
    ids=["none", "wrong", "basic-scheme", "longer", "empty", "prefix"],
)
@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_protected_routes_answer_401_without_the_right_key(
    keyed: RunningServer, method: str, path: str, kwargs: dict[str, Any], authorization: str | None
) -> None:
    kwargs = dict(kwargs)  # the parametrized dict is shared between cases
    headers = dict(kwargs.pop("headers", {}))
    if authorization is not None:
        headers["Authorization"] = authorization
    with keyed.client() as client:
        response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="ranet-serve"')
    sent_token = authorization is not None and authorization.lower().startswith("bearer ")
    assert ('error="invalid_token"' in challenge) == sent_token
    body = response.json()
    if path.startswith("/v2"):
        assert body["code"] == "unauthorized" and isinstance(body["error"], str)
    else:
        assert body["error"]["code"] == "unauthorized" and body["error"]["message"]
    assert KEY not in response.text and ADMIN_KEY not in response.text


def test_unauthorized_inference_requests_are_counted_with_bounded_model_labels(keyed: RunningServer) -> None:
    with keyed.client() as client:
        before = scrape(client)
        assert client.post(V1, files={"file": ("a.png", PNG, "image/png")}).status_code == 401
        assert client.post(V2, json=V2_BODY, headers=bearer("wrong")).status_code == 401
        # A model name from the path that the store lacks: counted under "unknown", not as a new label.
        assert client.post("/v2/models/no-such-model-7/infer", json=V2_BODY).status_code == 401
        # Not inference requests: not in the inference counters.
        assert client.get("/v1/models").status_code == 401
        assert client.post("/v1/admin/reload", headers=bearer(KEY)).status_code == 401
        after = scrape(client)
    assert delta(before, after, "ranet_requests_total", model="tiny", status="401") == 2
    assert delta(before, after, "ranet_rejected_total", model="tiny", reason="unauthorized") == 2
    assert delta(before, after, "ranet_requests_total", model="unknown", status="401") == 1
    assert delta(before, after, "ranet_rejected_total", model="unknown", reason="unauthorized") == 1
    assert not any("no-such-model-7" in str(labels) for _, labels in after)
    # Refused before being served: not in the served-request latency histogram.
    assert delta(before, after, "ranet_request_duration_seconds_count", model="tiny") == 0


def test_the_right_keys_open_their_routes_and_only_theirs(keyed: RunningServer) -> None:
    with keyed.client() as client:
        ok = client.post(V1, files={"file": ("a.png", PNG, "image/png")}, headers=bearer(KEY))
        assert ok.status_code == 200, ok.text
        assert client.post(V2, json=V2_BODY, headers=bearer(KEY)).status_code == 200
        assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200
        assert client.get("/v2/models/tiny", headers=bearer(KEY)).status_code == 200
        # A separate admin key: the inference key does not open admin, nor the admin key inference.
        assert client.post("/v1/admin/reload", headers=bearer(KEY)).status_code == 401
        assert (
            client.post(
                V1, content=PNG, headers={**bearer(ADMIN_KEY), "Content-Type": "image/png"}
            ).status_code
            == 401
        )
        reload = client.post("/v1/admin/reload", headers=bearer(ADMIN_KEY))
        assert reload.status_code == 200, reload.text
        assert (
            client.post(
                V1, content=PNG, headers={"authorization": f"bEaReR   {KEY}", "Content-Type": "image/png"}
            ).status_code
            == 200
        )


@pytest.mark.parametrize("path", OPEN)
def test_health_readiness_and_metrics_stay_open(keyed: RunningServer, path: str) -> None:
    with keyed.client() as client:
        assert client.get(path).status_code == 200


def test_keys_never_reach_logs_or_settings_dumps(
    keyed: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), keyed.client() as client:
        for token in (KEY + "x", ADMIN_KEY, "guess"):
            client.post(V1, content=PNG, headers={**bearer(token), "Content-Type": "image/png"})
            client.post("/v1/admin/reload", headers=bearer(token))
    assert KEY not in caplog.text and ADMIN_KEY not in caplog.text
    settings = keyed.settings
    for text in (repr(settings), str(settings), json.dumps(settings.model_dump(mode="json"))):
        assert KEY not in text and ADMIN_KEY not in text


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    request = Request({"type": "http", "headers": [(b"authorization", "Bearer zürich".encode())]})
    settings = Settings(api_key="zurich")
    with pytest.raises(auth.UnauthorizedError):  # non-ASCII input must not crash the comparison
        auth.check_token(request, settings.api_key)
    assert len(calls) == 1 and all(isinstance(side, bytes) for side in calls[0]) and calls[0][1] == b"zurich"


def test_keys_are_off_by_default_and_admin_falls_back_to_the_inference_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RANET_API_KEY", "RANET_ADMIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    default = Settings()
    assert default.api_key is None and default.admin_api_key is None and default.effective_admin_key is None
    monkeypatch.setenv("RANET_API_KEY", " from-env ")
    shared = Settings()
    assert shared.api_key is not None and shared.api_key.get_secret_value() == "from-env"
    assert shared.effective_admin_key == shared.api_key
    monkeypatch.setenv("RANET_ADMIN_API_KEY", "admin-env")
    separate = Settings()
    assert separate.effective_admin_key is not None
    assert separate.effective_admin_key.get_secret_value() == "admin-env"
    monkeypatch.setenv("RANET_API_KEY", "   ")  # blank, e.g. compose passing an unset variable: off
    assert Settings().api_key is None


def test_serve_reads_keys_from_files_and_never_prints_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ranet_serve.api import server as server_module

    started: list[Settings] = []
    monkeypatch.setattr(server_module, "find_bundles", lambda settings: ["tiny/1"])
    monkeypatch.setattr(server_module, "serve", started.append)
    key_file, admin_file, empty = tmp_path / "key", tmp_path / "admin", tmp_path / "empty"
    key_file.write_text(KEY + "\n")
    admin_file.write_text(ADMIN_KEY)
    empty.write_text("\n")
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["serve", "--api-key-file", str(key_file), "--admin-api-key-file", str(admin_file)]
    )
    assert result.exit_code == 0, result.output
    assert started and started[0].api_key is not None and started[0].admin_api_key is not None
    assert started[0].api_key.get_secret_value() == KEY
    assert started[0].admin_api_key.get_secret_value() == ADMIN_KEY
    assert "API key required" in result.output and KEY not in result.output and ADMIN_KEY not in result.output
    for bad in (empty, tmp_path / "missing"):
        refused = runner.invoke(cli_app, ["serve", "--api-key-file", str(bad)])
        assert refused.exit_code == 2 and "--api-key-file" in refused.output


def test_client_sends_its_api_key(keyed: RunningServer) -> None:
    with RanetClient(keyed.url, model="tiny", api_key=KEY, retry=1) as client:
        assert client.classify(PNG).result.class_index >= 0
        assert client.ready().ready
    with (
        RanetClient(keyed.url, model="tiny", retry=3) as anonymous,
        pytest.raises(UnauthorizedError) as caught,
    ):
        anonymous.classify(PNG)
    assert caught.value.status == 401 and caught.value.code == "unauthorized" and caught.value.attempts == 1


# -- model names never leave the store ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/..%2Fescape/classify"),
        ("POST", "/v1/models/../escape/classify"),
        ("POST", "/v1/models/%2E%2E%2Fescape/classify"),
        ("GET", "/v1/models/..%2Fescape"),
        ("POST", "/v2/models/..%2Fescape/infer"),
        ("POST", "/v2/models/..%2Fescape/versions/1/infer"),
        ("GET", "/v2/models/..%2Fescape"),
        ("POST", "/v1/models/tiny/classify?version=..%2F..%2Fescape%2F1"),
    ],
)
def test_path_like_names_cannot_reach_a_bundle_outside_the_store(
    keyed: RunningServer, method: str, path: str
) -> None:
    """`../escape/1` is a valid bundle one directory up; if any lookup joined names into paths, it would
    load and answer 200. Sent with http.client so the dot segments reach the server as written."""
    connection = http.client.HTTPConnection("127.0.0.1", keyed.port, timeout=30)
    try:
        body = json.dumps(V2_BODY).encode() if "/v2/" in path else PNG
        content_type = "application/json" if "/v2/" in path else "image/png"
        headers = {**bearer(KEY), "Content-Type": content_type}
        connection.request(method, path, body=body if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status in (404, 422), (status, answer)
    assert "error" in answer
    with keyed.client() as client:
        listed = client.get("/v1/models", headers=bearer(KEY)).json()
    assert [m["name"] for m in listed["models"]] == ["tiny"]


# -- checkpoints are weights only --------------------------------------------------------------------


class _Payload:
    """Unpickling this would create `marker` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_bundle_whose_checkpoint_pickles_an_object_is_refused(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_bundle_dir, bundle_dir)
    bundle = load_bundle(bundle_dir)
    assert bundle.load_model() is not None  # the genuine checkpoint loads
    marker = tmp_path / "pwned"
    state = torch.load(bundle.file(bundle.manifest.checkpoint), map_location="cpu", weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, bundle.file(bundle.manifest.checkpoint))
    tampered = load_bundle(bundle_dir, verify_checksums=False)  # past the checksum, to reach the loader
    with pytest.raises(CheckpointError):
        tampered.load_model()
    assert not marker.exists(), "the pickled payload ran"


# -- limits are on by default ------------------------------------------------------------------------


def test_size_limits_are_finite_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MAX_BODY_BYTES",
        "MAX_IMAGE_BYTES",
        "MAX_IMAGE_PIXELS",
        "MAX_IMAGES_PER_REQUEST",
        "REQUEST_TIMEOUT_MS",
    ):
        monkeypatch.delenv(f"RANET_{name}", raising=False)
    settings = Settings()
    assert 0 < settings.max_body_bytes <= 64 << 20
    assert 0 < settings.max_image_bytes <= settings.max_body_bytes
    assert 0 < settings.max_image_pixels <= 89_478_485  # not above Pillow's own bomb guard
    assert 0 < settings.max_images_per_request <= 256
    assert 0 < settings.max_queue_size <= 10_000
    assert math.isfinite(settings.request_timeout_ms) and settings.request_timeout_ms > 0
    with pytest.raises(ValueError):  # a limit cannot be switched off by a zero
        Settings(max_body_bytes=0)


def test_the_server_applies_its_image_limits(keyed: RunningServer) -> None:
    service = keyed.app.state.service
    assert service.limits.max_image_pixels == keyed.settings.max_image_pixels
    assert service.limits.max_image_bytes == keyed.settings.max_image_bytes
    with httpx.Client(base_url=keyed.url) as client:
        too_big = client.post(
            V1,
            content=b"\x00" * (keyed.settings.max_body_bytes + 1),
            headers={**bearer(KEY), "Content-Type": "image/png"},
        )
    assert too_big.status_code == 413
