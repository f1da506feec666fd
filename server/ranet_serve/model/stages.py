"""RANet's natural cut points: one stage per exit (spec section 6).

Stage k is everything computed after exit k-1's logits up to and including exit k's logits. It takes
named tensors (the image, or state produced by earlier stages) and returns `logits_k` followed by the
state later stages read. The split is derived from the layout, for every config.

Between stages a block hands on only what its successors need, using the prefix identity of spec
section 5: each dense state is a channel prefix of the next, so a block's whole state list is
recovered by channel slicing from its last state, plus its second-to-last state when its last layer
downsamples. Tensor names:

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

from torch import Tensor, nn

from ranet_serve.model.layout import BlockSpec, RANetLayout
from ranet_serve.model.ranet import RANet


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
                coarse = _coarse_states(self.layout.blocks[h - 1][j], env)
                feature, states = block(feature, coarse)
            else:
                feature, states = block(feature)
            env[state_name(spec)] = states[-1]
            if spec.down:
                env[pre_state_name(spec)] = states[-2]
            env[output_name(spec)] = feature
        assert feature is not None
        env[self.spec.logits] = self.head(feature)
        return tuple(env[name] for name in self.spec.outputs)


def _coarse_states(block: BlockSpec, env: dict[str, Tensor]) -> list[Tensor]:
    """Rebuild a finished block's state list from its carriers by channel slicing (prefix identity)."""
    last = env[state_name(block)]
    if block.down:
        pre = env[pre_state_name(block)]
        return [_prefix(pre, w) for w in block.state_widths[:-1]] + [last]
    return [_prefix(last, w) for w in block.state_widths]


def _prefix(x: Tensor, channels: int) -> Tensor:
    return x if x.shape[1] == channels else x[:, :channels]


def build_stages(model: RANet) -> list[RANetStage]:
    """The model's stages, in exit order, sharing the model's weights (and its train/eval mode)."""
    return [RANetStage(model, spec).train(model.training) for spec in plan_stages(model.layout)]
