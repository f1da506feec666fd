"""The inference paths and the dispatch that serves them past FastAPI's routing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ranet_serve.api.dispatch import exception_handler
from ranet_serve.api.paths import InferenceTarget, inference_model, match_inference
from ranet_serve.errors import InvalidInputError, RanetServeError


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v1/classify", InferenceTarget("v1", None)),
        ("/v1/models/ranet-fmnist/classify", InferenceTarget("v1", "ranet-fmnist")),
        ("/v2/models/m/infer", InferenceTarget("v2", "m")),
        ("/v2/models/m/versions/3/infer", InferenceTarget("v2", "m", "3")),
        ("/v1/classify/", None),
        ("/v1/models/a/b/classify", None),
        ("/v2/models/m/versions/3/ready", None),
        ("/v2/models//infer", None),
    ],
)
def test_inference_paths_are_matched_as_starlette_matches_their_routes(
    path: str, target: InferenceTarget | None
) -> None:
    assert match_inference("POST", path) == target
    assert match_inference("GET", path) is None  # only POST infers; other methods go to the router
    assert inference_model("POST", path) == ((True, target.model) if target else (False, None))


def test_an_exception_gets_the_handler_of_its_most_specific_registered_class() -> None:
    async def domain(request: Any, exc: Exception) -> Any: ...
    async def invalid(request: Any, exc: Exception) -> Any: ...
    async def anything(request: Any, exc: Exception) -> Any: ...

    app = SimpleNamespace(
        exception_handlers={RanetServeError: domain, InvalidInputError: invalid, Exception: anything}
    )
    scope: dict[str, Any] = {"app": app}
    assert exception_handler(scope, InvalidInputError("bad")) is invalid
    assert exception_handler(scope, RanetServeError("x")) is domain
    assert exception_handler(scope, KeyError("k")) is anything
