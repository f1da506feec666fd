"""RANet's natural cut points: one stage per exit (spec section 6).

Stage k is everything computed after exit k-1's logits up to and including exit k's logits. It takes
named tensors (the image, or state produced by earlier stages) and returns `logits_k` followed by the
state later stages read. The split is derived from the layout, for every config.

Between stages a block hands on only what its successors need, using the prefix identity of spec
section 5: each dense state is a channel prefix of the next, so a block's whole state list is
recovered by channel slicing from its last state, plus its second-to-last state when its last layer
downsamples. The stages never materialise those slices, though (see `_fusion_on_carriers`): every
reader of a coarse state is a 1x1 convolution, which reads the whole carrier with zero-padded weights
instead, so an exported stage has no Slice copies and converts each carrier to onnxruntime's blocked
layout once for all its readers. Tensor names:

* `image`: the preprocessed input.
* `base_{h}`: the stem's base feature for sub-network h (h >= 1; base 0 is used at once).
* `state_{h}_{j}`: last dense state of block j of sub-network h (for a plain block without
  transition this is also the block output).
* `state_{h}_{j}_pre`: its second-to-last state, only when that block's last layer is strided.
* `out_{h}_{j}`: a plain block's output when it differs from its last state (a transition).
* `logits_{k}`: exit k's pre-softmax scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ranet_serve.model.layout import BlockSpec, RANetLayout
from ranet_serve.model.ranet import ConvUpNormal, FusionBlock, RANet, resize_to


def state_name(block: BlockSpec) -> str:
    return f"state_{block.scale}_{block.index}"


def pre_state_name(block: BlockSpec) -> str:
    return f"state_{block.scale}_{block.index}_pre"


def carrier_names(block: BlockSpec) -> tuple[str, ...]:
    """Tensors that carry a block's whole state list across a stage boundary."""
    return (pre_state_name(block), state_name(block)) if block.down else (state_name(block),)


def output_name(block: BlockSpec) -> str:
    """Name of a block's output as the next block of its own sub-network reads it."""
    if block.fusion or block.transition:
        return f"out_{block.scale}_{block.index}"
    return state_name(block)


@dataclass(frozen=True)
class StageSpec:
    """What one stage computes and exchanges; pure data, stored in bundle manifests."""

    index: int
    runs_stem: bool
    blocks: tuple[tuple[int, int], ...]  # (sub-network, block) pairs in execution order
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # logits first, then state for later stages

    @property
    def logits(self) -> str:
        return self.outputs[0]


def plan_stages(layout: RANetLayout) -> list[StageSpec]:
    """Group blocks into one stage per exit and work out each stage's inputs and outputs."""
    num_scales = layout.config.num_scales
    stages: list[StageSpec] = []
    for exit_block in layout.exits:
        h, j = exit_block.scale, exit_block.index
        first_plain = layout.config.blocks_per_scale[h - 1] if h > 0 else 0
        members = list(range(j + 1)) if j == first_plain else [j]
        runs_stem = h == 0 and j == 0
        inputs: list[str] = []
        if runs_stem:
            inputs.append("image")
        elif members[0] == 0:
            inputs.append(f"base_{h}")
            for coarse in layout.blocks[h - 1]:
                inputs.extend(carrier_names(coarse))
        else:
            inputs.append(output_name(layout.blocks[h][members[0] - 1]))

        outputs = [f"logits_{exit_block.exit_index}"]
        if runs_stem:
            outputs.extend(f"base_{s}" for s in range(1, num_scales))
        for m in members:
            block = layout.blocks[h][m]
            if h + 1 < num_scales:
                outputs.extend(n for n in carrier_names(block) if n not in outputs)
            is_last_of_scale = m == len(layout.blocks[h]) - 1
            if m == members[-1] and not is_last_of_scale and output_name(block) not in outputs:
                outputs.append(output_name(block))
        stages.append(
            StageSpec(
                index=len(stages),
                runs_stem=runs_stem,
                blocks=tuple((h, m) for m in members),
                inputs=tuple(inputs),
                outputs=tuple(outputs),
            )
        )
    return stages


def last_readers(stages: list[StageSpec]) -> dict[str, int]:
    """For every state tensor, the index of the last stage that reads it (the executor drops it after)."""
    readers: dict[str, int] = {}
    for stage in stages:
        for name in stage.inputs:
            if name != "image":
                readers[name] = stage.index
    return readers


class RANetStage(nn.Module):
    """One stage as a module: positional tensors in `spec.inputs` order, a tuple in `spec.outputs` order.

    It shares its submodules with the full model, so stage k of a loaded model runs exactly the
    weights the full forward pass runs.
    """

    def __init__(self, model: RANet, spec: StageSpec):
        super().__init__()
        self.spec = spec
        self.layout = model.layout
        self.stem = model.FirstLayer if spec.runs_stem else None
        self.blocks = nn.ModuleList(model.scale_flows[h][j] for h, j in spec.blocks)  # type: ignore[index]
        exit_index = int(spec.logits.removeprefix("logits_"))
        self.head = model.classifier[exit_index]

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        env: dict[str, Tensor] = dict(zip(self.spec.inputs, tensors, strict=True))
        if self.stem is not None:
            for h, base in enumerate(self.stem(env["image"])):
                env[f"base_{h}"] = base
        feature: Tensor | None = None
        for (h, j), block in zip(self.spec.blocks, self.blocks, strict=True):
            spec = self.layout.blocks[h][j]
            if j == 0:
                feature = env[f"base_{h}"]
            elif feature is None:
                feature = env[output_name(self.layout.blocks[h][j - 1])]
            if spec.fusion:
                assert isinstance(block, FusionBlock)
                feature, states = _fusion_on_carriers(block, self.layout.blocks[h - 1][j], feature, env)
            else:
                feature, states = block(feature)
            env[state_name(spec)] = states[-1]
            if spec.down:
                env[pre_state_name(spec)] = states[-2]
            env[output_name(spec)] = feature
        assert feature is not None
        env[self.spec.logits] = self.head(feature)
        return tuple(env[name] for name in self.spec.outputs)


def _fusion_on_carriers(
    block: FusionBlock, coarse: BlockSpec, x: Tensor, env: dict[str, Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """`FusionBlock.forward` fed with the coarse block's carriers instead of its rebuilt state list.

    Why: slicing the coarse states back out of their carriers inside a stage graph costs a copy per
    state (onnxruntime `Slice`) plus a layout conversion per slice before its convolution; together
    they were most of the split overhead the benchmark measured (benchmarks/REPORT.md). Every reader of
    coarse state i is the first layer of `conv_up` of fusion layer i, a 1x1 convolution without bias,
    and a 1x1 convolution of the channel prefix `c[:, :w]` equals the same convolution of the whole
    carrier `c` with its weight zero-padded from w to c's width. So each layer reads its carrier whole;
    the padded weight is a constant of the exported graph. The price is (C - w) / w more
    multiply-adds in those 1x1 convolutions only (0.11 M, 0.45% of the Fashion-MNIST model's 24.4 M).
    `conv_last` reads the last state, a carrier itself.
    The numbers equal `FusionBlock.forward` on the sliced list up to float summation order.
    """
    last = env[state_name(coarse)]
    # States 0..L-1 are prefixes of the pre-downsampling state when the coarse block's last layer is
    # strided (state L then has another resolution), else of the last state.
    carrier = env[pre_state_name(coarse)] if coarse.down else last
    states = [x]
    for i, layer in enumerate(block.layers):
        assert isinstance(layer, ConvUpNormal)
        x = _fusion_layer(layer, _widened(layer.conv_up.net, carrier, coarse.state_widths[i]), x)
        states.append(x)
    size = (x.shape[-2], x.shape[-1])
    x = torch.cat([x, resize_to(block.conv_last(last), size)], dim=1)
    if block.trans is not None:
        x = block.trans(x)
    return x, states


def _fusion_layer(layer: ConvUpNormal, coarse_feature: Tensor, x: Tensor) -> Tensor:
    """`ConvUpNormal.forward`, given its `conv_up` output already computed (by `_widened`)."""
    new = layer.conv_normal(x)
    size = (new.shape[-2], new.shape[-1])
    return torch.cat([resize_to(x, size), resize_to(coarse_feature, size), new], dim=1)


def _widened(net: nn.Module, carrier: Tensor, width: int) -> Tensor:
    """Run `net` (a ConvBN's Sequential) on `carrier[:, :width]` without slicing the carrier."""
    modules = list(net.children())
    first = modules[0]
    assert isinstance(first, nn.Conv2d) and first.kernel_size == (1, 1) and first.stride == (1, 1)
    assert first.bias is None and first.padding == (0, 0) and first.groups == 1
    weight = first.weight
    extra = carrier.shape[1] - width
    if extra > 0:
        weight = F.pad(weight, (0, 0, 0, 0, 0, extra))  # zero weights for channels width.. of the carrier
    y = F.conv2d(carrier, weight)
    for module in modules[1:]:
        y = module(y)
    return y


def build_stages(model: RANet) -> list[RANetStage]:
    """The model's stages, in exit order, sharing the model's weights (and its train/eval mode)."""
    return [RANetStage(model, spec).train(model.training) for spec in plan_stages(model.layout)]
