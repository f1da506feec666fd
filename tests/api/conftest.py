"""API test fixtures: the shared server (on the tiny bundle of tests/conftest.py), test images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.bundles import make_store
from helpers.images import png_bytes
from helpers.server import RunningServer, settings_for


@pytest.fixture(scope="session")
def server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The shared server: store with tiny/1 and tiny/2 (identical weights), default model `tiny`."""
    store = make_store(tmp_path_factory.mktemp("store"), tiny_bundle_dir, versions=("1", "2"))
    running = RunningServer(settings_for(store)).start()
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    server.faults.reset()
    with server.client() as http:
        yield http
    server.faults.reset()


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    """Eight distinct 28x28 grayscale PNGs."""
    return [png_bytes(seed) for seed in range(8)]
