"""Checkpoints: the official fixture's logits, accepted layouts, clear errors, our own round trip."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor

from ranet_serve.model.checkpoint import (
    CheckpointError,
    load_model,
    normalize_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from ranet_serve.model.config import RANetConfig
from ranet_serve.model.ranet import RANet
from ranet_serve.model.registry import get_config


class NotAWeight:
    """A pickled instance of an arbitrary class: a weights-only load must refuse it."""

    def __init__(self) -> None:
        self.payload = "would run code on unpickling in a full load"


def _forward(model: RANet, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return model(x)


def _assert_logits_match(got: list[Tensor], expected: list[Tensor], atol: float = 1e-4) -> None:
    assert len(got) == len(expected)
    for out, ref in zip(got, expected, strict=True):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=atol, rtol=0)


def test_official_checkpoint_reproduces_the_official_logits_at_every_exit(official_fixture) -> None:
    model = load_model(official_fixture.checkpoint_path, get_config("cifar10-model1"))
    assert not model.training
    logits = _forward(model, official_fixture.input)
    assert [tuple(t.shape) for t in logits] == [tuple(s) for s in official_fixture.meta["logits_shapes"]]
    _assert_logits_match(logits, official_fixture.logits)


def test_official_checkpoint_layout_is_the_main_py_dict(official_fixture) -> None:
    raw = read_checkpoint(official_fixture.checkpoint_path)
    assert set(raw) == {"epoch", "arch", "state_dict", "best_prec1", "optimizer"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    state = normalize_state_dict(raw)
    assert len(state) == official_fixture.meta["state_dict_num_keys"] == 1284
    assert not any(k.startswith("module.") for k in state)


@pytest.mark.parametrize("prefixed", [True, False], ids=["module-prefix", "bare-keys"])
def test_bare_state_dict_loads_with_or_without_the_dataparallel_prefix(
    prefixed: bool, official_fixture, tmp_path: Path
) -> None:
    state = official_fixture.checkpoint["state_dict"]
    if not prefixed:
        state = OrderedDict((k.removeprefix("module."), v) for k, v in state.items())
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    model = load_model(path, get_config("cifar10-model1"))
    _assert_logits_match(_forward(model, official_fixture.input), official_fixture.logits)


def _save_modified(tmp_path: Path, checkpoint: dict, edit) -> Path:
    state = OrderedDict(checkpoint["state_dict"])
    edit(state)
    path = tmp_path / "edited.pth.tar"
    torch.save({**checkpoint, "state_dict": state}, path)
    return path


def test_wrong_shape_raises_checkpoint_error_naming_the_key_and_config(
    official_fixture, tmp_path: Path
) -> None:
    key = "module.scale_flows.1.0.conv_last.net.0.weight"

    def shrink(state: OrderedDict) -> None:
        state[key] = torch.zeros(13, 112, 1, 1)

    path = _save_modified(tmp_path, official_fixture.checkpoint, shrink)
    with pytest.raises(CheckpointError) as info:
        load_model(path, get_config("cifar10-model1"))
    message = str(info.value)
    assert "'cifar10-model1'" in message
    assert (
        "1 keys with wrong shapes, first: scale_flows.1.0.conv_last.net.0.weight "
        "(checkpoint (13, 112, 1, 1), model (14, 112, 1, 1))"
    ) in message
    assert "missing" not in message


def test_missing_key_raises_checkpoint_error_naming_the_first_missing_key(
    official_fixture, tmp_path: Path
) -> None:
    def drop(state: OrderedDict) -> None:
        del state["module.classifier.3.linear.bias"]
        del state["module.FirstLayer.layers.1.net.1.running_var"]

    path = _save_modified(tmp_path, official_fixture.checkpoint, drop)
    with pytest.raises(CheckpointError) as info:
        load_model(path, get_config("cifar10-model1"))
    message = str(info.value)
    assert "checkpoint does not fit config 'cifar10-model1'" in message
    assert "2 missing keys, first: classifier.3.linear.bias, FirstLayer.layers.1.net.1.running_var" in message


def test_unexpected_key_raises_checkpoint_error(official_fixture, tmp_path: Path) -> None:
    def add(state: OrderedDict) -> None:
        state["module.classifier.6.linear.bias"] = torch.zeros(10)

    path = _save_modified(tmp_path, official_fixture.checkpoint, add)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys, first: classifier\.6\.linear\.bias"):
        load_model(path, get_config("cifar10-model1"))


def test_checkpoint_for_another_config_is_rejected_with_config_name(official_fixture) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"does not fit config 'cifar100-model1'.*wrong shapes, first: "
        r"classifier\.0\.linear\.weight \(checkpoint \(10, 128\), model \(100, 128\)\)",
    ):
        load_model(official_fixture.checkpoint_path, get_config("cifar100-model1"))


def test_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint .*nowhere\.pt does not exist"):
        load_model(tmp_path / "nowhere.pt", get_config("cifar10-model1"))


def test_non_dict_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match=r"holds a list, not a dict"):
        load_model(path, get_config("cifar10-model1"))


def test_garbage_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*garbage\.pt"):
        load_model(path, get_config("cifar10-model1"))


def test_checkpoint_with_arbitrary_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*unsafe\.pt") as refused:
        read_checkpoint(path)
    # What the unpickler found, without torch's advice to retry with weights_only=False.
    assert "NotAWeight" in str(refused.value) and "weights_only" not in str(refused.value)


def test_state_dict_with_a_non_tensor_entry_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": {"module.w": torch.zeros(1), "module.step": 3}}, path)
    with pytest.raises(CheckpointError, match=r"state_dict entry 'module\.step' is a int, not a tensor"):
        load_model(path, get_config("cifar10-model1"))


def test_empty_state_dict_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="checkpoint has no state_dict"):
        load_model(path, get_config("cifar10-model1"))


def test_official_checkpoint_without_a_config_asks_for_one(official_fixture) -> None:
    with pytest.raises(CheckpointError, match="does not record its config"):
        load_model(official_fixture.checkpoint_path)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_save_and_load_round_trip_recovers_config_and_identical_logits(
    tiny_model: RANet, tiny_config: RANetConfig, tmp_path: Path
) -> None:
    # train a step's worth of BN statistics so the buffers are not at their defaults
    tiny_model.train()
    tiny_model(torch.randn(4, 3, 32, 32))
    tiny_model.eval()
    path = tmp_path / "nested" / "tiny.pt"
    save_checkpoint(path, tiny_model, epoch=3, best_prec1=12.5)

    loaded = load_model(path)
    assert loaded.config == tiny_config
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    for ours, theirs in zip(_forward(tiny_model, x), _forward(loaded, x), strict=True):
        assert torch.equal(ours, theirs)
    assert not list(path.parent.glob("*.tmp"))


def test_saved_checkpoint_is_plain_data_loadable_with_weights_only(tiny_model: RANet, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_model, epoch=7)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "ranet-serve-checkpoint/1"
    assert raw["epoch"] == 7
    assert isinstance(raw["config"], dict)
    assert RANetConfig.model_validate(raw["config"]) == tiny_model.config
    assert list(raw["state_dict"]) == list(tiny_model.state_dict())


def test_imported_official_checkpoint_round_trips_through_our_format(
    official_fixture, tmp_path: Path
) -> None:
    model = load_model(official_fixture.checkpoint_path, get_config("cifar10-model1"))
    path = tmp_path / "imported.pt"
    save_checkpoint(path, model)
    reloaded = load_model(path)
    assert reloaded.config == get_config("cifar10-model1")
    _assert_logits_match(_forward(reloaded, official_fixture.input), official_fixture.logits)


def test_explicit_config_wins_over_the_stored_one(tiny_model: RANet, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_model)
    renamed = tiny_model.config.model_copy(update={"name": "renamed"})
    assert load_model(path, renamed).config.name == "renamed"
    with pytest.raises(CheckpointError, match="does not fit config 'cifar10-model1'"):
        load_model(path, get_config("cifar10-model1"))
