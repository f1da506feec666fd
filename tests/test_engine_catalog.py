"""The catalog front-ends read, and the one rule that picks a model version (shared with the engine)."""

from __future__ import annotations

import pytest

from ranet_serve.engine.catalog import Catalog, CatalogEntry
from ranet_serve.errors import ModelNotFoundError, NotReadyError


def entry(version: str, ok: bool = True) -> CatalogEntry:
    if ok:
        return CatalogEntry(name="m", version=version, state="ready", device="cpu")
    return CatalogEntry(name="m", version=version, state="failed", error=f"broken {version}")


def test_without_a_version_the_latest_that_loaded_answers() -> None:
    catalog = Catalog.of([entry("2"), entry("10"), entry("11", ok=False)])
    assert catalog.find("m").version == "10"  # numeric order, failed 11 skipped
    assert catalog.find_ready("m").version == "10"
    assert catalog.find("m", "11").state == "failed"
    with pytest.raises(NotReadyError, match="broken 11"):
        catalog.find_ready("m", "11")


def test_a_model_whose_versions_all_failed_is_not_ready_and_says_why() -> None:
    catalog = Catalog.of([entry("1", ok=False), entry("2", ok=False)])
    assert catalog.find("m").version == "2"  # listings still show it
    with pytest.raises(NotReadyError, match="1: broken 1; 2: broken 2"):
        catalog.find_ready("m")
    assert not catalog.ready


def test_unknown_names_and_versions_are_404s_and_loading_is_503() -> None:
    catalog = Catalog.of([entry("1")])
    with pytest.raises(ModelNotFoundError, match="serving: m"):
        catalog.find("other")
    with pytest.raises(ModelNotFoundError, match="versions: 1"):
        catalog.find("m", "3")
    with pytest.raises(ModelNotFoundError):
        catalog.find("../etc")  # a URL segment is only ever a key, and must look like a name
    with pytest.raises(NotReadyError, match="still loading"):
        Catalog().find("m")
    assert catalog.ready and not Catalog().ready
    assert not Catalog.of([entry("1")], closed=True).ready
