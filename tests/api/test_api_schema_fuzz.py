"""Schema fuzzing: schemathesis generates requests from the server's own OpenAPI schema and sends them to
the real server on loopback. Every answer must be a non-5xx whose status, content type, headers and body
the schema documents. Bounded (a few examples per operation and mode) so it stays in the fast suite.

What this catches that the hand-written corpus cannot: inputs nobody thought of (odd unicode in path
parameters, mixed-type JSON, multipart edge cases) and drift between what the routes answer and what the
schema promises, e.g. an error status a route can return but does not declare.

Driven through schemathesis' Python API (one hypothesis run per operation and generation mode) rather
than its pytest plugin, whose lazy-schema fixtures do not work with the pytest this project pins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.bundles import make_store
from helpers.server import RunningServer, settings_for
from ranet_serve.api.app import create_app
from ranet_serve.settings import Settings

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after schemathesis is known present)
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES_PER_MODE = int(os.environ.get("RANET_FUZZ_EXAMPLES", "12"))  # raise it for a deeper run
# What this test promises: no 5xx, and every answer is one the schema documents. Left out on purpose:
# positive_data_acceptance (a schema cannot say "a decodable image", so schema-valid random bytes are
# rightly a 400) and negative_data_rejection (it does not count 413 as a rejection, and this server
# answers oversized schema-violating bodies 413, which is the more precise answer).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _published_schema() -> dict[str, Any]:
    """The schema as any app publishes it (no store needed to build it): one source for the test ids."""
    schema: dict[str, Any] = create_app(Settings(model_store="/nonexistent")).openapi()
    return schema


SCHEMA = _published_schema()
OPERATIONS = [
    (method.upper(), path)
    for path, methods in SCHEMA["paths"].items()
    for method in methods
    if method != "parameters"
]
# Schema-violating requests exist only where the schema constrains something: the request bodies.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "requestBody" in SCHEMA["paths"][path][method.lower()]
]


@pytest.fixture(scope="module")
def api_schema(server: RunningServer) -> Any:
    """The schema exactly as the running server serves it at /openapi.json."""
    with server.client() as client:
        published = client.get("/openapi.json")
    assert published.status_code == 200
    assert published.json() == SCHEMA  # the ids below are the operations the server really has
    return schemathesis.openapi.from_dict(published.json())


def test_every_route_documents_its_error_answers() -> None:
    """Without this, conformance checking is vacuous for errors: FastAPI's default 422 body is a shape
    this server never sends."""
    for method, path in OPERATIONS:
        responses = SCHEMA["paths"][path][method.lower()]["responses"]
        for status, response in responses.items():
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            assert schema.get("$ref") != "#/components/schemas/HTTPValidationError", (method, path, status)
    assert "HTTPValidationError" not in SCHEMA.get("components", {}).get("schemas", {})
    # Without API keys (the default) the schema must not ask for credentials.
    assert "securitySchemes" not in SCHEMA.get("components", {})
    assert not any("security" in SCHEMA["paths"][p][m.lower()] for m, p in OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_answers_conform_to_the_schema(
    api_schema: Any, server: RunningServer, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,  # the same requests every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=server.url, timeout=30, checks=CHECKS)
        seen.append(response.status_code)
        assert response.status_code < 500, response.text

    run()
    assert seen, "no request was generated"
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def keyed_server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    store = make_store(tmp_path_factory.mktemp("fuzz-keyed"), tiny_bundle_dir)
    running = RunningServer(settings_for(store, api_key="fuzz-key", admin_api_key="fuzz-admin")).start()
    yield running
    running.stop()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_answers_without_the_key_conform_to_the_schema(
    keyed_server: RunningServer, method: str, path: str
) -> None:
    """With keys set, the schema declares them where they apply, and the 401s (body, WWW-Authenticate)
    of requests that do not send one are documented answers too."""
    with keyed_server.client() as client:
        published = client.get("/openapi.json").json()
    operation = published["paths"][path][method.lower()]
    # Everything under /v1 (admin with its own key), v2 model metadata and inference, the v2 model
    # repository (admin); not health.
    guarded = path.startswith(("/v1/", "/v2/models/", "/v2/repository/")) and not path.endswith("/ready")
    admin = path.startswith(("/v1/admin", "/v2/repository/"))
    expected = [{"adminKey": []}] if admin else [{"apiKey": []}]
    assert operation.get("security") == (expected if guarded else None), (method, path)
    schema = schemathesis.openapi.from_dict(published)
    seen: list[int] = []

    @given(case=schema[path][method].as_strategy())
    @settings(
        max_examples=3,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=keyed_server.url, timeout=30, checks=CHECKS)
        seen.append(response.status_code)

    run()
    assert (set(seen) == {401}) if guarded else (401 not in seen), seen
