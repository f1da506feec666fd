"""`ranet verify` judges parity relative to the scale of the logits (issue 21).

An untrained ImageNet RANet's logits grow layer by layer, and float32 rounding differences grow with
them, so a bundle that is correct differs from PyTorch by far more than any absolute bound at its later
exits. The rule tested here: max|got - want| / max(max|want|, 1) <= 1e-4 per exit and batch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ranet_serve.cascade.verify import SCALE_FLOOR, TOLERANCE, compare_exit, verify_bundle
from ranet_serve.cli import app
from ranet_serve.export.bundle import load_bundle, write_manifest
from ranet_serve.model.config import load_config
from ranet_serve.model.ranet import RANet

runner = CliRunner()

# ImageNet-shaped (224 px, 7x7/2 stem + max-pool, 4 resolutions, square classifier convs) but narrow
# and short (4 exits), so the module's one export takes seconds rather than minutes.
NARROW = {"n_channels": 8, "growth_rate": 4, "step": 1, "n_blocks": 1, "block_step": 1, "num_classes": 10}
LOGIT_GAIN = 1e4  # classifier weights scaled up: logits of 1e2 to 1e5, as an untrained deep net's grow
PERTURBED_EXIT = 2


def _logits(scale: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((8, 10)) * scale).astype(np.float32)


# -- the rule, on synthetic logits ---------------------------------------------------------------------


def test_large_logits_pass_with_a_small_relative_error_an_absolute_bound_would_fail() -> None:
    want = _logits(1e3)
    got = want + (1e-6 * np.abs(want).max()) * _logits(1.0, seed=1)
    parity = compare_exit("onnxruntime", "random", 3, got, want)
    assert parity.scale == pytest.approx(float(np.abs(want).max()))
    assert parity.max_abs_diff > 1e-4  # the old absolute tolerance would have failed this exit
    assert parity.relative_diff == pytest.approx(parity.max_abs_diff / parity.scale)
    assert parity.relative_diff < 1e-5 and parity.ok


def test_an_error_of_one_percent_of_the_scale_fails() -> None:
    want = _logits(1e3)
    got = want.copy()
    got[4, 7] += 0.01 * np.abs(want).max()
    parity = compare_exit("torchscript", "random", 5, got, want)
    assert parity.relative_diff == pytest.approx(0.01, rel=1e-3)
    assert not parity.ok
    assert compare_exit("torchscript", "random", 5, got, want, tolerance=0.02).ok


def test_all_zero_logits_are_judged_against_the_absolute_floor() -> None:
    want = np.zeros((4, 10), dtype=np.float32)
    exact = compare_exit("onnxruntime", "random", 0, want.copy(), want)
    assert exact.scale == 0.0 and exact.relative_diff == 0.0 and exact.ok
    noise = compare_exit("onnxruntime", "random", 0, want + 5e-5, want)
    assert noise.relative_diff == pytest.approx(5e-5 / SCALE_FLOOR, rel=1e-3) and noise.ok
    assert not compare_exit("onnxruntime", "random", 0, want + 2e-4, want).ok


def test_small_logits_keep_the_old_absolute_bound() -> None:
    want = _logits(0.1)  # scale below the floor: the rule is max|diff| <= 1e-4
    assert compare_exit("onnxruntime", "random", 0, want + 0.9 * TOLERANCE, want).ok
    assert not compare_exit("onnxruntime", "random", 0, want + 1.5 * TOLERANCE, want).ok


def test_nan_logits_never_pass_and_shapes_must_agree() -> None:
    want = _logits(1.0)
    got = want.copy()
    got[0, 0] = np.nan
    assert not compare_exit("onnxruntime", "random", 0, got, want).ok
    with pytest.raises(ValueError, match="shape"):
        compare_exit("onnxruntime", "random", 0, want[:, :5], want)


# -- `ranet export` + `ranet verify` of a narrow ImageNet-shaped official checkpoint -------------------


@pytest.fixture(scope="module")
def narrow_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-format checkpoint (DataParallel keys) of the narrow config with fresh batch-norm
    statistics and amplified classifiers, exported with `ranet export --config <json file>`."""
    root = tmp_path_factory.mktemp("narrow-imagenet")
    config = load_config("imagenet-model1", name="imagenet-narrow", **NARROW)
    config_file = root / "imagenet-narrow.json"
    config_file.write_text(config.to_json())
    torch.manual_seed(0)
    model = RANet(config).eval()
    with torch.no_grad():
        for head in model.classifier:
            head.linear.weight.mul_(LOGIT_GAIN)
    checkpoint = root / "model_best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    out = root / "store" / "imagenet-narrow" / "1"
    result = runner.invoke(app, ["export", str(checkpoint), "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_verify_passes_a_narrow_imagenet_bundle_whose_logits_are_large(narrow_bundle: Path) -> None:
    bundle = load_bundle(narrow_bundle)
    assert bundle.manifest.input.size == 224 and len(bundle.manifest.exits) == 4
    spec = bundle.manifest.input
    images = torch.randn(8, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    results = verify_bundle(bundle, {"random": images})
    assert [(r.backend, r.exit) for r in results] == [
        (backend, k) for backend in ("onnxruntime", "torchscript") for k in range(4)
    ]
    assert all(r.ok for r in results), [(r.backend, r.exit, r.relative_diff) for r in results]
    assert max(r.scale for r in results) > 1e3
    assert max(r.max_abs_diff for r in results) > 1e-4  # an absolute 1e-4 would have failed it
    assert max(r.relative_diff for r in results) < 1e-5  # float32 noise: 30x inside the tolerance

    result = runner.invoke(app, ["verify", str(narrow_bundle)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "rule: rel diff = max |diff| / max(scale, 1), scale = max |logit| of PyTorch" in result.output
    assert "an exit passes at rel diff <= 1.0e-04" in result.output
    header = next(line for line in result.output.splitlines() if "backend" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "backend",
        "inputs",
        "exit",
        "max |diff|",
        "scale",
        "rel diff",
        "ok",
    ]
    assert "verified: checksums and parity ok" in result.output


def test_verify_fails_exactly_the_exit_whose_stage_differs(narrow_bundle: Path, tmp_path: Path) -> None:
    """The checkpoint (PyTorch's side) has exit 2's classifier 1% off: the exported stage 2 no longer
    matches it, by 1e-2 of the scale, and every other exit still does."""
    copy = tmp_path / "imagenet-narrow" / "1"
    shutil.copytree(narrow_bundle, copy)
    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    state[f"classifier.{PERTURBED_EXIT}.linear.weight"].mul_(1.01)
    torch.save(state, copy / "checkpoint.pt")
    write_manifest(copy, load_bundle(copy, verify_checksums=False).manifest)

    result = runner.invoke(app, ["verify", str(copy)], terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "2 of 8 exit checks differ" in result.output
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.output.splitlines()]
    failed = {(row[0], row[2]) for row in rows if row[-1] == "NO"}
    assert failed == {("onnxruntime", str(PERTURBED_EXIT)), ("torchscript", str(PERTURBED_EXIT))}
    # A tolerance wider than the 1% error lets it through: the option is relative too.
    loose = runner.invoke(app, ["verify", str(copy), "--tolerance", "0.05"], terminal_width=200)
    assert loose.exit_code == 0, loose.output
    assert "rel diff <= 5.0e-02" in loose.output


def test_verify_tolerance_option_appears_in_help() -> None:
    result = runner.invoke(app, ["verify", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--tolerance" in result.output
