"""Where the official-RANet fixtures are: outside the repository, beside the clone, or $RANET_FIXTURES."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "official-ranet"


def official_fixtures_dir() -> Path | None:
    """The fixtures' root ($RANET_FIXTURES, else <repo>/../shared/fixtures/official-ranet); None when absent.

    Tests that can run without them (on other weights) ask this instead of skipping."""
    configured = os.environ.get("RANET_FIXTURES")
    path = Path(configured) if configured else DEFAULT_FIXTURES
    return path if path.is_dir() else None
