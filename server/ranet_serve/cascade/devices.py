"""Devices the stages run on: naming them (`cpu`, `cuda`, `cuda:1`) and ordering work on a GPU.

Why ordering needs care: torch queues its kernels (the survivor gathers, concatenations, the copy of
the images to the device) on its current CUDA stream, and onnxruntime's CUDA provider queues the
stages on a stream of its own. A run with I/O binding does not wait for the bound inputs to be
written, and torch's caching allocator may hand a freed block to the next tensor while a kernel
queued on the other stream still reads it. Nothing orders the two streams unless we do:
`StreamOrder` gives onnxruntime a stream owned by the runtime and joins it to torch's current stream
with events on both sides of every stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ranet_serve.settings import DEVICE_PATTERN

_DEVICE = re.compile(DEVICE_PATTERN)


def parse_device(name: str) -> torch.device:
    """The torch device a setting names: `cpu`, `cuda` (the current CUDA device) or `cuda:N`.

    `cuda` resolves to its index here, so onnxruntime, the bound buffers and torch all name the
    same device (onnxruntime has no notion of torch's current device).
    """
    if not _DEVICE.match(name) or name == "auto":
        raise ValueError(f"device {name!r}: expected cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device is visible to this process")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r}: this process sees {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0"
            )
        device = torch.device("cuda", index)
    return device


def device_index(device: torch.device) -> int:
    """The index onnxruntime's bindings and provider options take (0 on the CPU)."""
    return device.index or 0


class StreamOrder:
    """Orders a foreign runtime's work on `device` against torch's current stream (no-op on the CPU).

    Use: pass `handle` to the foreign runtime as its compute stream, and run each call inside
    `ordered()`. On entry the runtime's stream waits for everything torch has queued so far (the
    inputs are written); on exit torch's current stream waits for everything the runtime queued (the
    outputs are written, and the inputs are no longer read, so torch may free and reuse them).
    Both waits are events queued on the GPU: the host does not block.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream: torch.cuda.Stream | None = (
            torch.cuda.Stream(device=device) if device.type == "cuda" else None
        )

    @property
    def handle(self) -> int | None:
        """The raw `cudaStream_t` of the runtime's stream, as an integer; None on the CPU."""
        return None if self.stream is None else int(self.stream.cuda_stream)

    @contextmanager
    def ordered(self) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        try:
            yield
        finally:
            current.wait_stream(self.stream)
