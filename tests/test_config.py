"""RANetConfig: validation with clear messages, registry lookups, JSON round trips, official args."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ranet_serve.model.config import RANetConfig, load_config
from ranet_serve.model.registry import get_config, list_configs

EXPECTED_CONFIGS = [
    "cifar10-anytime",
    "cifar10-model1",
    "cifar10-model2",
    "cifar10-model3",
    "cifar100-anytime",
    "cifar100-model1",
    "cifar100-model2",
    "cifar100-model3",
    "fmnist-default",
    "imagenet-model1",
    "imagenet-model2",
]


def test_registry_lists_every_published_config_sorted() -> None:
    assert list_configs() == EXPECTED_CONFIGS


@pytest.mark.parametrize(
    ("name", "exits", "blocks", "lowest", "classes"),
    [
        ("cifar10-model1", 6, (2, 4, 6), 8, 10),
        ("cifar100-model1", 6, (2, 4, 6), 8, 100),
        ("cifar10-model2", 8, (2, 4, 6, 8), 8, 10),
        ("cifar10-model3", 8, (2, 4, 6, 8), 8, 10),
        ("cifar10-anytime", 8, (2, 4, 6, 8), 8, 10),
        ("imagenet-model1", 8, (2, 4, 6, 8), 7, 1000),
        ("imagenet-model2", 8, (2, 4, 6, 8), 7, 1000),
        ("fmnist-default", 6, (2, 4, 6), 7, 10),
    ],
)
def test_registered_config_derives_exits_blocks_and_lowest_resolution(
    name: str, exits: int, blocks: tuple[int, ...], lowest: int, classes: int
) -> None:
    config = get_config(name)
    assert config.name == name
    assert config.num_exits == exits
    assert config.blocks_per_scale == blocks
    assert config.lowest_resolution == lowest
    assert config.num_classes == classes


def test_published_configs_carry_the_official_cli_numbers() -> None:
    model1 = get_config("cifar10-model1")
    assert (model1.step, model1.step_mode, model1.scale_list, model1.gr_factor, model1.bn_factor) == (
        2,
        "lg",
        (1, 2, 3),
        (4, 2, 1),
        (4, 2, 1),
    )
    anytime = get_config("cifar100-anytime")
    assert (anytime.step, anytime.step_mode, anytime.scale_list, anytime.gr_factor) == (
        4,
        "even",
        (1, 2, 3, 3),
        (4, 2, 1, 1),
    )
    imagenet = get_config("imagenet-model2")
    assert (imagenet.family, imagenet.image_size, imagenet.n_channels, imagenet.growth_rate) == (
        "imagenet",
        224,
        64,
        16,
    )
    assert imagenet.stem_resolution == 56
    assert get_config("imagenet-model1").n_channels == 32


def test_lg_mode_grows_layers_linearly_and_even_mode_keeps_step() -> None:
    lg = get_config("cifar10-model1")
    assert [lg.layers_at(j) for j in range(6)] == [2, 4, 6, 8, 10, 12]
    even = get_config("cifar10-anytime")
    assert [even.layers_at(j) for j in range(8)] == [4] * 8


def test_unknown_config_name_raises_value_error_listing_known_names() -> None:
    with pytest.raises(ValueError, match="unknown RANet config 'cifar10-model9'") as info:
        get_config("cifar10-model9")
    for name in EXPECTED_CONFIGS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="known configs: cifar10-anytime"):
        load_config("resnet50")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gr_factor": (4, 2)}, r"gr_factor \(2 entries\), bn_factor \(3\) and scale_list \(3\)"),
        ({"bn_factor": (4, 2, 1, 1)}, r"need one entry per sub-network"),
        ({"scale_list": (2, 3, 4)}, r"must start at resolution index 1"),
        ({"scale_list": (1, 3, 4)}, r"keep or double the resolution"),
        ({"scale_list": (1, 2, 1)}, r"keep or double the resolution"),
        ({"scale_list": (1, 1, 2)}, r"repeats the lowest resolution"),
        ({"image_size": 16}, r"image_size 16 gives a 4x4 lowest resolution"),
        ({"image_size": 64}, r"image_size 64 gives a 16x16 lowest resolution"),
        ({"compress_factor": 0.1}, r"sub-network 2: growth 6 with compress_factor 0.1 leaves 0 channels"),
        ({"reduction": 0.005}, r"sub-network 1 block 1: reduction 0.005 .* leave a layer with 0 channels"),
        ({"growth_rate": 1, "gr_factor": (4, 2, 1)}, r"sub-network 1: growth 2 .* leaves 0 channels"),
        ({"gr_factor": (4, 0, 1)}, r"gr_factor and bn_factor entries must be >= 1"),
        ({"scale_list": ()}, r"at least one sub-network"),
        ({"step": 0}, r"step\n.*greater than or equal to 1"),
        ({"step_mode": "exp"}, r"step_mode\n.*'even' or 'lg'"),
        ({"compress_factor": 1.0}, r"compress_factor\n.*less than 1"),
        ({"num_classes": 1}, r"num_classes\n.*greater than or equal to 2"),
        ({"growthRate": 6}, r"growthRate\n.*Extra inputs are not permitted"),
    ],
)
def test_invalid_config_raises_validation_error_saying_what_is_wrong(
    overrides: dict[str, object], message: str
) -> None:
    base = get_config("cifar10-model1").model_dump()
    with pytest.raises(ValidationError, match=message) as info:
        RANetConfig.model_validate({**base, **overrides})
    assert isinstance(info.value, ValueError)


def test_mismatched_lengths_error_names_the_counts_when_overriding_a_registered_config() -> None:
    with pytest.raises(ValueError, match=r"scale_list \(4\) need one entry per sub-network"):
        load_config("cifar10-model1", scale_list=(1, 2, 3, 3))


def test_twelve_pixel_lowest_resolution_is_accepted_and_thirteen_is_not() -> None:
    # 12 -> 6 -> 3 -> avgpool 1; 13 -> 7 -> 4 -> avgpool 2 (the linear would get 4x the features)
    single = {"gr_factor": (1,), "bn_factor": (1,), "scale_list": (1,), "n_blocks": 1}
    assert RANetConfig.model_validate({**single, "image_size": 12}).lowest_resolution == 12
    with pytest.raises(ValidationError, match="image_size 13 gives a 13x13 lowest resolution"):
        RANetConfig.model_validate({**single, "image_size": 13})


def test_config_is_frozen() -> None:
    config = get_config("cifar10-model1")
    with pytest.raises(ValidationError, match="frozen"):
        config.step = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", EXPECTED_CONFIGS)
def test_config_json_round_trip_is_lossless(name: str) -> None:
    config = get_config(name)
    text = config.to_json()
    assert RANetConfig.from_json(text) == config
    assert RANetConfig.from_json(text).to_json() == text


def test_load_config_reads_a_json_file_and_applies_validated_overrides(tmp_path: Path) -> None:
    path = tmp_path / "my-ranet.json"
    config = get_config("cifar100-anytime").model_copy(update={"name": "from-file"})
    path.write_text(config.to_json())

    loaded = load_config(path)
    assert loaded == config
    assert load_config(str(path)) == config

    overridden = load_config(path, n_channels=8, step=2)
    assert overridden == config.model_copy(update={"n_channels": 8, "step": 2})

    with pytest.raises(ValidationError, match="repeats the lowest resolution"):
        load_config(path, scale_list=(1, 1, 2, 3))


def test_load_config_of_a_missing_json_file_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config file .*absent\.json does not exist"):
        load_config(tmp_path / "absent.json")


def test_load_config_of_an_invalid_json_file_raises_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(get_config("cifar10-model1").to_json().replace('"step": 2', '"step": -2'))
    with pytest.raises(ValidationError, match="step"):
        load_config(path)


def test_official_fixture_args_give_cifar10_model1(official_fixture) -> None:
    args = official_fixture.meta["constructor_args"]
    config = RANetConfig.from_official_args(args)
    assert config.name == "imported"
    assert config == get_config("cifar10-model1").model_copy(update={"name": "imported"})


def test_official_cli_style_args_give_the_published_imagenet_and_cifar100_configs() -> None:
    imagenet = {
        "data": "ImageNet",
        "step": 8,
        "growthRate": 16,
        "nChannels": 32,
        "stepmode": "even",
        "scale_list": "1-2-3-4",
        "grFactor": "4-2-2-1",
        "bnFactor": "4-2-2-1",
    }
    config = RANetConfig.from_official_args(imagenet, name="imagenet-model1")
    assert config == get_config("imagenet-model1")

    # defaults of args.py fill everything the anytime CLI line leaves out
    anytime = {
        "data": "cifar100",
        "step": 4,
        "stepmode": "even",
        "scale_list": "1-2-3-3",
        "grFactor": "4-2-1-1",
        "bnFactor": "4-2-1-1",
    }
    assert RANetConfig.from_official_args(anytime, name="cifar100-anytime") == get_config("cifar100-anytime")
