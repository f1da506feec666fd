"""`ranet calibrate`, `ranet evaluate` and `ranet model-card` end to end on a small real bundle.

Lives beside the API tests to share their cached tiny bundle (a 1x28x28 model, so the Debian
Fashion-MNIST data fits it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ranet_serve.cli import app
from ranet_serve.data.datasets import FASHION_MNIST_DIR
from ranet_serve.export.bundle import load_bundle

runner = CliRunner()
pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist missing"
)


def test_calibrate_stores_operating_points_and_evaluate_and_model_card_write_reports(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_bundle_dir, bundle_dir)
    result = runner.invoke(app, ["calibrate", str(bundle_dir), "--val-size", "500"])
    assert result.exit_code == 0, result.output
    assert "default operating point" in result.output
    bundle = load_bundle(bundle_dir)  # checksums cover the new evaluation files
    manifest = bundle.manifest
    calibration = manifest.calibration
    assert calibration is not None and len(calibration.points) == 79
    assert calibration.split == "fashion-mnist training set, 500 held out with seed 0"
    assert all(e.val_accuracy is not None and e.test_accuracy is not None for e in manifest.exits)
    assert calibration.last_exit_val_accuracy == manifest.exits[-1].val_accuracy
    assert {"evaluation/evaluation.json", "evaluation/accuracy_vs_flops.png"} <= set(manifest.files)

    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(bundle_dir), "--out", str(out), "--val-size", "500"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert len(report["anytime"]) == 6 and len(report["budgeted"]["geometric"]) == 39
    assert [a["test_accuracy"] for a in report["anytime"]] == [e.test_accuracy for e in manifest.exits]

    result = runner.invoke(app, ["model-card", str(bundle_dir), "--command", "ranet calibrate X"])
    assert result.exit_code == 0, result.output
    card = (bundle_dir / "MODEL_CARD.md").read_text()
    assert "ranet calibrate X" in card and "## Default operating point" in card
    load_bundle(bundle_dir)


def test_calibrate_refuses_a_split_that_differs_from_training(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "train.pt"
    torch.save({"val_indices": torch.arange(500)}, checkpoint)
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_bundle_dir, bundle_dir)
    result = runner.invoke(
        app, ["calibrate", str(bundle_dir), "--val-size", "500", "--train-checkpoint", str(checkpoint)]
    )
    assert result.exit_code == 1 and "differs from the one" in result.output


def test_model_card_states_total_and_median_epoch_time(tiny_bundle_dir: Path) -> None:
    from ranet_serve.train.model_card import render_model_card

    training = {
        "recipe": {"epochs": 3, "batch_size": 128, "threads": 2},
        "history": [{"seconds": 100.0}, {"seconds": 300.0}, {"seconds": 200.0}],  # one slowed epoch
        "epoch": 2,
    }
    manifest = load_bundle(tiny_bundle_dir).manifest
    card = render_model_card(manifest, commands=["ranet train"], training=training)
    assert "Wall time 10.0 min" in card and "median epoch 200 s" in card and "checkpoint of epoch 3" in card
