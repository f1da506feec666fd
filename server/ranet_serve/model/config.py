"""RANet configuration: the handful of numbers an architecture is built from.

Field names follow the official code's CLI flags (spec section 2) in snake case, so a config can be
read side by side with `args.py`. A config is a frozen pydantic model: it validates on construction
(the official code crashes or silently builds a broken network on some inputs, spec section 12) and
round-trips through JSON, which is how bundles and checkpoints store it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Family = Literal["cifar", "imagenet"]
StepMode = Literal["even", "lg"]


class RANetConfig(BaseModel):
    """Hyper-parameters of one RANet.

    `family` selects the stem and classifier type: `cifar` (3x3 stem, 128-wide classifier convs) or
    `imagenet` (7x7/2 conv + max-pool stem, classifier convs as wide as their input).
    `classifier_channels` overrides the classifier conv width (not an official flag: the 128-wide
    CIFAR heads hold most of a small model's parameters, so small models narrow them). Lists are per
    sub-network, index 0 = lowest resolution, exactly as the official `--grFactor`, `--bnFactor` and
    `--scale-list` flags.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    family: Family = "cifar"
    num_classes: int = Field(10, ge=2)
    in_channels: int = Field(3, ge=1)
    image_size: int = Field(32, ge=8, description="square input side in pixels")
    n_channels: int = Field(16, ge=1)
    growth_rate: int = Field(6, ge=1)
    gr_factor: tuple[int, ...] = (4, 2, 1)
    bn_factor: tuple[int, ...] = (4, 2, 1)
    scale_list: tuple[int, ...] = (1, 2, 3)
    n_blocks: int = Field(2, ge=1)
    block_step: int = Field(2, ge=1)
    step: int = Field(2, ge=1)
    step_mode: StepMode = "lg"
    compress_factor: float = Field(0.25, gt=0.0, lt=1.0)
    reduction: float = Field(0.5, gt=0.0, le=1.0)
    classifier_channels: int | None = Field(None, ge=1, description="classifier conv width; None = family's")

    @model_validator(mode="after")
    def _check_structure(self) -> RANetConfig:
        n = len(self.scale_list)
        if n == 0:
            raise ValueError("scale_list must name at least one sub-network")
        if len(self.gr_factor) != n or len(self.bn_factor) != n:
            raise ValueError(
                f"gr_factor ({len(self.gr_factor)} entries), bn_factor ({len(self.bn_factor)}) and "
                f"scale_list ({n}) need one entry per sub-network"
            )
        if any(f < 1 for f in (*self.gr_factor, *self.bn_factor)):
            raise ValueError("gr_factor and bn_factor entries must be >= 1")
        if self.scale_list[0] != 1:
            raise ValueError(f"scale_list must start at resolution index 1 (lowest), got {self.scale_list}")
        for prev, cur in zip(self.scale_list, self.scale_list[1:], strict=False):
            if cur not in (prev, prev + 1):
                raise ValueError(
                    f"scale_list {self.scale_list}: consecutive sub-networks must keep or double the "
                    "resolution (each entry equal to the previous one or one more)"
                )
        if n > 1 and self.scale_list[1] == 1:
            raise ValueError(
                f"scale_list {self.scale_list} repeats the lowest resolution: the official code builds a "
                "broken network for this (spec section 12), so it is not supported"
            )
        for h in range(1, n):
            growth = self.growth_rate * self.gr_factor[h]
            from_coarse = math.floor(growth * self.compress_factor)
            if from_coarse < 1 or growth - from_coarse < 1:
                raise ValueError(
                    f"sub-network {h}: growth {growth} with compress_factor {self.compress_factor} leaves "
                    f"{from_coarse} channels from the coarser sub-network and {growth - from_coarse} from "
                    "its own; both must be >= 1"
                )
        final = self.lowest_resolution
        for _ in range(2):  # the two stride-2 classifier convs
            final = (final + 1) // 2
        if final // 2 != 1:
            raise ValueError(
                f"image_size {self.image_size} gives a {self.lowest_resolution}x{self.lowest_resolution} "
                "lowest resolution; the classifiers (two stride-2 convs and a 2x2 average pool) need "
                "5 to 12 pixels there"
            )
        from ranet_serve.model.layout import build_layout  # layout reads the config: import lazily

        for scale_blocks in build_layout(self).blocks:
            for block in scale_blocks:
                if block.out_channels < 1 or (block.fusion and block.last_channels < 1):
                    raise ValueError(
                        f"sub-network {block.scale} block {block.index}: reduction {self.reduction} / "
                        f"compress_factor {self.compress_factor} leave a layer with 0 channels"
                    )
        return self

    # -- derived facts -------------------------------------------------------------------------

    @property
    def num_scales(self) -> int:
        """Number of sub-networks (the official `nScales`)."""
        return len(self.scale_list)

    @property
    def stem_resolution(self) -> int:
        """Side of the highest-resolution stem output (ImageNet stems downsample by 4 first)."""
        size = self.image_size
        if self.family == "imagenet":
            size = (size + 1) // 2  # 7x7 stride-2 conv
            size = (size + 1) // 2  # 3x3 stride-2 max-pool
        return size

    @property
    def lowest_resolution(self) -> int:
        """Side of the feature maps every classifier reads."""
        size = self.stem_resolution
        for _ in range(self.scale_list[-1] - 1):
            size = (size + 1) // 2
        return size

    @property
    def blocks_per_scale(self) -> tuple[int, ...]:
        """Number of blocks of each sub-network (the official `nBlocks[1:]`)."""
        return tuple(self.n_blocks + h * self.block_step for h in range(self.num_scales))

    @property
    def num_exits(self) -> int:
        return self.n_blocks + (self.num_scales - 1) * self.block_step

    def classifier_width(self, in_channels: int) -> int:
        """Width of the classifier convs of an exit reading `in_channels` channels."""
        if self.classifier_channels is not None:
            return self.classifier_channels
        return 128 if self.family == "cifar" else in_channels

    def layers_at(self, position: int) -> int:
        """Dense layers of the block at 0-based `position` (the same in every sub-network)."""
        return self.step if self.step_mode == "even" else self.step * (position + 1)

    # -- serialisation -------------------------------------------------------------------------

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> RANetConfig:
        return cls.model_validate_json(text)

    @classmethod
    def from_official_args(cls, args: dict[str, object], name: str = "imported") -> RANetConfig:
        """Build a config from the official `args` namespace (as a dict, e.g. `vars(args)`)."""
        data = str(args.get("data", "cifar10"))
        family: Family = "cifar" if data.lower().startswith("cifar") else "imagenet"
        if data.startswith("cifar100"):
            classes = 100
        elif data.startswith("cifar10"):
            classes = 10
        else:
            classes = 1000

        def as_tuple(value: object) -> object:
            return value.split("-") if isinstance(value, str) else value

        # model_validate coerces the namespace's strings and numbers into the typed fields.
        return cls.model_validate(
            {
                "name": name,
                "family": family,
                "num_classes": classes,
                "image_size": 224 if family == "imagenet" else 32,
                "n_channels": args.get("nChannels", 16),
                "growth_rate": args.get("growthRate", 6),
                "gr_factor": as_tuple(args.get("grFactor", "4-2-1")),
                "bn_factor": as_tuple(args.get("bnFactor", "4-2-1")),
                "scale_list": as_tuple(args.get("scale_list", "1-2-3")),
                "n_blocks": args.get("nBlocks", 2),
                "block_step": args.get("block_step", 2),
                "step": args.get("step", 4),
                "step_mode": args.get("stepmode", "even"),
                "compress_factor": args.get("compress_factor", 0.25),
                "reduction": args.get("reduction", 0.5),
            }
        )


def load_config(name_or_path: str | Path, **overrides: object) -> RANetConfig:
    """Resolve a registered config name or a JSON file, then apply overrides (validated)."""
    from ranet_serve.model.registry import get_config

    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"config file {path} does not exist") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"config file {path} is not JSON: {exc}") from exc
        config = RANetConfig.model_validate(raw)
    else:
        config = get_config(str(name_or_path))
    if overrides:
        config = RANetConfig.model_validate({**config.model_dump(), **overrides})
    return config
