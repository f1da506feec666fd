"""Client test fixtures: the real RANet Serve app on 127.0.0.1 serving the tiny calibrated bundle.

The bundle fixture is the suite's own (`tests/conftest.py`): exported once and cached by pytest
between runs, so client and API tests share one export. The server is the API tests' `RunningServer`
(uvicorn in a thread, real batcher and runtimes, switchable stage faults), started once per session.

`ranet_client` is normally installed (`pip install -e clients/python`, done by scripts/setup.sh); when it
is not, the source tree is used so the tests still run.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers.bundles import make_store
from helpers.server import RunningServer, settings_for

if TYPE_CHECKING:
    from ranet_client import ModelInfo
    from ranet_client.image_sets import Sample

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "python"
if importlib.util.find_spec("ranet_client") is None:
    sys.path.insert(0, str(CLIENT_SOURCE))

MAX_IMAGES_PER_REQUEST = 8  # the test server's limit; 413 beyond it


@pytest.fixture(scope="session")
def ranet_server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the client tests: model `tiny` (default) with versions 1 and 2."""
    store = make_store(tmp_path_factory.mktemp("client-store"), tiny_bundle_dir, versions=("1", "2"))
    running = RunningServer(settings_for(store, max_images_per_request=MAX_IMAGES_PER_REQUEST)).start()
    yield running
    running.stop()


@pytest.fixture
def server_url(ranet_server: RunningServer) -> Iterator[str]:
    """The server's base URL, with every injected fault cleared before and after the test."""
    ranet_server.faults.reset()
    yield ranet_server.url
    ranet_server.faults.reset()


@pytest.fixture(scope="session")
def tiny_info(ranet_server: RunningServer) -> ModelInfo:
    """What the server says about `tiny` (exits and their costs, operating points)."""
    from ranet_client import RanetClient

    with RanetClient(ranet_server.url) as client:
        return client.model("tiny")


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    """The 20 bundled, labelled Fashion-MNIST test images."""
    from ranet_client import bundled_samples

    return bundled_samples()
