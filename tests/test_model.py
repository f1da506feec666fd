"""RANet structure and forward pass: exits and shapes, official widths and state_dict keys, gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ranet_serve.model.config import RANetConfig, load_config
from ranet_serve.model.layout import build_layout
from ranet_serve.model.ranet import RANet
from ranet_serve.model.registry import get_config, list_configs


def _classifier_inputs(model: RANet, x: Tensor) -> tuple[list[Tensor], list[torch.Size]]:
    """Run `model` on `x` and record the input shape of every classifier, in call order."""
    seen: list[torch.Size] = []
    handles = [
        head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
        for head in model.classifier
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


@pytest.mark.parametrize("name", list_configs())
def test_every_registered_config_gives_one_logit_tensor_per_exit(
    name: str, registered_model: Callable[[str], RANet]
) -> None:
    model = registered_model(name)
    config = model.config
    batch = 1 if config.family == "imagenet" else 2
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)

    logits, head_inputs = _classifier_inputs(model, x)

    assert model.num_exits == config.num_exits == len(logits)
    assert config.num_exits == (6 if config.num_scales == 3 else 8)
    for out in logits:
        assert out.shape == (batch, config.num_classes)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    # every classifier reads the lowest resolution, in exit order (spec 3.8, 5)
    side = config.lowest_resolution
    assert [tuple(s[2:]) for s in head_inputs] == [(side, side)] * config.num_exits
    assert [s[1] for s in head_inputs] == [b.out_channels for b in model.layout.exits]


@pytest.mark.parametrize(
    ("name", "widths"),
    [
        ("cifar10-model1", [112, 208, 145, 241, 146, 218]),
        ("cifar100-model1", [112, 208, 145, 241, 146, 218]),
        ("cifar10-anytime", [160, 256, 140, 188, 93, 117, 180, 204]),
        ("imagenet-model1", [640, 1152, 666, 922, 936, 1192, 573, 701]),
    ],
)
def test_classifier_input_widths_match_the_official_structure(
    name: str, widths: list[int], registered_model: Callable[[str], RANet]
) -> None:
    model = registered_model(name)
    assert [head.m[0].net[0].in_channels for head in model.classifier] == widths
    hidden = [head.linear.in_features for head in model.classifier]
    assert hidden == ([128] * len(widths) if model.config.family == "cifar" else widths)


def test_classifier_channels_narrows_every_head_and_only_the_heads() -> None:
    base = get_config("cifar10-model1")
    narrow = RANetConfig.model_validate({**base.model_dump(), "classifier_channels": 32})
    wide_model, narrow_model = RANet(base), RANet(narrow)
    assert [head.linear.in_features for head in narrow_model.classifier] == [32] * 6
    assert [head.m[1].net[0].weight.shape[:2] for head in narrow_model.classifier] == [(32, 32)] * 6

    def trunk(model: RANet) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in model.state_dict().items() if not k.startswith("classifier.")}

    assert trunk(wide_model) == trunk(narrow_model)
    # Each head loses (128 - 32) * (9 * in + 9 * 128 + 9 * 32 + 10 + 4 BN values): exact, by hand.
    saved = sum((128 - 32) * (9 * w + 9 * (128 + 32) + 10 + 4) for w in [112, 208, 145, 241, 146, 218])
    assert (
        sum(p.numel() for p in wide_model.parameters()) - sum(p.numel() for p in narrow_model.parameters())
        == saved
    )


def test_imagenet_model2_widens_the_base_but_not_the_growth(registered_model: Callable[[str], RANet]) -> None:
    model = registered_model("imagenet-model2")
    assert model.layout.stem_channels == (256, 128, 128, 64)
    assert [head.m[0].net[0].in_channels for head in model.classifier][:2] == [768, 1280]
    assert [head.linear.out_features for head in model.classifier] == [1000] * 8


def test_cifar10_model1_block_widths_match_spec_4_1() -> None:
    layout = build_layout(get_config("cifar10-model1"))
    assert layout.stem_channels == (64, 32, 16)
    assert layout.stem_strides == (1, 2, 2)
    outs = [[b.out_channels for b in scale] for scale in layout.blocks]
    assert outs == [[112, 208], [70, 73, 145, 241], [35, 36, 90, 86, 146, 218]]
    assert [[b.num_layers for b in scale] for scale in layout.blocks] == [
        [2, 4],
        [2, 4, 6, 8],
        [2, 4, 6, 8, 10, 12],
    ]
    sn2 = layout.blocks[2]
    assert [b.fusion for b in sn2] == [True, True, True, True, False, False]
    assert [b.down for b in sn2] == [False, True, False, True, False, False]
    assert [b.transition for b in sn2] == [False, True, False, True, False, False]
    assert [b.last_channels for b in sn2[:4]] == [7, 14, 18, 34]
    assert [b.state_widths[-1] for b in sn2] == [28, 59, 72, 138, 146, 218]
    assert [b.exit_index for b in sn2] == [None, None, None, None, 4, 5]


def test_anytime_fourth_subnetwork_transitions_and_downsampling_do_not_coincide() -> None:
    # spec 3.9 / 4.2: transitions after blocks 2 and 5, downsampling in blocks 4 and 6 (1-based)
    layout = build_layout(get_config("cifar10-anytime"))
    assert layout.stem_strides == (1, 1, 2, 2)
    sn3 = layout.blocks[3]
    assert [b.index for b in sn3 if b.transition] == [1, 4]
    assert [b.index for b in sn3 if b.down] == [3, 5]
    assert [b.out_channels for b in sn3] == [50, 46, 87, 138, 101, 156, 180, 204]


def test_fusion_layers_take_a_quarter_of_their_growth_from_the_coarse_subnetwork() -> None:
    model = RANet(get_config("cifar10-model1"))
    sn1_layer = model.scale_flows[1][0].layers[0]
    sn2_layer = model.scale_flows[2][0].layers[0]
    assert (sn1_layer.conv_up.net[3].out_channels, sn1_layer.conv_normal.net[3].out_channels) == (3, 9)
    assert (sn2_layer.conv_up.net[3].out_channels, sn2_layer.conv_normal.net[3].out_channels) == (1, 5)
    # only the last layer of a downsampling fusion block strides
    strides = [layer.conv_normal.net[3].stride for layer in model.scale_flows[1][1].layers]
    assert strides == [(1, 1), (1, 1), (1, 1), (2, 2)]
    assert all(layer.conv_up.net[3].stride == (1, 1) for layer in model.scale_flows[1][1].layers)


@pytest.mark.parametrize(
    ("name", "keys", "per_part"),
    [
        ("cifar10-model1", 1284, {"scale_flows": 1182, "classifier": 84, "FirstLayer": 18}),
        ("cifar10-anytime", 1774, None),
        ("imagenet-model1", 3317, None),
    ],
)
def test_state_dict_key_counts_match_the_official_model(
    name: str, keys: int, per_part: dict[str, int] | None, registered_model: Callable[[str], RANet]
) -> None:
    state = registered_model(name).state_dict()
    assert len(state) == keys
    if per_part is not None:
        counts = {part: sum(k.startswith(part + ".") for k in state) for part in per_part}
        assert counts == per_part


# Spec section 7: representative keys of CIFAR model 1, as stored in the official checkpoint.
OFFICIAL_KEYS: list[tuple[str, tuple[int, ...]]] = [
    ("FirstLayer.layers.0.net.0.weight", (16, 3, 3, 3)),
    ("FirstLayer.layers.0.net.1.weight", (16,)),
    ("FirstLayer.layers.0.net.1.bias", (16,)),
    ("FirstLayer.layers.0.net.1.running_mean", (16,)),
    ("FirstLayer.layers.0.net.1.running_var", (16,)),
    ("FirstLayer.layers.0.net.1.num_batches_tracked", ()),
    ("FirstLayer.layers.2.net.0.weight", (64, 32, 3, 3)),
    ("scale_flows.0.0.layers.0.conv_normal.net.0.weight", (64, 64, 1, 1)),
    ("scale_flows.0.0.layers.0.conv_normal.net.1.weight", (64,)),
    ("scale_flows.0.0.layers.0.conv_normal.net.3.weight", (24, 64, 3, 3)),
    ("scale_flows.0.0.layers.0.conv_normal.net.4.running_var", (24,)),
    ("scale_flows.0.1.layers.3.conv_normal.net.3.weight", (24, 96, 3, 3)),
    ("scale_flows.1.0.layers.0.conv_up.net.0.weight", (12, 64, 1, 1)),
    ("scale_flows.1.0.layers.0.conv_up.net.3.weight", (3, 12, 3, 3)),
    ("scale_flows.1.0.layers.0.conv_normal.net.0.weight", (18, 32, 1, 1)),
    ("scale_flows.1.0.layers.0.conv_normal.net.3.weight", (9, 18, 3, 3)),
    ("scale_flows.1.0.conv_last.net.0.weight", (14, 112, 1, 1)),
    ("scale_flows.1.0.conv_last.net.1.bias", (14,)),
    ("scale_flows.1.1.layers.3.conv_normal.net.3.weight", (9, 18, 3, 3)),
    ("scale_flows.1.1.conv_last.net.0.weight", (29, 208, 1, 1)),
    ("scale_flows.1.1.trans.net.0.weight", (73, 147, 1, 1)),
    ("scale_flows.1.1.trans.net.1.running_mean", (73,)),
    ("scale_flows.1.2.layers.0.conv_normal.net.0.weight", (24, 73, 1, 1)),
    ("scale_flows.2.3.layers.7.conv_up.net.0.weight", (2, 229, 1, 1)),
    ("scale_flows.2.3.trans.net.0.weight", (86, 172, 1, 1)),
    ("scale_flows.2.5.layers.11.conv_normal.net.3.weight", (6, 6, 3, 3)),
    ("classifier.0.m.0.net.0.weight", (128, 112, 3, 3)),
    ("classifier.0.m.1.net.0.weight", (128, 128, 3, 3)),
    ("classifier.0.m.1.net.1.running_var", (128,)),
    ("classifier.0.linear.weight", (10, 128)),
    ("classifier.5.m.0.net.0.weight", (128, 218, 3, 3)),
    ("classifier.5.linear.bias", (10,)),
]


def test_cifar10_model1_state_dict_has_the_official_keys_and_shapes(
    registered_model: Callable[[str], RANet],
) -> None:
    state = registered_model("cifar10-model1").state_dict()
    assert [(key, tuple(state[key].shape)) for key, _ in OFFICIAL_KEYS if key in state] == OFFICIAL_KEYS
    assert state["FirstLayer.layers.0.net.1.num_batches_tracked"].dtype == torch.int64
    # registration order of the official model: scale_flows, classifier, FirstLayer (stem last)
    keys = list(state)
    assert keys[0] == "scale_flows.0.0.layers.0.conv_normal.net.0.weight"
    assert keys[1182] == "classifier.0.m.0.net.0.weight"
    assert keys[-18].startswith("FirstLayer.layers.0.")


def test_cifar10_model1_state_dict_keys_equal_the_official_checkpoint_keys(
    official_fixture, registered_model: Callable[[str], RANet]
) -> None:
    official = official_fixture.checkpoint["state_dict"]
    ours = registered_model("cifar10-model1").state_dict()
    assert list(ours) == [k.removeprefix("module.") for k in official]
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k.removeprefix("module."): tuple(v.shape) for k, v in official.items()
    }
    assert list(official)[:5] == official_fixture.meta["first_keys"]


def test_imagenet_stem_is_a_bare_sequential_with_a_biased_conv(
    registered_model: Callable[[str], RANet],
) -> None:
    state = registered_model("imagenet-model1").state_dict()
    assert tuple(state["FirstLayer.layers.0.0.weight"].shape) == (32, 3, 7, 7)
    assert tuple(state["FirstLayer.layers.0.0.bias"].shape) == (32,)
    assert tuple(state["FirstLayer.layers.0.1.running_var"].shape) == (32,)
    assert tuple(state["FirstLayer.layers.1.net.0.weight"].shape) == (64, 32, 3, 3)
    assert tuple(state["FirstLayer.layers.3.net.0.weight"].shape) == (128, 64, 3, 3)
    assert not any(k.startswith("FirstLayer.layers.0.net.") for k in state)


def test_cifar10_model1_has_the_official_parameter_count(registered_model: Callable[[str], RANet]) -> None:
    model = registered_model("cifar10-model1")
    assert sum(p.numel() for p in model.parameters()) == 2_547_601


def test_official_init_sets_bn_to_identity_and_linear_bias_to_zero() -> None:
    torch.manual_seed(0)
    model = RANet(get_config("cifar10-model1"))
    for part in (model.scale_flows, model.classifier):
        for module in part.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert torch.equal(module.weight, torch.ones_like(module.weight))
                assert torch.equal(module.bias, torch.zeros_like(module.bias))
            elif isinstance(module, nn.Linear):
                assert torch.equal(module.bias, torch.zeros_like(module.bias))
    conv = model.scale_flows[0][0].layers[0].conv_normal.net[3]  # 3x3, 24 outputs: std sqrt(2/216)
    assert conv.weight.std().item() == pytest.approx((2 / (3 * 3 * 24)) ** 0.5, rel=0.05)


@pytest.mark.parametrize("mode", ["even", "lg"])
def test_step_1_builds_and_runs_although_the_official_code_crashes(mode: str) -> None:
    config = load_config("cifar10-anytime", step=1, step_mode=mode)
    model = RANet(config).eval()
    assert [[b.num_layers for b in scale] for scale in model.layout.blocks][3] == (
        [1] * 8 if mode == "even" else [1, 2, 3, 4, 5, 6, 7, 8]
    )
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert len(logits) == model.num_exits == 8
    assert all(out.shape == (2, 10) and torch.isfinite(out).all() for out in logits)


def test_eval_forward_is_deterministic(tiny_model: RANet) -> None:
    tiny_model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        first = tiny_model(x)
        second = tiny_model(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_eval_forward_of_one_sample_matches_its_row_in_a_batch(tiny_model: RANet) -> None:
    tiny_model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        batched = tiny_model(x)
        single = tiny_model(x[1:2])
    for b, s in zip(batched, single, strict=True):
        torch.testing.assert_close(b[1:2], s, atol=1e-5, rtol=1e-5)


def test_train_mode_batch_2_updates_batchnorm_running_stats(tiny_model: RANet) -> None:
    tiny_model.train()
    bn = tiny_model.classifier[5].m[1].net[1]
    assert int(bn.num_batches_tracked) == 0
    logits = tiny_model(torch.randn(2, 3, 32, 32))
    assert len(logits) == 6
    assert all(out.shape == (2, 10) and torch.isfinite(out).all() for out in logits)
    assert int(bn.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


# Which parts of the tiny 1-2-3 model (2, 4, 6 blocks) each exit depends on (spec 5, 6): the whole stem,
# the sub-network's blocks up to the exit, and every block of the coarser sub-networks it fuses with.
EXIT_DEPENDENCIES: list[list[str]] = [
    ["scale_flows.0.0.", "classifier.0."],
    ["scale_flows.0.0.", "scale_flows.0.1.", "classifier.1."],
    ["scale_flows.0.", "scale_flows.1.0.", "scale_flows.1.1.", "scale_flows.1.2.", "classifier.2."],
    ["scale_flows.0.", "scale_flows.1.", "classifier.3."],
    ["scale_flows.0.", "scale_flows.1.", *(f"scale_flows.2.{j}." for j in range(5)), "classifier.4."],
    ["scale_flows.", "classifier.5."],
]


def _loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target)


@pytest.mark.parametrize("exit_index", range(6))
def test_each_exit_loss_reaches_exactly_the_modules_that_exit_depends_on(
    exit_index: int, tiny_model: RANet
) -> None:
    tiny_model.train()
    torch.manual_seed(1)
    logits = tiny_model(torch.randn(4, 3, 32, 32))
    _loss(logits[exit_index], torch.tensor([0, 1, 2, 3])).backward()

    prefixes = ("FirstLayer.", *EXIT_DEPENDENCIES[exit_index])
    with_grad = {name for name, p in tiny_model.named_parameters() if p.grad is not None}
    expected = {name for name, _ in tiny_model.named_parameters() if name.startswith(prefixes)}
    assert with_grad == expected
    head = tiny_model.classifier[exit_index].linear.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    for other in range(6):
        if other != exit_index:
            assert tiny_model.classifier[other].linear.weight.grad is None


def test_summed_loss_gives_every_parameter_a_nonzero_gradient(
    tiny_model: RANet, tiny_config: RANetConfig
) -> None:
    tiny_model.train()
    torch.manual_seed(2)
    logits = tiny_model(torch.randn(4, 3, 32, 32))
    target = torch.tensor([0, 1, 2, 3])
    torch.stack([_loss(out, target) for out in logits]).sum().backward()
    assert len(logits) == tiny_config.num_exits
    silent = [
        name for name, p in tiny_model.named_parameters() if p.grad is None or p.grad.abs().sum().item() == 0
    ]
    assert silent == []
