"""Per-stage exporters: ONNX (dynamo exporter, dynamic batch axis) and TorchScript (traced, frozen).

A stage's forward is pure tensor code with static spatial shapes and no data-dependent control flow,
so tracing captures it completely; only the batch axis varies at run time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from ranet_serve.model.stages import RANetStage

ONNX_OPSET = 20


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters are chatty (deprecations, torchvision notices): keep the CLI output readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield None
        finally:
            logging.disable(previous)


def export_stage_onnx(stage: RANetStage, example: tuple[Tensor, ...], path: Path) -> None:
    """Write `stage` as an ONNX graph with named inputs/outputs and a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            stage,
            example,
            input_names=list(stage.spec.inputs),
            output_names=list(stage.spec.outputs),
            dynamic_shapes=(tuple({0: batch} for _ in example),),
            dynamo=True,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
        assert program is not None
        program.save(str(path))


def export_stage_torchscript(stage: RANetStage, example: tuple[Tensor, ...], path: Path) -> None:
    """Write `stage` as a frozen TorchScript module (positional inputs, tuple output).

    The traced module is frozen after a round trip through a file, not directly. Freezing inlines the
    weights into the graph as constants, and a traced module's graph stays in the process-wide Python
    compilation unit, which is never freed: frozen in place, every stage left a copy of its weights
    behind for the rest of the process (imagenet-model1's stage 1, 106 MB of weights: +107 MB of RSS
    per export, for good). A module loaded from a file has a compilation unit of its own that goes
    with it (+2 MB per export). Through a file rather than an in-memory buffer: the buffer's copies
    raised the peak by 530 MB for that stage, the file by 210 MB (the loaded and the frozen module).
    The written file is the same frozen module.
    """
    traced_path = path.with_name(path.name + ".traced")
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(stage.eval(), example, check_trace=False)
            torch.jit.save(traced, str(traced_path))
            del traced
            loaded = torch.jit.load(str(traced_path)).eval()
            frozen = torch.jit.freeze(loaded)
            del loaded
            torch.jit.save(frozen, str(path))
    finally:
        traced_path.unlink(missing_ok=True)
