"""RANet in PyTorch, module for module as the official implementation (spec sections 3-5).

Module and attribute names (`FirstLayer`, `scale_flows`, `classifier`, `net`, `conv_up`,
`conv_normal`, `conv_last`, `trans`, `m`, `linear`) are those of the official `models/RANet.py`, so an
official state_dict loads with no key renaming beyond the `module.` prefix. The structure itself comes
from `ranet_serve.model.layout`, which applies the placement rules once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ranet_serve.model.config import RANetConfig
from ranet_serve.model.layout import BlockSpec, RANetLayout, build_layout


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with align_corners=True, as every RANet resize is (spec 3.4).

    A same-size resize with align_corners=True is an exact identity, so it is skipped: same numbers,
    less work, and a smaller exported graph.
    """
    if (x.shape[-2], x.shape[-1]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ConvBasic(nn.Module):
    """Conv (no bias) -> BN -> ReLU: stem layers, transitions, `conv_last`, classifier convs."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, padding: int = 1
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvBN(nn.Module):
    """Bottleneck unit, "BN after" form: 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU (spec 3.2).

    The bottleneck width is min(in_channels, bn_width * out_channels); `down` makes the 3x3 conv
    stride 2.
    """

    def __init__(self, in_channels: int, out_channels: int, bn_width: int, down: bool = False):
        super().__init__()
        inner = min(in_channels, bn_width * out_channels)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_channels, 3, stride=2 if down else 1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvNormal(nn.Module):
    """Plain dense layer: append `growth` new channels to the input (spec 3.3)."""

    def __init__(self, in_channels: int, growth: int, bn_width: int):
        super().__init__()
        self.conv_normal = ConvBN(in_channels, growth, bn_width)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv_normal(x)], dim=1)


class ConvUpNormal(nn.Module):
    """Fusion dense layer: floor(25%) of the new channels from the coarse feature, the rest from the
    current one, everything resized to the `conv_normal` output's grid (spec 3.4)."""

    def __init__(
        self,
        in_channels: int,
        coarse_channels: int,
        growth: int,
        bn_width: int,
        coarse_bn_width: int,
        compress_factor: float,
        down: bool,
    ):
        super().__init__()
        from_coarse = math.floor(growth * compress_factor)
        self.conv_up = ConvBN(coarse_channels, from_coarse, coarse_bn_width)
        self.conv_normal = ConvBN(in_channels, growth - from_coarse, bn_width, down=down)

    def forward(self, coarse: Tensor, x: Tensor) -> Tensor:
        new = self.conv_normal(x)
        size = (new.shape[-2], new.shape[-1])
        return torch.cat([resize_to(x, size), resize_to(self.conv_up(coarse), size), new], dim=1)


class DenseBlock(nn.Module):
    """Plain dense block (`_BlockNormal`). Returns (block output, list of dense states)."""

    def __init__(self, spec: BlockSpec, bn_width: int, reduction: float):
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormal(width, spec.growth, bn_width) for width in spec.state_widths[:-1]
        )
        self.trans: nn.Module | None = None
        if spec.transition:
            final = spec.state_widths[-1]
            self.trans = ConvBasic(final, math.floor(reduction * final), kernel=1, padding=0)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        if self.trans is not None:
            x = self.trans(x)
        return x, states


class FusionBlock(nn.Module):
    """Fusion block (`_BlockUpNormal`, spec 3.6).

    Layer i fuses with coarse state i; `conv_last` injects the coarse block's final state after the
    last layer; only the last layer may downsample. The returned states exclude the `conv_last`
    channels and the transition, as the next sub-network expects.
    """

    def __init__(
        self,
        spec: BlockSpec,
        coarse: BlockSpec,
        bn_width: int,
        coarse_bn_width: int,
        compress_factor: float,
        reduction: float,
    ):
        super().__init__()
        last = spec.num_layers - 1
        self.layers = nn.ModuleList(
            ConvUpNormal(
                spec.state_widths[i],
                coarse.state_widths[i],
                spec.growth,
                bn_width,
                coarse_bn_width,
                compress_factor,
                down=spec.down and i == last,
            )
            for i in range(spec.num_layers)
        )
        self.conv_last = ConvBasic(coarse.state_widths[-1], spec.last_channels, kernel=1, padding=0)
        self.trans: nn.Module | None = None
        if spec.transition:
            total = spec.state_widths[-1] + spec.last_channels
            self.trans = ConvBasic(total, math.floor(reduction * total), kernel=1, padding=0)

    def forward(self, x: Tensor, coarse_states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        states = [x]
        for i, layer in enumerate(self.layers):
            x = layer(coarse_states[i], x)
            states.append(x)
        size = (x.shape[-2], x.shape[-1])
        x = torch.cat([x, resize_to(self.conv_last(coarse_states[-1]), size)], dim=1)
        if self.trans is not None:
            x = self.trans(x)
        return x, states


class Stem(nn.Module):
    """`RAFirstLayer`: all base features in one pass, highest resolution first (spec 3.7).

    `forward` returns them lowest resolution first: element h is sub-network h's base feature.
    """

    def __init__(self, layout: RANetLayout):
        super().__init__()
        config = layout.config
        widths = layout.stem_channels[::-1]  # compute order: highest resolution first
        self.layers = nn.ModuleList()
        if config.family == "imagenet":
            # A bare Sequential with a biased conv: its keys have no `.net.` (spec section 7).
            self.layers.append(
                nn.Sequential(
                    nn.Conv2d(config.in_channels, widths[0], 7, stride=2, padding=3),
                    nn.BatchNorm2d(widths[0]),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, stride=2, padding=1),
                )
            )
        else:
            self.layers.append(ConvBasic(config.in_channels, widths[0]))
        for i in range(1, len(widths)):
            self.layers.append(ConvBasic(widths[i - 1], widths[i], stride=layout.stem_strides[i]))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features[::-1]


class ClassifierModule(nn.Module):
    """Exit head: two stride-2 ConvBasic, 2x2 average pool, linear (spec 3.8)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int):
        super().__init__()
        self.m = nn.Sequential(
            ConvBasic(in_channels, hidden, stride=2),
            ConvBasic(hidden, hidden, stride=2),
            nn.AvgPool2d(2),
        )
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.flatten(self.m(x), 1))


class RANet(nn.Module):
    """Resolution Adaptive Network. `forward` returns per-exit logits, lowest resolution first."""

    def __init__(self, config: RANetConfig):
        super().__init__()
        self.config = config
        self.layout = build_layout(config)
        # Registration order matches the official state_dict: scale_flows, classifier, FirstLayer.
        self.scale_flows = nn.ModuleList()
        self.classifier = nn.ModuleList()
        for h, scale_blocks in enumerate(self.layout.blocks):
            flow = nn.ModuleList()
            for spec in scale_blocks:
                if spec.fusion:
                    coarse = self.layout.blocks[h - 1][spec.index]
                    flow.append(
                        FusionBlock(
                            spec,
                            coarse,
                            bn_width=config.bn_factor[h],
                            coarse_bn_width=config.bn_factor[h - 1],
                            compress_factor=config.compress_factor,
                            reduction=config.reduction,
                        )
                    )
                else:
                    flow.append(DenseBlock(spec, bn_width=config.bn_factor[h], reduction=config.reduction))
                    self.classifier.append(
                        ClassifierModule(
                            spec.out_channels, config.num_classes, config.classifier_width(spec.out_channels)
                        )
                    )
            self.scale_flows.append(flow)
        self.FirstLayer = Stem(self.layout)
        for module in (self.scale_flows, self.classifier):
            module.apply(_init_official)

    @property
    def num_exits(self) -> int:
        return len(self.classifier)

    def forward(self, x: Tensor) -> list[Tensor]:
        bases = self.FirstLayer(x)
        logits: list[Tensor] = []
        coarse_lists: list[list[Tensor]] = []
        exit_index = 0
        for h, flow in enumerate(self.scale_flows):
            feature = bases[h]
            lists: list[list[Tensor]] = []
            for j, block in enumerate(flow):  # type: ignore[arg-type, var-annotated]
                spec = self.layout.blocks[h][j]
                if spec.fusion:
                    feature, states = block(feature, coarse_lists[j])
                else:
                    feature, states = block(feature)
                    logits.append(self.classifier[exit_index](feature))
                    exit_index += 1
                lists.append(states)
            coarse_lists = lists
        return logits


def _init_official(module: nn.Module) -> None:
    """The official init (spec 3.9): He-normal convs, BN to (1, 0), zero linear bias."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
