"""Per-exit FLOPs and parameters against the official counter's numbers (spec sections 6, 8, 13)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ranet_serve.model.flops import ExitCost, count_exit_costs, cumulative_flops, stage_flops
from ranet_serve.model.ranet import RANet
from ranet_serve.model.registry import get_config

# Spec section 8, CIFAR-10, in millions rounded to 3 decimals: (FLOPs, params) per exit.
CIFAR10_TABLE: dict[str, tuple[list[float], list[float]]] = {
    "model1": (
        [8.361, 21.765, 32.844, 41.524, 53.226, 58.921],
        [0.347, 0.877, 1.270, 1.754, 2.130, 2.548],
    ),
    "model2": (
        [10.728, 24.133, 35.212, 43.891, 93.010, 114.608, 163.942, 175.651],
        [0.356, 0.886, 1.279, 1.764, 2.660, 3.616, 4.381, 5.094],
    ),
    "model3": (
        [10.736, 24.141, 35.220, 43.899, 55.601, 61.297, 105.559, 117.268],
        [0.349, 0.879, 1.273, 1.757, 2.132, 2.550, 3.255, 3.968],
    ),
    "anytime": (
        [15.814, 31.283, 44.655, 50.358, 60.655, 63.648, 90.174, 94.905],
        [0.470, 1.074, 1.477, 1.868, 2.166, 2.453, 2.872, 3.262],
    ),
}

# Spec section 8, ImageNet at 224x224: FLOPs in G (4 decimals), params in M (2 decimals).
IMAGENET_TABLE: dict[str, tuple[list[float], list[float]]] = {
    "imagenet-model1": (
        [0.2465, 0.6312, 0.8604, 1.0411, 1.8698, 2.1604, 2.7343, 2.8283],
        [9.92, 37.92, 48.35, 65.12, 85.60, 113.06, 121.47, 131.12],
    ),
    "imagenet-model2": (
        [0.4350, 0.8887, 1.1534, 1.3524, 2.2799, 2.5885, 3.2355, 3.3335],
        [14.08, 48.08, 60.10, 78.66, 100.95, 130.17, 139.10, 149.14],
    ),
}

# A CIFAR-100 head's Linear has 90 more outputs: 90 * 128 weights + 90 biases (spec section 8).
CIFAR100_HEAD_EXTRA = 90 * 128 + 90


@pytest.fixture(scope="module")
def costs(registered_model: Callable[[str], RANet]) -> Callable[[str], list[ExitCost]]:
    """Per-exit costs of a registered config, counted once per module."""
    cache: dict[str, list[ExitCost]] = {}

    def get(name: str) -> list[ExitCost]:
        if name not in cache:
            cache[name] = count_exit_costs(registered_model(name))
        return cache[name]

    return get


def test_cifar10_model1_flops_and_params_match_the_official_counter_exactly(
    costs: Callable[[str], list[ExitCost]], official_fixture
) -> None:
    measured = costs("cifar10-model1")
    official_flops = official_fixture.meta["official_op_counter_flops_per_exit_cumulative"]
    official_params = official_fixture.meta["official_op_counter_params_per_exit_cumulative"]
    assert [c.flops for c in measured] == [int(f) for f in official_flops]
    assert [c.params for c in measured] == official_params
    assert measured[-1].params == official_fixture.meta["total_params"] == 2_547_601


def test_cifar10_model1_flops_are_the_spec_integers() -> None:
    # independent of the fixture files, so this runs even where shared/ is absent
    flops = cumulative_flops(RANet(get_config("cifar10-model1")))
    assert flops == [8_360_714, 21_765_140, 32_844_062, 41_523_752, 53_225_778, 58_921_020]


@pytest.mark.parametrize("model", list(CIFAR10_TABLE))
def test_cifar10_flops_and_params_match_the_official_table(
    model: str, costs: Callable[[str], list[ExitCost]]
) -> None:
    flops_m, params_m = CIFAR10_TABLE[model]
    measured = costs(f"cifar10-{model}")
    assert [round(c.flops / 1e6, 3) for c in measured] == flops_m
    assert [round(c.params / 1e6, 3) for c in measured] == params_m


@pytest.mark.parametrize("model", list(CIFAR10_TABLE))
def test_cifar100_costs_exceed_cifar10_by_one_wider_linear_per_executed_head(
    model: str, costs: Callable[[str], list[ExitCost]]
) -> None:
    cifar10 = costs(f"cifar10-{model}")
    cifar100 = costs(f"cifar100-{model}")
    assert len(cifar100) == len(cifar10)
    for k, (c10, c100) in enumerate(zip(cifar10, cifar100, strict=True)):
        assert c100.flops - c10.flops == (k + 1) * CIFAR100_HEAD_EXTRA
        assert c100.params - c10.params == (k + 1) * CIFAR100_HEAD_EXTRA


def test_cifar100_numbers_quoted_in_the_spec_match(costs: Callable[[str], list[ExitCost]]) -> None:
    anytime = costs("cifar100-anytime")
    assert [round(c.flops / 1e6, 3) for c in anytime] == [
        15.826,
        31.306,
        44.690,
        50.405,
        60.713,
        63.718,
        90.255,
        94.997,
    ]
    assert (round(anytime[0].params / 1e6, 3), round(anytime[-1].params / 1e6, 3)) == (0.482, 3.355)
    model1 = costs("cifar100-model1")
    assert (round(model1[0].flops / 1e6, 3), round(model1[-1].flops / 1e6, 3)) == (8.372, 58.991)
    assert round(model1[-1].params / 1e6, 3) == 2.617


@pytest.mark.parametrize("name", list(IMAGENET_TABLE))
def test_imagenet_flops_and_params_match_the_official_table(
    name: str, costs: Callable[[str], list[ExitCost]]
) -> None:
    flops_g, params_m = IMAGENET_TABLE[name]
    measured = costs(name)
    assert [round(c.flops / 1e9, 4) for c in measured] == flops_g
    assert [round(c.params / 1e6, 2) for c in measured] == params_m


def test_last_exit_params_equal_the_whole_model(
    costs: Callable[[str], list[ExitCost]], registered_model: Callable[[str], RANet]
) -> None:
    # every module runs by the last exit, so the official cumulative count covers the whole model
    for name in ("cifar10-anytime", "imagenet-model1"):
        total = sum(p.numel() for p in registered_model(name).parameters())
        assert costs(name)[-1].params == total


def test_cifar10_model1_stage_flops_match_spec_section_6(registered_model: Callable[[str], RANet]) -> None:
    stages = stage_flops(registered_model("cifar10-model1"))
    assert [round(s / 1e6, 3) for s in stages] == [8.361, 13.404, 11.079, 8.680, 11.702, 5.695]
    assert stages == [8_360_714, 13_404_426, 11_078_922, 8_679_690, 11_702_026, 5_695_242]


def test_anytime_and_imagenet_stage_flops_match_spec_section_6(
    costs: Callable[[str], list[ExitCost]],
) -> None:
    def stages(name: str) -> list[int]:
        cumulative = [c.flops for c in costs(name)]
        return [cur - prev for prev, cur in zip([0, *cumulative[:-1]], cumulative, strict=True)]

    assert [round(s / 1e6, 3) for s in stages("cifar10-anytime")] == [
        15.814,
        15.469,
        13.372,
        5.703,
        10.296,
        2.993,
        26.526,
        4.731,
    ]
    assert [round(s / 1e9, 4) for s in stages("imagenet-model1")] == [
        0.2465,
        0.3847,
        0.2292,
        0.1807,
        0.8287,
        0.2905,
        0.5739,
        0.0940,
    ]


def test_stage_flops_sum_to_the_cumulative_flops(registered_model: Callable[[str], RANet]) -> None:
    model = registered_model("cifar10-model2")
    stages = stage_flops(model)
    cumulative = cumulative_flops(model)
    assert [sum(stages[: k + 1]) for k in range(len(stages))] == cumulative


def test_counting_twice_gives_the_same_numbers_and_leaves_no_hooks(tiny_model: RANet) -> None:
    # the official counter's globals are never reset (spec 12); ours must not accumulate
    tiny_model.train()
    first = count_exit_costs(tiny_model)
    second = count_exit_costs(tiny_model)
    assert first == second
    assert len(first) == 6
    assert tiny_model.training  # mode restored
    assert all(not m._forward_hooks for m in tiny_model.modules())
    assert int(tiny_model.classifier[0].m[1].net[1].num_batches_tracked) == 0  # counted in eval mode


def test_counter_rules_on_a_hand_built_network() -> None:
    """Conv C_in*C_out*k*k*H*W, ReLU input elements, pool C*H*W*k*k, Linear weights+biases, BN free."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # 32 -> 16
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU()
            self.pool = nn.AvgPool2d(2)  # 16 -> 8
            self.linear = nn.Linear(4 * 8 * 8, 5)
            self.config = type("Cfg", (), {"in_channels": 3, "image_size": 32})()

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            y = self.pool(self.relu(self.bn(self.conv(x))))
            return [self.linear(torch.flatten(y, 1))]

    (cost,) = count_exit_costs(Tiny())  # type: ignore[arg-type]
    conv = 3 * 4 * 3 * 3 * 16 * 16
    relu = 4 * 16 * 16
    pool = 4 * 8 * 8 * 2 * 2
    linear = 256 * 5 + 5
    assert cost.flops == conv + relu + pool + linear
    assert cost.params == 3 * 4 * 3 * 3 + 4 + 4 + linear
