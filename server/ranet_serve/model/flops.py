"""FLOPs and parameters per exit with the official counter's semantics (spec section 8).

The official `op_counter.measure_model` hooks every leaf module during one forward pass of a
1 x C x H x W zero image and snapshots its running totals at each Linear layer. Counted: conv
multiply-accumulates (C_in * C_out * k * k * H_out * W_out / groups), ReLU input elements, pooling
(C * H_out * W_out * k * k), Linear weights + biases. Not counted: BN, interpolation, concatenation,
conv bias. Exit k's figure is cumulative and includes every earlier classifier head, which is exactly
what a cascade spends to reach exit k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ranet_serve.model.ranet import RANet


@dataclass(frozen=True)
class ExitCost:
    """Cumulative cost of reaching one exit (official units: FLOPs = multiply-adds + ReLU + pool)."""

    flops: int
    params: int


def _leaf_flops(module: nn.Module, x: Tensor, out: Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return (
            module.in_channels * module.out_channels * kh * kw * out.shape[2] * out.shape[3] // module.groups
        )
    if isinstance(module, nn.ReLU):
        return x.numel()
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return out.shape[0] * out.shape[1] * out.shape[2] * out.shape[3] * k * k
    if isinstance(module, nn.Linear):
        bias = module.bias.numel() if module.bias is not None else 0
        return x.shape[0] * (module.weight.numel() + bias)
    if isinstance(module, nn.BatchNorm2d | nn.Identity | nn.Dropout):
        return 0
    raise TypeError(f"the FLOPs counter has no rule for {type(module).__name__}")


def count_exit_costs(model: RANet) -> list[ExitCost]:
    """Cumulative FLOPs and parameters at every exit, in exit order."""
    config = model.config
    totals = {"flops": 0, "params": 0}
    snapshots: list[ExitCost] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        totals["flops"] += _leaf_flops(module, inputs[0], out)
        totals["params"] += sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Linear):
            snapshots.append(ExitCost(flops=totals["flops"], params=totals["params"]))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, config.in_channels, config.image_size, config.image_size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return snapshots


def cumulative_flops(model: RANet) -> list[int]:
    """Cumulative FLOPs per exit: what a cascade spends to reach exit k."""
    return [cost.flops for cost in count_exit_costs(model)]


def stage_flops(model: RANet) -> list[int]:
    """FLOPs of each stage alone: the cost between exit k-1 and exit k."""
    cumulative = cumulative_flops(model)
    return [cur - prev for prev, cur in zip([0, *cumulative[:-1]], cumulative, strict=True)]
