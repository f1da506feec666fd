"""The model registry: every bundle under `model_store/<name>/<version>/`, loaded, warmed up, scheduled.

Each version gets its own runtime, executor, exit policy and batcher (one worker thread). A bundle
that fails to load is kept as a failed entry with its error, so `GET /v1/models` shows it, while the
others serve. `reload()` rescans the directory, loads what is new or changed, swaps the table in one
step and only then drains and closes the batchers it replaced: a request holds a lease on the version
it runs on, so nothing in flight is dropped. After every (re)load the registry publishes a `Catalog`
(what front-ends may ask for); lookups never touch the filesystem.

The repository API (Triton's extension) loads or unloads one model without touching the others.
An unloaded model leaves the table at once (new requests for it are a 404 that says it was unloaded),
its versions are retired like replaced ones (in-flight requests finish, then the batcher closes and
the runtime is dropped), and it stays unloaded across reloads and SIGHUP until it is loaded again, as
in Triton's explicit model control mode. Nothing is persisted: a restart serves the whole store.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ranet_serve.cascade.executor import CascadeExecutor, Cohort
from ranet_serve.cascade.policy import Budget, ExitPlan, ExitPolicy
from ranet_serve.cascade.runtimes import StageRuntime, create_runtime
from ranet_serve.cpus import engine_threads
from ranet_serve.engine.adaptive import AdaptiveSettings, LoadAdaptivePoint
from ranet_serve.engine.agreement import AgreementMonitor
from ranet_serve.engine.catalog import NAME_PATTERN, Catalog, CatalogEntry, select_version, version_key
from ranet_serve.engine.records import ReloadReport, RepositoryEntry
from ranet_serve.engine.scheduler import Batcher
from ranet_serve.errors import BundleError, ModelLoadError, ModelNotFoundError, NotReadyError
from ranet_serve.export.bundle import Bundle, load_bundle
from ranet_serve.export.manifest import MANIFEST_FILE, Manifest
from ranet_serve.export.manifest import VERSION_PATTERN as _VERSION
from ranet_serve.metrics import EngineMetrics
from ranet_serve.settings import Settings

logger = logging.getLogger(__name__)

# The manifest's own patterns: directories that cannot hold a valid bundle are not scanned.
VERSION_PATTERN = re.compile(_VERSION)
WARMUP_BATCH = 4

RuntimeFactory = Callable[[Bundle, Settings], StageRuntime]


def default_runtime_factory(bundle: Bundle, settings: Settings) -> StageRuntime:
    """The runtime the settings name (backend, device, threads) for one bundle."""
    return create_runtime(
        bundle,
        backend=settings.backend,
        device=settings.device,
        threads=engine_threads(settings),
        single_thread_below=settings.single_thread_below,
        io_binding=True if settings.io_binding == "always" else None,
        cudnn_conv_search=settings.cudnn_conv_search,
        full_graph=settings.full_depth_graph,
    )


@dataclass
class ReadyVersion:
    """A loaded, warmed-up bundle version with its own batcher."""

    name: str
    version: str
    path: Path
    fingerprint: tuple[int, int]
    bundle: Bundle
    executor: CascadeExecutor
    policy: ExitPolicy
    batcher: Batcher
    device: str
    adaptive: LoadAdaptivePoint | None = None  # moves the default point with load (slo_p99_ms)
    leases: int = 0
    state: str = field(default="ready", init=False)
    error: None = field(default=None, init=False)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def plan(self, budget: Budget) -> ExitPlan:
        """Resolve a request's knobs; without knobs, the load-adaptive default point when one is set."""
        default = self.adaptive.current.name if self.adaptive is not None else None
        return self.policy.resolve(budget, default_point=default)

    def describe(self) -> CatalogEntry:
        return CatalogEntry(
            name=self.name,
            version=self.version,
            state="ready",
            manifest=self.manifest,
            device=self.device,
            default_point=self.policy.resolve(Budget()).operating_point,
        )


@dataclass(frozen=True)
class FailedVersion:
    """A bundle version that could not be loaded; served to nobody, reported to everybody."""

    name: str
    version: str
    path: Path
    fingerprint: tuple[int, int]
    error: str
    state: str = field(default="failed", init=False)

    def describe(self) -> CatalogEntry:
        return CatalogEntry(name=self.name, version=self.version, state="failed", error=self.error)


ModelVersion = ReadyVersion | FailedVersion


class ModelStore:
    """Owns every bundle version the server serves. Thread-safe; load and reload block (call off-loop)."""

    def __init__(
        self,
        settings: Settings,
        metrics: EngineMetrics,
        runtime_factory: RuntimeFactory = default_runtime_factory,
    ):
        self.settings = settings
        self.root = Path(settings.model_store)
        self.metrics = metrics
        self.runtime_factory = runtime_factory
        self._lock = threading.Lock()  # guards _models and leases
        self._reload_lock = threading.Lock()  # one (re)load at a time
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._latest: dict[str, ReadyVersion] = {}  # per model, what select_version picks without a version
        self._unloaded: set[str] = set()  # models the repository API unloaded; reloads skip them
        self._loading: set[tuple[str, str]] = set()  # (name, version) being loaded now, for the index
        self._loaded = threading.Event()
        self._closed = False
        self.catalog = Catalog()  # replaced whole after every (re)load and on close
        # Called (on the loading thread) after every new catalog: the engine process sends it to the
        # front-ends at once, so an unload stops new requests before it waits for in-flight ones.
        self.on_publish: Callable[[], None] | None = None

    # -- state ----------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """The first load has finished (successfully or not)."""
        return self._loaded.is_set()

    @property
    def ready(self) -> bool:
        """Loaded, warmed up, and at least one version can serve."""
        return (
            self.loaded
            and not self._closed
            and any(isinstance(v, ReadyVersion) for versions in self.snapshot().values() for v in versions)
        )

    def snapshot(self) -> dict[str, list[ModelVersion]]:
        """Every model with its versions, oldest first (for listings)."""
        with self._lock:
            return {
                name: [versions[v] for v in sorted(versions, key=version_key)]
                for name, versions in sorted(self._models.items())
            }

    # -- lookups ----------------------------------------------------------------------------------

    def has_model(self, name: str) -> bool:
        """Whether the store holds a model of this name (any state); a dictionary lookup only."""
        with self._lock:
            return name in self._models

    def acquire(self, name: str, version: str | None = None) -> ReadyVersion:
        """The version to run a request on, leased: a reload does not close it until `release`."""
        with self._lock:
            entry = self._resolve(name, version)
            entry.leases += 1
            return entry

    def entry(self, name: str, version: str | None = None) -> ReadyVersion:
        """The version a request would run on now (no lease: for inspection)."""
        with self._lock:
            return self._resolve(name, version)

    def release(self, entry: ReadyVersion) -> None:
        with self._lock:
            entry.leases -= 1

    @contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[ReadyVersion]:
        """`acquire` and `release` around a block."""
        entry = self.acquire(name, version)
        try:
            yield entry
        finally:
            self.release(entry)

    def adaptive_for(self, name: str) -> LoadAdaptivePoint | None:
        """The load-adaptive point of a model's latest ready version, if it has one."""
        with self._lock:
            try:
                entry = self._resolve(name, None)
            except (ModelNotFoundError, NotReadyError):
                return None
            return entry.adaptive

    def backlog(self) -> tuple[int, float]:
        """(requests queued in every scheduler, estimated seconds of queued and running work)."""
        with self._lock:
            entries = [e for versions in self._models.values() for e in versions.values()]
        queued = 0
        seconds = 0.0
        for entry in entries:
            if isinstance(entry, ReadyVersion):
                queued += entry.batcher.queued
                seconds += entry.batcher.backlog_seconds
        return queued, seconds

    def _resolve(self, name: str, version: str | None) -> ReadyVersion:
        if version is None:  # the common case, per request: a dictionary read
            latest = self._latest.get(name)
            if latest is not None:
                return latest
        entry = select_version(
            self._models,
            name,
            version,
            loaded=self._loaded.is_set(),
            ready_only=True,
            unloaded=self._unloaded,
        )
        assert isinstance(entry, ReadyVersion)
        return entry

    # -- loading (worker threads) ---------------------------------------------------------------

    def load(self) -> ReloadReport:
        """The first load; the same as a reload."""
        return self.reload()

    def reload(self) -> ReloadReport:
        """Rescan the store, load new or changed versions, swap, then drain and close replaced ones.

        Models the repository API unloaded stay unloaded."""
        with self._reload_lock:
            self._check_open()
            found = {key: path for key, path in self._scan().items() if key[0] not in self._unloaded}
            return self._swap(found, None)

    def load_model(self, name: str) -> ReloadReport:
        """(Re)load one model's versions from the store (the repository API); other models are untouched.

        Unchanged versions are kept, new or changed ones loaded, versions gone from the store retired.
        Raises ModelNotFoundError when the store has no directory of that name, and ModelLoadError,
        after the swap, when a version failed to load (the ones that loaded serve).
        """
        with self._reload_lock:
            self._check_open()
            directory = self.root / name
            if not NAME_PATTERN.match(name) or not directory.is_dir():
                raise ModelNotFoundError(f"model {name[:64]!r} not found in the model store", model=name[:64])
            found = self._scan(directory)
            with self._lock:
                self._unloaded.discard(name)
            report = self._swap(found, name)
            if not found:
                raise ModelLoadError(
                    f"failed to load model {name!r}: its directory in the model store holds no version "
                    "directory",
                    model=name,
                )
            if report.failed:
                with self._lock:
                    errors = [
                        f"{name}/{e.version}: {e.error}"
                        for e in self._models.get(name, {}).values()
                        if isinstance(e, FailedVersion)
                    ]
                raise ModelLoadError(f"failed to load model {name!r}: " + "; ".join(errors), model=name)
            return report

    def unload_model(self, name: str) -> ReloadReport:
        """Stop serving one model (the repository API): it leaves the catalog at once, then each of its
        versions is retired once its in-flight requests finish. Returns with the versions `removed`.

        Idempotent; raises ModelNotFoundError for a name that is neither served nor in the store.
        """
        with self._reload_lock:
            self._check_open()
            with self._lock:
                known = name in self._models or name in self._unloaded
            if not known and not (NAME_PATTERN.match(name) and (self.root / name).is_dir()):
                raise ModelNotFoundError(f"model {name[:64]!r} not found in the model store", model=name[:64])
            with self._lock:
                versions = self._models.pop(name, {})
                self._latest.pop(name, None)
                self._unloaded.add(name)
            self._publish()
            for entry in versions.values():
                if isinstance(entry, ReadyVersion):
                    self._retire(entry)
            removed = tuple(f"{name}/{v}" for v in sorted(versions, key=version_key))
            logger.info("model %s unloaded (%d versions)", name, len(removed))
            return ReloadReport(loaded=(), kept=(), failed=(), removed=removed)

    def repository_index(self) -> tuple[RepositoryEntry, ...]:
        """Every version in the store or in the table, by name and version, with Triton's state."""
        found = self._scan()
        with self._lock:
            table = {(n, v): e for n, versions in self._models.items() for v, e in versions.items()}
            loading = set(self._loading)
            unloaded = set(self._unloaded)
        entries = []
        for name, version in sorted(set(found) | set(table), key=lambda k: (k[0], version_key(k[1]))):
            entry = table.get((name, version))
            if isinstance(entry, ReadyVersion):
                entries.append(RepositoryEntry(name, version, "READY"))
            elif (name, version) in loading:
                entries.append(RepositoryEntry(name, version, "LOADING"))
            elif entry is not None:
                entries.append(RepositoryEntry(name, version, "UNAVAILABLE", entry.error))
            elif name in unloaded:
                entries.append(RepositoryEntry(name, version, "UNAVAILABLE", "unloaded"))
            else:
                reason = "not loaded: added to the model store after the last load; load or reload it"
                entries.append(RepositoryEntry(name, version, "UNAVAILABLE", reason))
        return tuple(entries)

    def _check_open(self) -> None:
        if self._closed:
            raise NotReadyError("the model store is shut down")

    def _swap(self, found: dict[tuple[str, str], Path], only: str | None) -> ReloadReport:
        """Load what `found` holds that is new or changed, then swap it in: the whole table (`only`
        None), or that one model's versions. Call with the reload lock held."""
        with self._lock:
            current = {
                (n, v): e
                for n, versions in self._models.items()
                if only is None or n == only
                for v, e in versions.items()
            }
        fingerprints = {key: _fingerprint(path) for key, path in found.items()}
        unchanged = {
            key
            for key, path in found.items()
            if isinstance(previous := current.get(key), ReadyVersion)
            and previous.fingerprint == fingerprints[key]
            and previous.path == path
        }
        with self._lock:
            self._loading = set(found) - unchanged
        table: dict[str, dict[str, ModelVersion]] = {}
        loaded: list[str] = []
        kept: list[str] = []
        failed: list[str] = []
        try:
            for (name, version), path in found.items():
                if (name, version) in unchanged:
                    entry: ModelVersion = current[(name, version)]
                    kept.append(f"{name}/{version}")
                else:
                    entry = self._load_version(name, version, path, fingerprints[(name, version)])
                    (loaded if isinstance(entry, ReadyVersion) else failed).append(f"{name}/{version}")
                    with self._lock:
                        self._loading.discard((name, version))
                table.setdefault(name, {})[version] = entry
        finally:
            with self._lock:
                self._loading = set()
        with self._lock:
            if only is None:
                models = table
            else:
                models = {n: versions for n, versions in self._models.items() if n != only}
                models.update(table)
            self._models = models
            self._latest = {}
            for name, versions in models.items():
                ready = [e for e in versions.values() if isinstance(e, ReadyVersion)]
                if ready:
                    self._latest[name] = max(ready, key=lambda e: version_key(e.version))
        self._loaded.set()
        survivors = {id(e) for versions in table.values() for e in versions.values()}
        replaced = [e for e in current.values() if isinstance(e, ReadyVersion) and id(e) not in survivors]
        removed = [f"{e.name}/{e.version}" for e in current.values() if (e.name, e.version) not in found]
        self._publish()
        for entry in replaced:
            self._retire(entry)
        logger.info(
            "model store %s%s: %d loaded, %d kept, %d failed, %d removed",
            self.root,
            "" if only is None else f" (model {only})",
            len(loaded),
            len(kept),
            len(failed),
            len(removed),
        )
        return ReloadReport(tuple(loaded), tuple(kept), tuple(failed), tuple(removed))

    def _scan(self, model: Path | None = None) -> dict[tuple[str, str], Path]:
        """`<root>/<name>/<version>/` directories whose names a bundle could have (one model's only,
        when `model` names its directory)."""
        found: dict[tuple[str, str], Path] = {}
        if not self.root.is_dir():
            logger.warning("model store %s does not exist", self.root)
            return found
        for model_dir in [model] if model is not None else sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not NAME_PATTERN.match(model_dir.name):
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.is_dir() and VERSION_PATTERN.match(version_dir.name):
                    found[(model_dir.name, version_dir.name)] = version_dir
        return found

    def _load_version(
        self, name: str, version: str, path: Path, fingerprint: tuple[int, int]
    ) -> ModelVersion:
        started = time.perf_counter()
        try:
            # Only the files the configured runtime reads are checked (and read): see load_bundle.
            bundle = load_bundle(
                path, verify_checksums=self.settings.verify_checksums, backend=self.settings.backend
            )
            manifest = bundle.manifest
            if (manifest.name, manifest.version) != (name, version):
                raise BundleError(
                    f"{path}: manifest names {manifest.name}/{manifest.version} but the bundle lives in "
                    f"{name}/{version}"
                )
            runtime = self.runtime_factory(bundle, self.settings)
            executor = CascadeExecutor(runtime)
            policy = ExitPolicy(manifest, self._default_point(manifest))
            if self.settings.warmup:
                _warm_up(executor, warm_up_sizes(runtime.device, self.settings.max_batch_size))
            batcher = Batcher(
                executor,
                max_batch_size=self.settings.max_batch_size,
                max_queue_delay=self.settings.max_queue_delay_ms / 1000.0,
                max_queue_size=self.settings.max_queue_size,
                rebatch_delay=self.settings.rebatch_delay_ms / 1000.0 if self.settings.rebatch else None,
                close_when_idle=self.settings.batch_close_when_idle,  # the service announces decodes
                observer=self.metrics.batch_observer(name, manifest.cumulative_flops[-1]),
                name=f"{name}-{version}",
                agreement=AgreementMonitor(
                    self.settings.agreement_sample_fraction, observer=self.metrics.agreement_observer(name)
                ),
            )
            adaptive = self._adaptive(name, policy, batcher)
        except Exception as exc:
            logger.error("bundle %s/%s at %s failed to load: %s", name, version, path, exc)
            # Clients see the error (GET /v1/models): the bundle's place in the store, not the server's
            # file system; the log above keeps the full path for the operator.
            reason = (str(exc) or type(exc).__name__).replace(str(path), f"{name}/{version}")
            return FailedVersion(name, version, path, fingerprint, reason)
        logger.info(
            "bundle %s/%s ready (%s) in %.2f s",
            name,
            version,
            runtime.describe(),
            time.perf_counter() - started,
        )
        return ReadyVersion(
            name=name,
            version=version,
            path=path,
            fingerprint=fingerprint,
            bundle=bundle,
            executor=executor,
            policy=policy,
            batcher=batcher,
            device=str(runtime.device),
            adaptive=adaptive,
        )

    def _adaptive(self, name: str, policy: ExitPolicy, batcher: Batcher) -> LoadAdaptivePoint | None:
        """The load-adaptive default point, when a latency objective is set and the bundle is calibrated."""
        objective = self.settings.slo_p99_ms
        if objective is None or policy.default_point is None:
            return None
        gauge = self.metrics.operating_point  # look the child up per move: a reload replaces it
        return LoadAdaptivePoint(
            policy.points,
            policy.default_point,
            AdaptiveSettings(
                slo_p99_seconds=objective / 1000.0,
                window_seconds=self.settings.slo_window_s,
                dwell_seconds=self.settings.slo_dwell_s,
            ),
            on_change=lambda point: gauge.labels(name).set(point.expected_flops),
            busy_seconds=lambda: batcher.busy_seconds,
            admitted_images=lambda: batcher.admitted_images,
        )

    def _default_point(self, manifest: Manifest) -> str | None:
        wanted = self.settings.default_operating_point
        if wanted is None or manifest.calibration is None:
            return None
        if wanted not in {p.name for p in manifest.calibration.points}:
            logger.warning(
                "bundle %s/%s has no operating point %r; serving its own default %r",
                manifest.name,
                manifest.version,
                wanted,
                manifest.calibration.default_point,
            )
            return None
        return wanted

    def _publish(self) -> None:
        self.catalog = Catalog.of(
            (e.describe() for versions in self.snapshot().values() for e in versions),
            closed=self._closed,
            unloaded=set(self._unloaded),
        )
        served = []
        for versions in self.snapshot().values():
            ready = [v for v in versions if isinstance(v, ReadyVersion)]
            for entry in ready:
                plan = entry.plan(Budget())
                served.append((entry.manifest, _expected_flops(entry, plan.operating_point)))
        self.metrics.set_models(served)
        if self.on_publish is not None:
            self.on_publish()

    def _retire(self, entry: ReadyVersion) -> None:
        """Wait for the version's leases to end, then drain and close its batcher."""
        deadline = time.monotonic() + self.settings.graceful_shutdown_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if entry.leases == 0:
                    break
            time.sleep(0.01)
        entry.batcher.close(drain=True, timeout=self.settings.graceful_shutdown_seconds)
        logger.info("bundle %s/%s retired", entry.name, entry.version)

    def close(self) -> None:
        """Stop serving: drain every batcher (requests already queued finish)."""
        with self._reload_lock:
            self._closed = True
            self.catalog = Catalog.of(
                (e.describe() for versions in self.snapshot().values() for e in versions),
                loaded=self.loaded,
                closed=True,
                unloaded=set(self._unloaded),
            )
            with self._lock:
                entries = [e for versions in self._models.values() for e in versions.values()]
            for entry in entries:
                if isinstance(entry, ReadyVersion):
                    self._retire(entry)


def _fingerprint(path: Path) -> tuple[int, int]:
    """Changes when any file of the bundle changes (its time or size), not only the manifest: a stage
    file replaced in place is a changed version, loaded again (and its checksum checked) on reload."""
    try:
        files = sorted(
            (str(entry.relative_to(path)), stat.st_mtime_ns, stat.st_size)
            for entry in path.rglob("*")
            if entry.is_file() and (stat := entry.stat())
        )
    except OSError:
        return (0, 0)
    if not any(name == MANIFEST_FILE for name, _, _ in files):
        return (0, 0)
    return (max(mtime for _, mtime, _ in files), hash(tuple(files)))


def warm_up_sizes(device: torch.device, max_batch_size: int) -> list[int]:
    """The batch sizes a version is warmed up with before it serves.

    On a GPU every size the scheduler can hand a stage (1 to max_batch_size: new batches, survivors,
    and survivors merged across batches never exceed it): the CUDA provider picks convolution
    algorithms and allocates per new input shape, which would otherwise fall on a live request.
    On the CPU the first run of a session does the lazy work whatever the size: 1 and a small batch.
    """
    if device.type == "cuda":
        return list(range(1, max_batch_size + 1))
    return sorted({1, min(WARMUP_BATCH, max_batch_size)})


def _warm_up(executor: CascadeExecutor, sizes: list[int]) -> None:
    """Run batches of `sizes` through every stage so no request pays for lazy initialisation.

    Runs on the loading thread before the batcher exists, so the runtime still has one user and the
    warm-up images never reach the metrics. Thresholds of 1 keep every image to the last stage.
    """
    spec = executor.runtime.manifest.input
    exits = executor.num_exits
    for size in sizes:
        images = torch.zeros(size, spec.channels, spec.size, spec.size)
        thresholds = np.ones((size, exits), dtype=np.float32)
        caps = np.full(size, exits - 1, dtype=np.int64)
        # Watched rows go through the stages one by one; unwatched ones take the full-depth graph
        # where the runtime has one, so both are warm.
        cohort: Cohort | None = executor.start(
            images, thresholds, caps, np.arange(size), watched=np.ones(size, dtype=bool)
        )
        while cohort is not None:
            cohort = executor.step(cohort).survivors
        if executor.runtime.has_full_graph:
            executor.run(images, thresholds, caps)


def _expected_flops(entry: ReadyVersion, point_name: str) -> float:
    calibration = entry.manifest.calibration
    if calibration is not None:
        for point in calibration.points:
            if point.name == point_name:
                return point.expected_flops
    return float(entry.manifest.cumulative_flops[-1])
