"""Step h: what a GPU would do with this model, from the CPU figures and stated assumptions.

No GPU is measured here, so this is arithmetic, labelled as a projection wherever it is shown: compute
per image from the counted FLOPs and a fraction of a datasheet peak, and the CPU cores decoding would
then need to keep that GPU fed, from the decode times measured in step f.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# NVIDIA's H100 SXM datasheet: 67 TFLOP/s FP32 on CUDA cores; a dense net of many small convolutions
# and concatenations reaches a fraction of it.
GPU_NAME = "H100 SXM"
GPU_FP32_TFLOPS = 67.0
GPU_EFFICIENCY = 0.2
OPS_PER_COUNTED_FLOP = 2  # the official counter counts a multiply-add once; a GPU does two operations


def gpu_projection(
    cumulative: Sequence[int],
    cpu_exit_ms: Sequence[float],
    decode: Mapping[str, Any],
    flops_ratio: float | None,
) -> dict[str, Any]:
    """What a GPU would do with this model, from the CPU figures and stated assumptions (not measured).

    Compute per image at a large batch = counted FLOPs x 2 / (peak FP32 x efficiency). Decoding stays on
    the CPU: cores needed to keep the GPU fed = GPU images/s x decode ms per image / 1000.
    """
    effective = GPU_FP32_TFLOPS * 1e12 * GPU_EFFICIENCY
    full_ms = 1000.0 * OPS_PER_COUNTED_FLOP * cumulative[-1] / effective
    full_rate = 1000.0 / full_ms
    mix_rate = full_rate * flops_ratio if flops_ratio else None
    cpu_gflops = [
        round(OPS_PER_COUNTED_FLOP * f / (ms / 1000.0) / 1e9, 1) if ms else None
        for f, ms in zip(cumulative, cpu_exit_ms, strict=True)
    ]
    cores: dict[str, Any] = {}
    for size, figures in decode.items():
        for mode in ("before_ms", "after_ms"):
            ms = figures.get(mode)
            if ms is None:
                continue
            cores[f"{size} {mode[:-3]}"] = {
                "decode_ms": round(ms, 2),
                "cores_full_depth": round(full_rate * ms / 1000.0, 1),
                "cores_mix": None if mix_rate is None else round(mix_rate * ms / 1000.0, 1),
            }
    return {
        "assumption": f"{GPU_NAME}, {GPU_FP32_TFLOPS:g} TFLOP/s FP32 (CUDA cores, datasheet) at "
        f"{100 * GPU_EFFICIENCY:.0f}% efficiency at a large batch; {OPS_PER_COUNTED_FLOP} operations per "
        "counted FLOP (the official counter counts a multiply-add once); compute proportional to FLOPs; "
        "decoding and preprocessing on the CPU, one image per core at the measured ms",
        "cpu_exit_ms_batch1": list(cpu_exit_ms),
        "cpu_effective_gflops_by_exit": cpu_gflops,
        "gpu_full_depth_ms_per_image": round(full_ms, 3),
        "gpu_full_depth_images_per_s": round(full_rate, 0),
        "gpu_mix_images_per_s": None if mix_rate is None else round(mix_rate, 0),
        "cpu_full_depth_ms_per_image": cpu_exit_ms[-1] if cpu_exit_ms else None,
        "gpu_speedup_over_one_cpu_thread": round(cpu_exit_ms[-1] / full_ms, 0) if cpu_exit_ms else None,
        "decode_cores_to_feed_gpu": cores,
    }
