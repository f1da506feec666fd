"""Admin routes are closed unless an admin key is set, or the request comes from loopback.

A reload is an operator's action. Without RANET_ADMIN_API_KEY (or RANET_API_KEY, its fallback) the
server answers `/v1/admin/*` only to loopback peers; anyone else gets 403 with a JSON error that says
how to enable admin. The peer is the connection's address (ASGI scope `client`), never a header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.bundles import make_store
from helpers.server import RunningServer, settings_for
from ranet_serve.api import server as server_module

ADMIN_KEY = "admin-key-Lp40"
RELOAD = "/v1/admin/reload"


@pytest.fixture(scope="module")
def keyless(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    store = make_store(tmp_path_factory.mktemp("keyless"), tiny_bundle_dir)
    running = RunningServer(settings_for(store)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def admin_keyed(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    store = make_store(tmp_path_factory.mktemp("admin-keyed"), tiny_bundle_dir)
    running = RunningServer(settings_for(store, admin_api_key=ADMIN_KEY)).start()
    yield running
    running.stop()


def post_from(
    server: RunningServer, client: tuple[str, int], path: str = RELOAD, **kwargs: Any
) -> httpx.Response:
    """POST to the running server's app in process, as if the connection came from `client`.

    Refusals happen in the route's dependency, before the engine is touched, so the app can be
    called from this event loop while uvicorn serves it from its own.
    """

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=server.app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://ranet.test") as http:
            return await http.post(path, **kwargs)

    return asyncio.run(call())


@pytest.mark.parametrize(
    "peer", [("10.1.2.3", 40000), ("192.0.2.7", 1234), ("2001:db8::5", 443), ("testclient", 50000)]
)
def test_without_a_key_admin_refuses_a_remote_peer_with_403_and_says_how_to_enable(
    keyless: RunningServer, peer: tuple[str, int]
) -> None:
    response = post_from(keyless, peer)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "admin_disabled"
    assert "RANET_ADMIN_API_KEY" in error["message"] and "loopback" in error["message"]


def test_a_forwarded_for_header_cannot_make_a_remote_peer_local(keyless: RunningServer) -> None:
    spoofed = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
    response = post_from(keyless, ("10.1.2.3", 40000), headers=spoofed)
    assert response.status_code == 403, response.text


def test_without_a_key_admin_answers_loopback(keyless: RunningServer) -> None:
    # RunningServer listens on 127.0.0.1: a real TCP connection from loopback.
    with keyless.client() as client:
        response = client.post(RELOAD)
    assert response.status_code == 200, response.text
    assert response.json()["kept"] == ["tiny/1"]


@pytest.mark.parametrize(
    "peer", [("127.0.0.1", 123), ("127.8.9.10", 123), ("::1", 123), ("::ffff:127.0.0.1", 1)]
)
def test_every_loopback_address_counts_as_local(peer: tuple[str, int]) -> None:
    from starlette.requests import Request

    from ranet_serve.api.auth import is_loopback_client

    assert is_loopback_client(Request({"type": "http", "client": peer, "headers": []}))
    assert not is_loopback_client(Request({"type": "http", "client": None, "headers": []}))


def test_with_a_key_admin_needs_the_bearer_token_from_anywhere(admin_keyed: RunningServer) -> None:
    remote = post_from(admin_keyed, ("10.1.2.3", 40000))
    assert remote.status_code == 401, remote.text  # the key decides, not the address
    assert remote.json()["error"]["code"] == "unauthorized"
    with admin_keyed.client() as client:
        assert client.post(RELOAD).status_code == 401  # loopback too
        wrong = client.post(RELOAD, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.post(RELOAD, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert right.status_code == 200, right.text


def test_admin_refusal_is_in_the_openapi_schema(keyless: RunningServer) -> None:
    with keyless.client() as client:
        schema = client.get("/openapi.json").json()
    assert "403" in schema["paths"][RELOAD]["post"]["responses"]


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("uvicorn.Config")
        self.kwargs = kwargs


def _capture_config(*_: Any, **kwargs: Any) -> None:
    raise _Captured(kwargs)


def test_uvicorn_never_takes_the_client_address_from_proxy_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The loopback rule trusts the socket's peer: both ways of serving keep proxy_headers off."""
    import uvicorn

    import ranet_serve.api.app as app_module
    import ranet_serve.engine.remote as remote_module
    import ranet_serve.metrics as metrics_module

    monkeypatch.setattr(uvicorn, "Config", _capture_config)
    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: object())
    monkeypatch.setattr(remote_module, "RemoteEngine", lambda *a, **k: object())
    monkeypatch.setattr(metrics_module, "RequestMetrics", lambda *a, **k: object())
    settings = settings_for(tmp_path)
    with pytest.raises(_Captured) as one_process:
        server_module._serve_one_process(settings)
    assert one_process.value.kwargs["proxy_headers"] is False
    with pytest.raises(_Captured) as frontend:
        server_module.run_frontend(settings, None, tmp_path)  # type: ignore[arg-type]
    assert frontend.value.kwargs["proxy_headers"] is False
