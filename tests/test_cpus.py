"""How the CPUs are split between the engine's runtimes and the front-end processes."""

from __future__ import annotations

import pytest

from ranet_serve import cpus
from ranet_serve.settings import Settings


@pytest.mark.parametrize(
    ("available", "threads", "frontends"), [(1, 1, 1), (2, 1, 1), (4, 1, 3), (8, 2, 6), (16, 4, 12)]
)
def test_by_default_the_engine_takes_a_quarter_of_the_cpus_and_the_front_ends_the_rest(
    monkeypatch: pytest.MonkeyPatch, available: int, threads: int, frontends: int
) -> None:
    monkeypatch.setattr(cpus, "available_cpus", lambda: available)
    settings = Settings()
    assert (cpus.engine_threads(settings), cpus.frontend_count(settings)) == (threads, frontends)


def test_settings_given_are_taken_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "available_cpus", lambda: 16)
    settings = Settings(threads=2, frontends=3)
    assert (cpus.engine_threads(settings), cpus.frontend_count(settings)) == (2, 3)
    assert cpus.frontend_count(Settings(threads=15)) == 1  # never none
