"""What the engine serves, described for `GET /v1/models` (failed versions included, with their error)."""

from __future__ import annotations

from ranet_serve.api.v1.schemas import ExitInfo, InputInfo, ModelInfo, OperatingPointInfo, VersionInfo
from ranet_serve.engine.catalog import CatalogEntry, version_key


def describe_model(name: str, versions: list[CatalogEntry]) -> ModelInfo:
    ready = [v for v in versions if v.ready]
    latest = max(ready, key=lambda v: version_key(v.version)).version if ready else None
    return ModelInfo(name=name, default_version=latest, versions=[describe_version(v) for v in versions])


def describe_version(entry: CatalogEntry) -> VersionInfo:
    if entry.manifest is None:
        return VersionInfo(version=entry.version, state="failed", error=entry.error)
    manifest = entry.manifest
    spec = manifest.input
    calibration = manifest.calibration
    return VersionInfo(
        version=entry.version,
        state="ready",
        config=manifest.config.name,
        device=entry.device,
        num_classes=manifest.config.num_classes,
        input=InputInfo(
            channels=spec.channels,
            color_mode=spec.color_mode,
            size=spec.size,
            resize=spec.resize,
            mean=list(spec.mean),
            std=list(spec.std),
        ),
        labels=list(manifest.labels),
        exits=[
            ExitInfo(
                index=e.index,
                cumulative_flops=e.cumulative_flops,
                val_accuracy=e.val_accuracy,
                test_accuracy=e.test_accuracy,
            )
            for e in manifest.exits
        ],
        operating_points=[
            OperatingPointInfo(
                name=p.name,
                method=p.method,
                thresholds=list(p.thresholds),
                expected_flops=p.expected_flops,
                val_accuracy=p.val_accuracy,
                test_accuracy=p.test_accuracy,
                exit_distribution=list(p.exit_distribution),
            )
            for p in (calibration.points if calibration else ())
        ],
        default_operating_point=entry.default_point,
    )
