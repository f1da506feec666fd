"""API test fixtures: the tiny calibrated bundle (exported once), the shared server, test images."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

import ranet_serve
from helpers.bundles import build_tiny_bundle, make_store
from helpers.images import png_bytes
from helpers.server import RunningServer, settings_for

HELPERS = Path(__file__).resolve().parents[1] / "helpers" / "bundles.py"


def _bundle_cache_key() -> str:
    """Changes whenever the code that shapes the exported bundle changes."""
    package = Path(ranet_serve.__file__).parent
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted([*package.glob("model/*.py"), *package.glob("export/*.py"), HELPERS]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only template `tiny/1` bundle; exported once and kept in pytest's cache between runs.

    Exporting takes 20-45 s on the test machine; the cache key covers model/, export/ and the helper.
    """
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    if cache is None:
        out = tmp_path_factory.mktemp("export") / "tiny" / "1"
        build_tiny_bundle(out)
        return out
    cache_root = cache.mkdir("ranet-tiny-bundle")
    cached = cache_root / _bundle_cache_key() / "tiny" / "1"
    if not (cached / "manifest.json").is_file():
        staging = tmp_path_factory.mktemp("export") / "tiny" / "1"
        build_tiny_bundle(staging)
        shutil.rmtree(cache_root, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, cached)
    return cached


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
