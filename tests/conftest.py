"""Shared fixtures: a tiny valid config, cached registered models, and the official-RANet fixture.

The official fixture lives outside the repository (`shared/fixtures/official-ranet`, beside the
clone); `RANET_FIXTURES` points elsewhere when it is not there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import ranet_serve
from helpers.bundles import build_tiny_bundle
from helpers.fixtures import DEFAULT_FIXTURES, official_fixtures_dir
from ranet_serve.export.bundle import Bundle, load_bundle
from ranet_serve.model.config import RANetConfig, load_config
from ranet_serve.model.ranet import RANet
from ranet_serve.model.registry import get_config

# The test machine is small and shared with training jobs: intra-op threads that spin-wait for a busy
# core make a 30 ms forward take seconds, so tests run single-threaded unless told otherwise.
torch.set_num_threads(int(os.environ.get("RANET_TEST_THREADS", "1")))

# Servers that tests build from their own Settings would all listen for gRPC on the default 8081, and
# fail to start whenever anything else holds it (a benchmark, a dev server, a parallel test): gRPC is
# off in tests unless a test gives a port (`settings_for(..., grpc_port=free_port())`).
os.environ.setdefault("RANET_GRPC_PORT", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run by default where CUDA is visible and are skipped, saying why, where not."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible (gpu test)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parametrize id that says gpu
            item.add_marker(skip)


@dataclass(frozen=True)
class OfficialFixture:
    """The data-only fixture produced with the official code (spec section 13)."""

    directory: Path
    checkpoint_path: Path
    checkpoint: dict[str, Any]
    input: torch.Tensor
    logits: list[torch.Tensor]
    meta: dict[str, Any]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official-RANet fixtures' root; skips without it, fails when $RANET_FIXTURES names nothing."""
    path = official_fixtures_dir()
    if path is None:
        configured = os.environ.get("RANET_FIXTURES")
        if configured:
            pytest.fail(f"RANET_FIXTURES={configured} is not a directory")
        pytest.skip(f"official-RANet fixtures not found at {DEFAULT_FIXTURES}; set RANET_FIXTURES")
    return path


@pytest.fixture(scope="session")
def official_fixture(fixtures_dir: Path) -> OfficialFixture:
    """cifar10-model1: official checkpoint, its input batch, the official logits and config.json."""
    directory = fixtures_dir / "cifar10-model1"
    checkpoint_path = directory / "official_checkpoint.pt"
    return OfficialFixture(
        directory=directory,
        checkpoint_path=checkpoint_path,
        checkpoint=torch.load(checkpoint_path, map_location="cpu", weights_only=True),
        input=torch.load(directory / "input.pt", weights_only=True),
        logits=torch.load(directory / "logits.pt", weights_only=True),
        meta=json.loads((directory / "config.json").read_text()),
    )


@pytest.fixture(scope="session")
def tiny_config() -> RANetConfig:
    """A small valid 3-scale CIFAR-style config (6 exits at 8x8) that builds and runs in milliseconds.

    growth_rate 4 is the smallest that leaves a channel from the coarse sub-network in every fusion
    layer of the 1x-growth sub-network (floor(4 * 0.25) = 1).
    """
    return load_config("cifar10-model1", name="tiny", n_channels=4, growth_rate=4, step=2, step_mode="even")


@pytest.fixture
def tiny_model(tiny_config: RANetConfig) -> RANet:
    """A freshly initialised tiny RANet (seeded, train mode)."""
    torch.manual_seed(0)
    return RANet(tiny_config)


@pytest.fixture(scope="session")
def registered_model() -> Iterator[Callable[[str], RANet]]:
    """Build each registered config at most once per session (ImageNet models take seconds to init).

    The models are shared: tests must not change their weights or leave them in train mode.
    """
    cache: dict[str, RANet] = {}

    def build(name: str) -> RANet:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = RANet(get_config(name)).eval()
        return cache[name]

    yield build
    cache.clear()


HELPERS = Path(__file__).resolve().parent / "helpers" / "bundles.py"


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
def tiny_bundle(tiny_bundle_dir: Path) -> Bundle:
    """The tiny bundle loaded, for tests that only read it."""
    return load_bundle(tiny_bundle_dir)
