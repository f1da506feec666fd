"""`ranet-client` against the real server: tables, --json, exit codes, and a short load run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from ranet_client import ModelInfo
from ranet_client.cli import app
from ranet_client.image_sets import Sample
from typer.testing import CliRunner

LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "160", "RANET_URL": None})


@pytest.fixture
def image_files(tmp_path: Path, samples: list[Sample]) -> list[Path]:
    paths = []
    for sample in samples[:3]:
        path = tmp_path / sample.name
        path.write_bytes(sample.data)
        paths.append(path)
    return paths


def test_classify_prints_a_table_row_per_image(
    runner: CliRunner, server_url: str, image_files: list[Path]
) -> None:
    result = runner.invoke(app, ["classify", *map(str, image_files), "--url", server_url, "--batch", "2"])
    assert result.exit_code == 0, result.output
    for header in ("image", "label", "confidence", "exit", "MFLOPs", "budget-limited"):
        assert header in result.stdout
    for path in image_files:
        assert path.name in result.stdout
    assert "tiny v2 (balanced)" in result.stdout
    assert sum(result.stdout.count(label) for label in LABELS) >= len(image_files)


def test_classify_json_carries_every_field_and_honours_the_budget(
    runner: CliRunner, server_url: str, image_files: list[Path], tiny_info: ModelInfo
) -> None:
    cap = tiny_info.latest.exits[1].cumulative_flops  # type: ignore[union-attr]
    args = ["classify", *map(str, image_files), "--url", server_url, "--json", "--confidence", "1"]
    result = runner.invoke(app, [*args, "--max-flops", str(cap), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["model"] == "tiny" and len(document["results"]) == len(image_files)
    for path, entry in zip(image_files, document["results"], strict=True):
        assert entry["image"] == str(path)
        assert entry["exit"] == 1 and entry["flops"] == cap and entry["budget_limited"] is True
        assert len(entry["top_k"]) == 3 and entry["label"] in LABELS
    assert len(document["timings"]) == 1


def test_classify_reports_server_errors_and_exits_1(
    runner: CliRunner, server_url: str, image_files: list[Path]
):
    result = runner.invoke(app, ["classify", str(image_files[0]), "--url", server_url, "--max-flops", "1"])
    assert result.exit_code == 1
    assert "invalid_budget" in result.stderr and "422" in result.stderr


def test_models_lists_versions_and_shows_one_model(
    runner: CliRunner, server_url: str, tiny_info: ModelInfo
) -> None:
    listing = runner.invoke(app, ["models", "--url", server_url])
    assert listing.exit_code == 0, listing.output
    assert "tiny" in listing.stdout and "balanced" in listing.stdout and "ready" in listing.stdout
    one = runner.invoke(app, ["models", "tiny", "--url", server_url])
    assert one.exit_code == 0, one.output
    assert "exits" in one.stdout and "operating points" in one.stdout and "full-depth" in one.stdout
    # The server sends accuracies in percent: shown as they are, not multiplied again.
    for point in tiny_info.latest.operating_points:  # type: ignore[union-attr]
        assert 0 <= point.val_accuracy <= 100 and f"{point.val_accuracy:.2f}%" in one.stdout
    as_json = runner.invoke(app, ["models", "--url", server_url, "--json"])
    assert json.loads(as_json.stdout)["default_model"] == "tiny"
    missing = runner.invoke(app, ["models", "nope", "--url", server_url])
    assert missing.exit_code == 1 and "404" in missing.stderr


def test_health_exit_code_follows_readiness(runner: CliRunner, server_url: str) -> None:
    result = runner.invoke(app, ["health", "--url", server_url])
    assert result.exit_code == 0, result.output
    assert "ready: yes" in result.stdout and "tiny" in result.stdout
    as_json = runner.invoke(app, ["health", "--url", server_url, "--json"])
    assert json.loads(as_json.stdout) == {
        "live": True,
        "ready": True,
        "status": "ready",
        "models": {"tiny": ["1", "2"]},
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = runner.invoke(app, ["health", "--url", dead])
    assert down.exit_code == 1 and "cannot reach" in down.stderr


def test_load_prints_the_report_and_writes_json(runner: CliRunner, server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = ["load", "--url", server_url, "-n", "12", "-c", "3", "--batch", "2", "--json-out", str(out)]
    result = runner.invoke(app, [*args, "--budget-mix", "none:0.5,operating_point=fast:0.5"])
    assert result.exit_code == 0, result.output
    for title in ("exit distribution", "by budget", "latency p99", "throughput", "accuracy"):
        assert title in result.stdout
    report = json.loads(out.read_text())
    assert report["requests_ok"] == 12 and report["images_ok"] == 24 and report["labelled_images"] == 24
    assert sum(report["exit_counts"].values()) == 24
    assert set(report["by_budget"]) == {"none", "operating_point=fast"}


def test_load_rejects_bad_options_before_sending(runner: CliRunner, server_url: str) -> None:
    bad_mix = runner.invoke(app, ["load", "--url", server_url, "--budget-mix", "max_flop=20M"])
    assert bad_mix.exit_code == 2 and "unknown knob" in bad_mix.output
    both = runner.invoke(app, ["load", "--url", server_url, "--rate", "5", "--concurrency", "2"])
    assert both.exit_code == 2


def test_version_flag(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("ranet-client ")
