"""`ranet configs | flops | import` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ranet_serve.cli import app
from ranet_serve.model.checkpoint import load_model
from ranet_serve.model.registry import get_config, list_configs

runner = CliRunner()


def _flat(text: str) -> str:
    """Collapse rich's line wrapping so messages can be matched as one line."""
    return " ".join(text.split())


def test_configs_lists_every_registered_config_with_its_exits() -> None:
    result = runner.invoke(app, ["configs"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.strip().startswith("│ ")}
    for name in list_configs():
        assert name in rows
        assert f" {get_config(name).num_exits} " in rows[name]
    assert "58.921" in rows["cifar10-model1"]
    assert "2.548" in rows["cifar10-model1"]


def test_flops_json_gives_the_official_counter_integers(official_fixture) -> None:
    result = runner.invoke(app, ["flops", "cifar10-model1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["exit"] for row in rows] == list(range(6))
    assert [row["flops"] for row in rows] == [
        int(f) for f in official_fixture.meta["official_op_counter_flops_per_exit_cumulative"]
    ]
    assert [row["params"] for row in rows] == official_fixture.meta[
        "official_op_counter_params_per_exit_cumulative"
    ]


def test_flops_table_shows_cumulative_and_stage_flops() -> None:
    result = runner.invoke(app, ["flops", "cifar10-model1"])
    assert result.exit_code == 0, result.output
    assert "58,921,020" in result.output  # cumulative at the last exit
    assert "5,695,242" in result.output  # the last stage alone
    assert "2,547,601" in result.output


def test_flops_accepts_a_config_json_file(tmp_path: Path) -> None:
    path = tmp_path / "model1.json"
    path.write_text(get_config("cifar100-model1").to_json())
    result = runner.invoke(app, ["flops", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[-1]["flops"] == 58_921_020 + 6 * (90 * 128 + 90)


def test_flops_of_an_unknown_config_fails() -> None:
    result = runner.invoke(app, ["flops", "cifar10-model9"])
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "known configs" in result.output


def test_import_writes_a_checkpoint_that_loads_without_a_config(official_fixture, tmp_path: Path) -> None:
    out = tmp_path / "imported" / "cifar10-model1.pt"
    result = runner.invoke(
        app,
        ["import", str(official_fixture.checkpoint_path), "--config", "cifar10-model1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "cifar10-model1 (6 exits)" in _flat(result.output)

    model = load_model(out)
    assert model.config == get_config("cifar10-model1")
    with torch.no_grad():
        logits = model(official_fixture.input)
    for got, ref in zip(logits, official_fixture.logits, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["source"] == str(official_fixture.checkpoint_path)


@pytest.mark.parametrize("config", ["cifar10-model2", "cifar10-anytime"])
def test_import_with_the_wrong_config_exits_1_naming_missing_and_unexpected_keys(
    config: str, official_fixture, tmp_path: Path
) -> None:
    out = tmp_path / "wrong.pt"
    result = runner.invoke(
        app, ["import", str(official_fixture.checkpoint_path), "--config", config, "--out", str(out)]
    )
    assert result.exit_code == 1
    message = _flat(result.output)
    assert message.startswith("error: checkpoint does not fit config")
    assert f"'{config}'" in message
    assert "missing keys, first:" in message
    assert "unexpected keys, first:" in message or "wrong shapes, first:" in message
    assert not out.exists()


def test_import_of_a_missing_file_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.pth.tar"
    result = runner.invoke(
        app, ["import", str(missing), "--config", "cifar10-model1", "--out", str(tmp_path / "x.pt")]
    )
    assert result.exit_code == 1
    assert "does not exist" in _flat(result.output)
