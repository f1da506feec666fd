"""The bundle's trained RANet at full depth, for the peer servers (TorchServe, hand-written FastAPI).

Peers must serve the very model ranet serve serves, so everything comes from the bundle: the weights
from its `checkpoint.pt` (read with `torch.load(weights_only=True)` by ranet_serve's own loader), the
architecture from its manifest's config, the preprocessing from its input spec. Full depth means the
plain network forward: every exit is computed (RANet's forward has no early exit) and the answer is
the last exit's, which is what a server without an exit policy returns.

Two exported forms: TorchScript (TorchServe) and one whole-network ONNX graph (LitServe with
onnxruntime), the latter built by the very exporter the in-process split-cost benchmark uses for its
monolithic graph (`inprocess.export_monolithic`), so "one ONNX graph" means the same thing everywhere.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ranet_serve.export.bundle import Bundle, load_bundle
from ranet_serve.model.ranet import RANet


class LastExit(nn.Module):
    """Runs the whole RANet (all exits) and returns the last exit's logits."""

    def __init__(self, model: RANet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[-1]


def preprocess_facts(bundle: Bundle) -> dict[str, Any]:
    """The preprocessing facts a peer needs (JSON-ready), from the bundle's manifest alone."""
    spec = bundle.manifest.input
    if spec.resize != "resize":
        raise ValueError(f"the peers implement the 'resize' input policy only, not {spec.resize!r}")
    return {
        "model": bundle.manifest.name,
        "version": bundle.manifest.version,
        "channels": spec.channels,
        "color_mode": spec.color_mode,
        "size": spec.size,
        "interpolation": spec.interpolation,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "invert": spec.invert,
        "labels": list(bundle.manifest.labels),
        "last_exit_flops": bundle.manifest.exits[-1].cumulative_flops,
        "exits": len(bundle.manifest.exits),
    }


def load_full_depth(bundle_dir: Path) -> tuple[LastExit, dict[str, Any]]:
    """The eval-mode full-depth model and the preprocessing facts a peer needs (JSON-ready)."""
    bundle = load_bundle(bundle_dir)
    preprocess = preprocess_facts(bundle)
    return LastExit(bundle.load_model()).eval(), preprocess


def export_torchscript(bundle_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write `full_depth.pt` (traced, frozen TorchScript) and `preprocess.json` into `out_dir`.

    Tracing is exact here: the forward has static shapes except the batch axis and no data-dependent
    control flow. The traced module is checked against eager on a batch before it is saved.
    """
    model, preprocess = load_full_depth(bundle_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.randn(4, preprocess["channels"], preprocess["size"], preprocess["size"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
        check = torch.randn(7, *example.shape[1:])
        torch.testing.assert_close(frozen(check), model(check), rtol=1e-4, atol=1e-4)
        model_path = out_dir / "full_depth.pt"
        torch.jit.save(frozen, str(model_path))
    preprocess_path = out_dir / "preprocess.json"
    preprocess_path.write_text(json.dumps(preprocess, indent=2) + "\n")
    return model_path, preprocess_path


def export_onnx(bundle_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write `full_depth.onnx` (the whole network as one graph) and `preprocess.json` into `out_dir`.

    The graph is `inprocess.export_monolithic`'s (every exit an output, dynamic batch axis): reused
    rather than re-written, so the LitServe peer runs exactly the graph whose cost the split-cost
    benchmark compares ranet serve's stages with. A peer asks onnxruntime for the last exit's output
    only. The graph's last exit is checked against the eager model on a batch before it is kept.
    """
    import onnxruntime as ort

    benchmarks = str(Path(__file__).resolve().parents[1])
    if benchmarks not in sys.path:  # inprocess.py lives one level up; the peers import it lazily
        sys.path.append(benchmarks)
    from inprocess import export_monolithic

    bundle = load_bundle(bundle_dir)
    preprocess = preprocess_facts(bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "full_depth.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_monolithic(bundle, model_path)
    check = torch.randn(7, preprocess["channels"], preprocess["size"], preprocess["size"])
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    last = session.get_outputs()[-1].name
    (logits,) = session.run([last], {session.get_inputs()[0].name: check.numpy()})
    with torch.no_grad():
        expected = bundle.load_model().eval()(check)[-1]
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)
    preprocess_path = out_dir / "preprocess.json"
    preprocess_path.write_text(json.dumps(preprocess, indent=2) + "\n")
    return model_path, preprocess_path
