"""What the engine serves, as the front-ends see it: an immutable snapshot swapped after every (re)load.

Front-ends need the manifests (to decode images to the model's input, to describe models, to encode
labels) but none of the engine's objects: the model registry publishes a `Catalog` after each load,
and in a front-end process the engine client rebuilds the same snapshot from the engine's message.
Lookups are dictionary reads; a model name from a URL is only ever a key.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

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
    """Every model version the engine has, by name and version; `loaded` once the first load ended.

    `unloaded`: models an operator unloaded (the repository API); they are not served, and a request
    for one is told so, until they are loaded again.
    """

    loaded: bool = False
    closed: bool = False
    models: dict[str, dict[str, CatalogEntry]] = field(default_factory=dict)
    unloaded: frozenset[str] = frozenset()
    # Successful `find_ready` answers by (name, version): every request resolves its model here, and the
    # catalog never changes (it is replaced on every (re)load), so each pair is resolved once. Bounded:
    # only entries that exist are cached (at most one per version, plus None per model).
    _ready: dict[tuple[str, str | None], CatalogEntry] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(
        cls,
        entries: Iterable[CatalogEntry],
        *,
        loaded: bool = True,
        closed: bool = False,
        unloaded: Iterable[str] = (),
    ) -> Catalog:
        models: dict[str, dict[str, CatalogEntry]] = {}
        for entry in entries:
            models.setdefault(entry.name, {})[entry.version] = entry
        return cls(loaded=loaded, closed=closed, models=models, unloaded=frozenset(unloaded))

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
        return select_version(
            self.models, name, version, loaded=self.loaded, ready_only=False, unloaded=self.unloaded
        )

    def find_ready(self, name: str, version: str | None = None) -> CatalogEntry:
        """Like `find`, but a version that failed to load is a NotReadyError naming its error."""
        entry = self._ready.get((name, version))
        if entry is None:
            entry = select_version(
                self.models, name, version, loaded=self.loaded, ready_only=True, unloaded=self.unloaded
            )
            self._ready[name, version] = entry
        return entry

    def default_model(self, configured: str, *, explicit: bool) -> str:
        """The model a request that names none is served by: the one rule, for every front-end path.

        `configured` is the default_model setting and `explicit` whether it was set (environment or
        option) rather than left at its default. Left at its default on a store holding exactly one
        model (an unloaded one counts: unloading a model does not make another the default), that model
        is the default, whatever its name; otherwise `configured`. Constant time: it runs per request,
        and the catalog is replaced on every (re)load.
        """
        if explicit or len(self.models) + len(self.unloaded) != 1:
            return configured
        return next(iter(self.models or self.unloaded))

    def find_default(self, configured: str, *, explicit: bool, version: str | None = None) -> CatalogEntry:
        """`find_ready` for the default model (see `default_model`).

        A default the store does not hold is a ModelNotFoundError that lists the models served and
        says how to choose one, instead of only naming a model the client never asked for.
        """
        name = self.default_model(configured, explicit=explicit)
        if self.loaded and name not in self.models and name not in self.unloaded:
            served = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(
                f"default model {name!r} not found; serving: {served}. Name the model in the request, or "
                "set the server's default with RANET_DEFAULT_MODEL (ranet serve --default-model)",
                model=name,
            )
        return self.find_ready(name, version)


class VersionLike(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def error(self) -> str | None: ...


V = TypeVar("V", bound=VersionLike)


def select_version(
    models: Mapping[str, Mapping[str, V]],
    name: str,
    version: str | None,
    *,
    loaded: bool,
    ready_only: bool,
    unloaded: Collection[str] = (),
) -> V:
    """The one rule that picks a model version, for the front-ends' catalog and the engine's registry.

    Unknown model or version: ModelNotFoundError (404); a model in `unloaded` is one too, as Triton
    answers for an unloaded model, with a message that says it was unloaded. No version given: the
    latest that loaded; if none did, the latest that failed (`ready_only` False) or a NotReadyError
    listing the errors. A version that failed to load: itself, or a NotReadyError naming its error
    (`ready_only`).
    """
    if not loaded and not models:
        raise NotReadyError("models are still loading")
    if name in unloaded and name not in models:
        raise ModelNotFoundError(
            f"model {name!r} is unloaded; it serves again once loaded "
            f"(POST /v2/repository/models/{name}/load)",
            model=name,
        )
    if not NAME_PATTERN.match(name) or name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelNotFoundError(f"model {name[:64]!r} not found; serving: {known}", model=name[:64])
    versions = models[name]
    if version is None:
        ready = [v for v in versions.values() if v.state == "ready"]
        if not ready and ready_only:
            errors = "; ".join(f"{v.version}: {v.error}" for v in versions.values())
            raise NotReadyError(f"model {name!r} has no version that loaded ({errors})", model=name)
        return max(ready or versions.values(), key=lambda v: version_key(v.version))
    if version not in versions:
        known = ", ".join(sorted(versions, key=version_key))
        raise ModelNotFoundError(
            f"model {name!r} has no version {version[:32]!r}; versions: {known}",
            model=name,
            version=version[:32],
        )
    entry = versions[version]
    if ready_only and entry.state != "ready":
        raise NotReadyError(f"model {name!r} version {version!r} failed to load: {entry.error}", model=name)
    return entry
