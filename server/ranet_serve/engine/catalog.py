"""What the engine serves, as the front-ends see it: an immutable snapshot swapped after every (re)load.

Front-ends need the manifests (to decode images to the model's input, to describe models, to encode
labels) but none of the engine's objects: the model registry publishes a `Catalog` after each load,
and in a front-end process the engine client rebuilds the same snapshot from the engine's message.
Lookups are dictionary reads; a model name from a URL is only ever a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ranet_serve.errors import ModelNotFoundError, NotReadyError
from ranet_serve.export.manifest import NAME_PATTERN as _NAME
from ranet_serve.export.manifest import Manifest

NAME_PATTERN = re.compile(_NAME)


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Numeric-aware ordering: "10" after "9", "1.10" after "1.9"; text sorts after numbers."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", version) if part
    )


@dataclass(frozen=True)
class CatalogEntry:
    """One model version: ready (with its manifest) or failed (with its error)."""

    name: str
    version: str
    state: Literal["ready", "failed"]
    manifest: Manifest | None = None
    device: str = ""
    default_point: str | None = None  # the operating point a request without knobs gets
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def require_manifest(self) -> Manifest:
        if self.manifest is None:
            raise NotReadyError(
                f"model {self.name!r} version {self.version!r} failed to load: {self.error}", model=self.name
            )
        return self.manifest


@dataclass(frozen=True)
class Catalog:
    """Every model version the engine has, by name and version; `loaded` once the first load ended."""

    loaded: bool = False
    closed: bool = False
    models: dict[str, dict[str, CatalogEntry]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[CatalogEntry], *, loaded: bool = True, closed: bool = False) -> Catalog:
        models: dict[str, dict[str, CatalogEntry]] = {}
        for entry in entries:
            models.setdefault(entry.name, {})[entry.version] = entry
        return cls(loaded=loaded, closed=closed, models=models)

    @property
    def ready(self) -> bool:
        """Loaded, not shut down, and at least one version can serve."""
        return (
            self.loaded
            and not self.closed
            and any(e.ready for versions in self.models.values() for e in versions.values())
        )

    def snapshot(self) -> dict[str, list[CatalogEntry]]:
        """Every model with its versions, oldest first (for listings)."""
        return {
            name: [versions[v] for v in sorted(versions, key=version_key)]
            for name, versions in sorted(self.models.items())
        }

    def has_model(self, name: str) -> bool:
        return name in self.models

    def find(self, name: str, version: str | None = None) -> CatalogEntry:
        """The entry a name (and optional version) names, failed ones included; raises if unknown.

        Without a version: the latest version that loaded, else the latest that failed.
        """
        versions = self._versions(name)
        if version is None:
            pool = [v for v in versions.values() if v.ready] or list(versions.values())
            return max(pool, key=lambda v: version_key(v.version))
        if version not in versions:
            known = ", ".join(sorted(versions, key=version_key))
            raise ModelNotFoundError(
                f"model {name!r} has no version {version[:32]!r}; versions: {known}",
                model=name,
                version=version[:32],
            )
        return versions[version]

    def find_ready(self, name: str, version: str | None = None) -> CatalogEntry:
        """Like `find`, but a failed version is a NotReadyError naming its error."""
        entry = self.find(name, version)
        if not entry.ready:
            if version is None:
                errors = "; ".join(
                    f"{v.version}: {v.error}" for v in self.models[name].values() if not v.ready
                )
                raise NotReadyError(f"model {name!r} has no version that loaded ({errors})", model=name)
            entry.require_manifest()
        return entry

    def _versions(self, name: str) -> dict[str, CatalogEntry]:
        if not self.loaded and not self.models:
            raise NotReadyError("models are still loading")
        if not NAME_PATTERN.match(name) or name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(f"model {name[:64]!r} not found; serving: {known}", model=name[:64])
        return self.models[name]
