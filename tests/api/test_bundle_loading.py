"""Serving reads only the chosen backend's files (issue 21): an onnxruntime server never opens, hashes
or loads the TorchScript stages or the PyTorch checkpoint, and a TorchScript server never touches the
ONNX stages. Proved by replacing the unused files with garbage (or removing them): the bundle still
loads, warms up and answers, while `load_bundle` without a backend (export, verify, inspect) still
refuses the damaged bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

import ranet_serve.export.bundle as bundle_module
from helpers.server import RunningServer, settings_for
from ranet_serve.cascade.runtimes import create_runtime
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.engine.registry import ModelStore, ReadyVersion
from ranet_serve.errors import BundleError
from ranet_serve.export.bundle import load_bundle, runtime_files
from ranet_serve.metrics import EngineMetrics

GARBAGE = b"\x08\x07 not a model file " * 64
UNUSED = {"onnxruntime": "torchscript", "torchscript": "onnx"}


def _store_without_unused_files(template: Path, root: Path, backend: str, how: str) -> Path:
    """A store holding tiny/1 whose files `backend` does not read are garbage (`how`="garbage") or
    gone ("removed"): the other backend's stages and the checkpoint."""
    bundle_dir = root / "tiny" / "1"
    shutil.copytree(template, bundle_dir)
    manifest = load_bundle(bundle_dir).manifest
    unused = [stage.files[UNUSED[backend]] for stage in manifest.stages] + [manifest.checkpoint]  # type: ignore[index]
    for relative in unused:
        if how == "garbage":
            (bundle_dir / relative).write_bytes(GARBAGE)
        else:
            (bundle_dir / relative).unlink()
    return root


def _logits(bundle_dir: Path, backend: str, images: torch.Tensor) -> list[np.ndarray]:
    runtime = create_runtime(load_bundle(bundle_dir, backend=backend), backend, "cpu", 1)
    return run_all_stages(runtime, images)


@pytest.mark.parametrize("how", ["garbage", "removed"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_the_store_loads_a_bundle_whose_other_backend_files_are_unusable(
    tiny_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, how: str
) -> None:
    root = _store_without_unused_files(tiny_bundle_dir, tmp_path / "store", backend, how)
    hashed: list[str] = []
    real_sha256 = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p: hashed.append(p.name) or real_sha256(p))

    store = ModelStore(settings_for(root, backend=backend, warmup=True), EngineMetrics(CollectorRegistry()))
    try:
        store.load()
        entry = store.entry("tiny")
        assert isinstance(entry, ReadyVersion), store.snapshot()
        assert entry.executor.runtime.backend == backend
        extension = ".onnx" if backend == "onnxruntime" else ".ts"
        assert sorted(hashed) == sorted(f"stage_{k}{extension}" for k in range(6))
    finally:
        store.close()

    # The runtime computes what the intact bundle's runtime computes.
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    served = _logits(root / "tiny" / "1", backend, images)
    for got, want in zip(served, _logits(tiny_bundle_dir, backend, images), strict=True):
        np.testing.assert_array_equal(got, want)

    # Without a backend every listed file is required: the damaged bundle is refused.
    fragment = "checksum mismatch" if how == "garbage" else "missing file"
    with pytest.raises(BundleError, match=fragment):
        load_bundle(root / "tiny" / "1")


def test_runtime_files_name_only_what_each_backend_reads(tiny_bundle_dir: Path) -> None:
    manifest = load_bundle(tiny_bundle_dir).manifest
    assert runtime_files(manifest, "onnxruntime") == {f"stages/stage_{k}.onnx" for k in range(6)}
    assert runtime_files(manifest, "torchscript") == {f"stages/stage_{k}.ts" for k in range(6)}
    assert runtime_files(manifest, "eager") == {"checkpoint.pt"}
    with pytest.raises(ValueError, match="unknown backend"):
        runtime_files(manifest, "tensorrt")


def test_a_server_on_onnxruntime_answers_without_torchscript_stages_or_checkpoint(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    root = _store_without_unused_files(tiny_bundle_dir, tmp_path / "store", "onnxruntime", "garbage")
    server = RunningServer(settings_for(root, backend="onnxruntime")).start()
    try:
        with server.client() as client:
            response = client.post(
                "/v1/models/tiny/classify",
                files={"file": ("a.png", images[0], "image/png")},
                params={"operating_point": "full-depth"},  # every stage runs
            )
            assert response.status_code == 200, response.text
            (result,) = response.json()["results"]
            assert result["exit"] == 5 and result["label"]
    finally:
        server.stop()
