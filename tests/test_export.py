"""Stage export: ONNX and TorchScript stages reproduce every exit of the PyTorch model, the official
fixture survives import -> export -> verify, and damaged bundles are refused with a precise message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers.fixtures import official_fixtures_dir
from ranet_serve.cascade.runtimes import OnnxRuntime, TorchScriptRuntime
from ranet_serve.cascade.verify import run_all_stages
from ranet_serve.cli import app
from ranet_serve.errors import BundleError
from ranet_serve.export.bundle import load_bundle, write_bundle
from ranet_serve.export.defaults import default_input_spec, default_labels
from ranet_serve.model.checkpoint import load_model
from ranet_serve.model.config import RANetConfig, load_config
from ranet_serve.model.ranet import RANet

runner = CliRunner()

CONFIGS = {
    "cifar10-model1": load_config("cifar10-model1"),
    "cifar10-anytime": load_config("cifar10-anytime"),
    # ImageNet-shaped (7x7/2 stem + max-pool, square classifier convs, 4 resolutions), shrunk to export fast.
    "imagenet-small": load_config(
        "imagenet-model1",
        name="imagenet-small",
        n_channels=8,
        growth_rate=4,
        step=2,
        image_size=160,
        num_classes=20,
    ),
}


def calibrated_model(config: RANetConfig, seed: int = 0) -> RANet:
    """Random weights with batch-norm statistics from random data, so activations stay O(1)."""
    torch.manual_seed(seed)
    model = RANet(config).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, config.in_channels, config.image_size, config.image_size))
    return model.eval()


@pytest.fixture(scope="session")
def official_bundle(official_fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official cifar10-model1 checkpoint exported through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("official") / "cifar10" / "1"
    result = runner.invoke(
        app,
        ["export", str(official_fixture.checkpoint_path), "--config", "cifar10-model1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session", params=list(CONFIGS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(PyTorch model, its exported bundle) per config.

    cifar10-model1 is the official checkpoint's CLI export when the fixtures are there (one export of
    that config, not two: about 25 s of the suite), and random weights through `write_bundle` otherwise.
    """
    config = CONFIGS[request.param]
    if request.param == "cifar10-model1" and official_fixtures_dir() is not None:
        official = request.getfixturevalue("official_fixture")
        bundle_dir = request.getfixturevalue("official_bundle")
        return load_model(official.checkpoint_path, config).eval(), load_bundle(bundle_dir)
    model = calibrated_model(config)
    out = tmp_path_factory.mktemp("bundles") / request.param / "1"
    write_bundle(
        model,
        out,
        name=request.param,
        version="1",
        input_spec=default_input_spec(config),
        labels=default_labels(config),
    )
    return model, load_bundle(out)


@pytest.mark.parametrize("batch", [1, 37])
def test_onnx_and_torchscript_stages_match_pytorch_at_every_exit(exported, batch: int) -> None:
    model, bundle = exported
    config = model.config
    images = torch.randn(
        batch,
        config.in_channels,
        config.image_size,
        config.image_size,
        generator=torch.Generator().manual_seed(batch),
    )
    with torch.no_grad():
        reference = model(images)
    for runtime in (OnnxRuntime(bundle, threads=1), TorchScriptRuntime(bundle)):
        logits = run_all_stages(runtime, images)
        assert len(logits) == config.num_exits
        for k, (got, want) in enumerate(zip(logits, reference, strict=True)):
            assert got.shape == (batch, config.num_classes)
            diff = float(np.abs(got - want.numpy()).max())
            assert diff <= 1e-4, f"{runtime.backend} exit {k}: {diff}"


def test_manifest_describes_stages_state_and_flops(exported) -> None:
    model, bundle = exported
    manifest = bundle.manifest
    from ranet_serve.model.flops import count_exit_costs

    costs = count_exit_costs(model)
    assert [e.cumulative_flops for e in manifest.exits] == [c.flops for c in costs]
    assert sum(s.flops for s in manifest.stages) == costs[-1].flops
    produced = {t.name for t in manifest.tensors}
    for stage in manifest.stages:
        assert set(stage.inputs) <= produced
        assert stage.outputs[0] == f"logits_{stage.index}"
        for name in stage.inputs:
            tensor = manifest.tensor(name)
            assert tensor.last_reader_stage is not None and tensor.last_reader_stage >= stage.index
            assert tensor.bytes_per_image == 4 * int(torch.tensor(tensor.shape).prod())
    assert set(manifest.files) == {
        p.relative_to(bundle.path).as_posix()
        for p in bundle.path.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }


def test_onnx_stages_read_coarse_carriers_whole(exported) -> None:
    # Split cost (issue 3): slicing coarse states out of their carriers inside a stage was most of
    # the overhead of running stages in sequence; fusion layers read the carriers whole instead.
    import onnx

    _, bundle = exported
    for stage in bundle.manifest.stages:
        graph = onnx.load(str(bundle.stage_file(stage.index, "onnx"))).graph
        sliced = [node.name for node in graph.node if node.op_type == "Slice"]
        assert not sliced, f"stage {stage.index} slices: {sliced}"


def test_cifar_model1_stage_plan_matches_the_spec(tmp_path: Path) -> None:
    # Spec section 6: what each stage of CIFAR model 1 needs from earlier stages (minimal carriers).
    from ranet_serve.model.stages import last_readers, plan_stages

    model = RANet(load_config("cifar10-model1"))
    stages = plan_stages(model.layout)
    assert [s.inputs for s in stages] == [
        ("image",),
        ("state_0_0",),
        ("base_1", "state_0_0", "state_0_1"),
        ("state_1_2",),
        ("base_2", "state_1_0", "state_1_1_pre", "state_1_1", "state_1_2", "state_1_3"),
        ("state_2_4",),
    ]
    assert last_readers(stages)["state_0_0"] == 2 and last_readers(stages)["state_1_2"] == 4
    env = {"image": torch.zeros(1, 3, 32, 32)}
    from ranet_serve.model.stages import build_stages

    with torch.no_grad():
        for stage in build_stages(model.eval()):
            env.update(zip(stage.spec.outputs, stage(*(env[n] for n in stage.spec.inputs)), strict=True))
    shapes = {name: tuple(t.shape[1:]) for name, t in env.items()}
    assert shapes["state_0_0"] == (112, 8, 8) and shapes["state_0_1"] == (208, 8, 8)
    assert shapes["base_1"] == (32, 16, 16) and shapes["base_2"] == (16, 32, 32)
    assert shapes["state_1_2"] == (145, 8, 8) and shapes["state_1_3"] == (241, 8, 8)
    assert shapes["state_1_0"] == (56, 16, 16)
    assert shapes["state_1_1_pre"] == (106, 16, 16) and shapes["state_1_1"] == (118, 8, 8)
    assert shapes["state_2_4"] == (146, 8, 8)


def test_official_checkpoint_survives_export_and_verify(official_bundle: Path, official_fixture) -> None:
    result = runner.invoke(app, ["verify", str(official_bundle)])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "onnxruntime" in result.output and "torchscript" in result.output
    logits = run_all_stages(OnnxRuntime(load_bundle(official_bundle)), official_fixture.input)
    for got, want in zip(logits, official_fixture.logits, strict=True):
        assert float(np.abs(got - np.asarray(want)).max()) <= 1e-4
    inspect = runner.invoke(app, ["inspect", str(official_bundle)])
    assert inspect.exit_code == 0 and "58.921" in inspect.output and "not calibrated" in inspect.output


def _damage(bundle: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / "damaged" / "1"
    shutil.copytree(bundle, copy)
    manifest_path = copy / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    if how == "missing":
        (copy / "stages" / "stage_3.onnx").unlink()
    elif how == "checksum":
        path = copy / "stages" / "stage_2.ts"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "format":
        raw["format_version"] = 99
        manifest_path.write_text(json.dumps(raw))
    elif how == "json":
        manifest_path.write_text(manifest_path.read_text()[:-40])
    elif how == "labels":
        raw["labels"] = raw["labels"][:3]
        manifest_path.write_text(json.dumps(raw))
    elif how == "escape":
        raw["files"]["../outside.bin"] = "0" * 64
        manifest_path.write_text(json.dumps(raw))
    elif how == "no-manifest":
        manifest_path.unlink()
    return copy


@pytest.mark.parametrize(
    ("how", "fragment"),
    [
        ("missing", r"stage_3\.onnx: missing file"),
        ("checksum", r"stage_2\.ts: checksum mismatch"),
        ("format", r"manifest\.json: unknown format_version 99"),
        ("json", r"manifest\.json: malformed JSON"),
        ("labels", r"manifest\.json: invalid manifest .*3 labels for a 10-class model"),
        ("escape", r"escapes the bundle"),
        ("no-manifest", r"manifest\.json: missing"),
    ],
)
def test_damaged_bundles_are_refused_naming_file_and_problem(
    official_bundle: Path, tmp_path: Path, how: str, fragment: str
) -> None:
    damaged = _damage(official_bundle, tmp_path, how)
    with pytest.raises(BundleError, match=fragment):
        load_bundle(damaged)
    result = runner.invoke(app, ["verify", str(damaged)])
    assert result.exit_code == 1 and "error:" in result.output
