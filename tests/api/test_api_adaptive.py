"""A latency objective moves the default operating point over HTTP; explicit knobs always win."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_metrics import scrape, value

from helpers.bundles import make_store
from helpers.server import RunningServer, settings_for

CHEAPEST_EXIT_FLOPS = 2030858  # the tiny bundle's `fast` point: everything at exit 0


@pytest.fixture(scope="module")
def strict_server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An objective no request can meet (1 microsecond), no dwell: every 20 answers force a move."""
    store = make_store(tmp_path_factory.mktemp("store"), tiny_bundle_dir)
    running = RunningServer(settings_for(store, slo_p99_ms=0.001, slo_dwell_s=0.0)).start()
    yield running
    running.stop()


def test_missed_objective_moves_the_default_to_a_cheaper_point_but_not_explicit_knobs(
    strict_server: RunningServer, images: list[bytes]
) -> None:
    files = [("files", ("0.png", images[0], "image/png"))]
    with strict_server.client() as client:
        before = scrape(client)
        assert value(before, "ranet_operating_point", model="tiny") > CHEAPEST_EXIT_FLOPS
        points = []
        for _ in range(25):
            response = client.post("/v1/classify", files=files)
            assert response.status_code == 200, response.text
            points.append(response.json()["operating_point"])
        # The first 20 answers (min_samples) judge the calibrated default; after them it moves.
        assert points[:20] == ["balanced"] * 20
        assert points[20:] == ["fast"] * 5
        after = scrape(client)
        assert value(after, "ranet_operating_point", model="tiny") == CHEAPEST_EXIT_FLOPS
        # Requests that choose their own budget are untouched by the controller.
        for params, expected in (
            ({"confidence": 1.0}, "confidence=1"),
            ({"operating_point": "full-depth"}, "full-depth"),
            ({"target_flops": "7M"}, "balanced"),
        ):
            body = client.post("/v1/classify", files=files, params=params).json()
            assert body["operating_point"] == expected
        full = client.post("/v1/classify", files=files, params={"confidence": 1.0}).json()
        assert full["results"][0]["exit"] == 5


def test_without_an_objective_the_default_never_moves(client: httpx.Client, images: list[bytes]) -> None:
    files = [("files", ("0.png", images[0], "image/png"))]
    seen = {client.post("/v1/models/tiny/classify", files=files).json()["operating_point"] for _ in range(30)}
    assert seen == {"balanced"}
