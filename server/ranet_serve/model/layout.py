"""The block layout of a RANet, derived from its config with no tensors involved.

Both the network builder and the stage split read this one description, so the placement rules of
spec section 3.9 (which blocks fuse, which downsample, where transitions go, which blocks carry an
exit) are written exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ranet_serve.model.config import RANetConfig


@dataclass(frozen=True)
class BlockSpec:
    """One dense block of sub-network `scale`, at 0-based position `index` within it.

    `state_widths[i]` is the channel count of dense state i (state 0 = block input); the list the
    next sub-network fuses with. `out_channels` is the block output after `conv_last` and transition.
    """

    scale: int
    index: int
    fusion: bool
    num_layers: int
    in_channels: int
    growth: int
    coarse_growth: int  # growth of the coarse sub-network this block fuses with (0 for plain blocks)
    down: bool
    transition: bool
    state_widths: tuple[int, ...]
    last_channels: int  # channels added by conv_last (fusion blocks only)
    out_channels: int
    exit_index: int | None  # 0-based exit after this block, None for fusion blocks


@dataclass(frozen=True)
class RANetLayout:
    config: RANetConfig
    stem_channels: tuple[int, ...]  # per sub-network (index 0 = lowest resolution)
    stem_strides: tuple[int, ...]  # per stem layer, in compute order (highest resolution first)
    blocks: tuple[tuple[BlockSpec, ...], ...]  # blocks[h][j]

    @property
    def exits(self) -> tuple[BlockSpec, ...]:
        """The plain blocks that carry exits, in exit order."""
        found = [b for scale in self.blocks for b in scale if b.exit_index is not None]
        return tuple(sorted(found, key=lambda b: b.exit_index or 0))


def build_layout(config: RANetConfig) -> RANetLayout:
    """Apply the official placement rules (spec 3.7-3.9) to `config`."""
    num_scales = config.num_scales
    blocks_per_scale = (0, *config.blocks_per_scale)  # official nBlocks list with its leading 0
    stem_channels = tuple(config.n_channels * f for f in config.gr_factor)

    # Stem layers run from the highest resolution down; a layer strides when the resolution index of
    # the sub-network it feeds differs from that of the layer before it.
    reversed_scales = config.scale_list[::-1]
    stem_strides = [1]
    current = reversed_scales[0]
    for s in reversed_scales[1:]:
        stem_strides.append(1 if s == current else 2)
        current = s

    all_blocks: list[tuple[BlockSpec, ...]] = []
    exit_index = 0
    previous: tuple[BlockSpec, ...] = ()
    for h in range(num_scales):
        scale_index = config.scale_list[h]
        num_blocks = blocks_per_scale[h + 1]
        num_fusion = blocks_per_scale[h]
        growth = config.growth_rate * config.gr_factor[h]
        # Downsampling fusion blocks sit at the positions where earlier sub-networks ended; there are
        # exactly scale_index - 1 of them (the official slice is wrong when that is 0: spec 12).
        down_positions = set(blocks_per_scale[: h + 1][-(scale_index - 1) :]) if scale_index > 1 else set()
        transition_positions = {math.floor(i * num_blocks / scale_index) for i in range(1, scale_index)}
        channels = stem_channels[h]
        scale_blocks: list[BlockSpec] = []
        for j in range(num_blocks):
            position = j + 1  # the official code counts blocks from 1
            layers = config.layers_at(j)
            fusion = position <= num_fusion
            states = tuple(channels + i * growth for i in range(layers + 1))
            if fusion:
                coarse = previous[j]
                if coarse.num_layers != layers:
                    raise AssertionError("fusion block must mirror the coarse block's layer count")
                last_channels = math.floor(states[-1] * config.compress_factor)
            else:
                last_channels = 0
            out = states[-1] + last_channels
            transition = position in transition_positions
            if transition:
                out = math.floor(config.reduction * out)
            block = BlockSpec(
                scale=h,
                index=j,
                fusion=fusion,
                num_layers=layers,
                in_channels=channels,
                growth=growth,
                coarse_growth=previous[j].growth if fusion else 0,
                down=fusion and position in down_positions,
                transition=transition,
                state_widths=states,
                last_channels=last_channels,
                out_channels=out,
                exit_index=None if fusion else exit_index,
            )
            if not fusion:
                exit_index += 1
            scale_blocks.append(block)
            channels = out
        all_blocks.append(tuple(scale_blocks))
        previous = tuple(scale_blocks)

    return RANetLayout(
        config=config,
        stem_channels=stem_channels,
        stem_strides=tuple(stem_strides),
        blocks=tuple(all_blocks),
    )
