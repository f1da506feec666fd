"""The catalog front-ends read, and the one rule that picks a model version (shared with the engine)."""

from __future__ import annotations

from typing import Any

import pytest

from ranet_serve.engine import catalog as catalog_module
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


def named(name: str, version: str = "1", ok: bool = True) -> CatalogEntry:
    if ok:
        return CatalogEntry(name=name, version=version, state="ready", device="cpu")
    return CatalogEntry(name=name, version=version, state="failed", error="broken")


def test_a_store_with_one_model_serves_it_by_default_unless_a_default_was_set() -> None:
    one = Catalog.of([named("other", "1"), named("other", "2")])
    assert one.default_model("ranet-fmnist", explicit=False) == "other"
    assert one.find_default("ranet-fmnist", explicit=False).version == "2"
    assert one.find_default("ranet-fmnist", explicit=False, version="1").version == "1"
    assert one.default_model("ranet-fmnist", explicit=True) == "ranet-fmnist"  # set: kept, even if absent
    both = Catalog.of([named("other"), named("ranet-fmnist")])
    assert both.default_model("ranet-fmnist", explicit=False) == "ranet-fmnist"
    assert Catalog().default_model("ranet-fmnist", explicit=False) == "ranet-fmnist"
    # The one model is the default even when it failed to load: its error says why, not "not found".
    with pytest.raises(NotReadyError, match="broken"):
        Catalog.of([named("other", ok=False)]).find_default("ranet-fmnist", explicit=False)


def test_a_default_the_store_lacks_lists_the_models_served_and_how_to_set_the_default() -> None:
    catalog = Catalog.of([named("beta"), named("alpha")])
    with pytest.raises(ModelNotFoundError) as caught:
        catalog.find_default("ranet-fmnist", explicit=False)
    message = str(caught.value)
    assert "default model 'ranet-fmnist' not found; serving: alpha, beta" in message
    assert "RANET_DEFAULT_MODEL" in message and "--default-model" in message
    with pytest.raises(ModelNotFoundError, match=r"serving: other\. Name the model"):
        Catalog.of([named("other")]).find_default("ranet-fmnist", explicit=True)
    with pytest.raises(NotReadyError, match="still loading"):
        Catalog().find_default("ranet-fmnist", explicit=False)


def test_lookups_are_remembered_per_catalog_and_a_new_catalog_answers_afresh(monkeypatch: Any) -> None:
    # Every request resolves its model: a catalog resolves each (name, version) once, errors excepted
    # (they are asked again, and raised again). A reload replaces the catalog, so nothing goes stale.
    calls: list[tuple[str, str | None]] = []
    real = catalog_module.select_version

    def counted(models: Any, name: str, version: str | None, **kwargs: Any) -> Any:
        calls.append((name, version))
        return real(models, name, version, **kwargs)

    monkeypatch.setattr(catalog_module, "select_version", counted)
    catalog = Catalog.of([entry("1"), entry("2"), entry("3", ok=False)])
    assert [catalog.find_ready("m").version for _ in range(3)] == ["2", "2", "2"]
    assert calls == [("m", None)]  # resolved once
    for _ in range(2):
        with pytest.raises(NotReadyError, match="broken 3"):
            catalog.find_ready("m", "3")
    assert calls.count(("m", "3")) == 2  # a failure is not remembered
    reloaded = Catalog.of([entry("1"), entry("2"), entry("3")])
    assert reloaded.find_ready("m").version == "3" and catalog.find_ready("m").version == "2"
