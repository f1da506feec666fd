"""A front-end process takes its loaded heap out of the garbage collector's scans before it serves."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from helpers.server import settings_for
from ranet_serve.heap import freeze_heap


@pytest.fixture
def unfrozen() -> Any:
    """Start with nothing frozen in this process and leave it so."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_front_end_freezes_its_imports_and_app_before_serving(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unfrozen: None
) -> None:
    import uvicorn

    import ranet_serve.api.server as server_module

    frozen_when_serving: list[int] = []

    def serve(self: uvicorn.Server, sockets: Any = None) -> None:
        frozen_when_serving.append(gc.get_freeze_count())

    monkeypatch.setattr(uvicorn.Server, "run", serve)
    monkeypatch.setattr(server_module, "stop_with_parent", lambda: None)
    assert gc.get_freeze_count() == 0
    server_module.run_frontend(settings_for(tmp_path), None, tmp_path)  # type: ignore[arg-type]
    # The app, its routes and every import were alive then: tens of thousands of objects.
    [frozen] = frozen_when_serving
    assert frozen > 10_000


def test_freezing_again_still_frees_what_was_dropped_since(unfrozen: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    alive = weakref.ref(a)
    freeze_heap()
    del a, b
    gc.collect()
    assert alive() is not None  # frozen: an ordinary collection leaves it
    freeze_heap()  # what the engine runs after a reload
    assert alive() is None
