"""LitServe peer: the bundle's model at full depth as ONE onnxruntime graph, batched by LitServe.

This is the strongest plain peer we know how to write in a few lines (platform notes: LitServe +
onnxruntime beat TorchServe on these machines): LitServe's own dynamic batching (`max_batch_size=32`,
`batch_timeout=0.002` s, i.e. ranet serve's defaults), one inference worker on the CPU, and the whole
network as a single ONNX graph (`full_depth.export_onnx`, the same graph as the in-process split-cost
benchmark's monolithic one) in onnxruntime with 2 intra-op threads. No early exit: every image pays
for the full depth, which is what ranet serve is compared against.

Protocol: `POST /predict` with one multipart image in the field `file`, like the FastAPI baseline, so
the project's load generator (`PlainTarget`, multipart body) and `hey` drive it unchanged; the answer
is `{"class_index", "label", "confidence"}`. Images are decoded with Pillow and normalised with the
manifest's mean/std exactly as the other peers do ((p / 255 [inverted] - mean) / std).

The file is self-contained on purpose (onnxruntime, numpy, Pillow, litserve; no torch, no
ranet_serve): the graph and `preprocess.json` are written beforehand by the benchmark (peers_http.py)
into a work directory. Usage:

    .venv/bin/python benchmarks/peers/litserve_onnx.py --model DIR/full_depth.onnx \
        --preprocess DIR/preprocess.json --port 8091 [--threads 2]

No `from __future__ import annotations` here: LitServe reads the annotations of `decode_request` and
`encode_response` at run time to decide how to parse the body and build the response, and a string
annotation would not match what it compares with.
"""

import argparse
import io
import json
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort
from PIL import Image

MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_S = 0.002
API_PATH = "/predict"
FILE_FIELD = "file"

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def to_planes(payload: bytes, spec: dict[str, Any]) -> np.ndarray:
    """One encoded image -> float32 [C, H, W], normalised as every other peer does it."""
    size = int(spec["size"])
    image: Image.Image = Image.open(io.BytesIO(payload))
    image = image.convert(spec["color_mode"])
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLING[spec["interpolation"]])
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if spec["invert"]:
        pixels = 1.0 - pixels
    planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    return ((planes - mean) / std).astype(np.float32)


def session_options(threads: int) -> ort.SessionOptions:
    """Plain onnxruntime options: `threads` intra-op threads, one inter-op thread, full graph
    optimisation, and no spinning thread pool (a spinning pool stalls on these shared 2-core machines;
    ranet serve's sessions do not spin either, so neither side gets that handicap)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class FullDepthOnnxAPI(ls.LitAPI):
    """decode (Pillow + numpy) -> batch (stack) -> one onnxruntime call -> unbatch -> JSON per image."""

    def __init__(self, model_path: Path, preprocess: dict[str, Any], threads: int):
        super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path=API_PATH)
        # Only picklable facts here: LitServe sends this object to its worker process, which calls
        # setup() there; the session is created in the worker.
        self.model_path = str(model_path)
        self.preprocess = preprocess
        self.threads = threads
        self.session: ort.InferenceSession | None = None
        self.input_name = "image"
        self.output_name = ""

    def setup(self, device: str) -> None:
        self.session = ort.InferenceSession(
            self.model_path, sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        # The graph returns every exit's logits; a full-depth server answers with the last one.
        self.output_name = self.session.get_outputs()[-1].name

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        # Left unannotated on purpose: LitServe then parses a multipart body into a form (starlette
        # FormData) and passes that here; the image is the upload in the field `file`.
        upload = request[FILE_FIELD]
        payload = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        return to_planes(payload, self.preprocess)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.session is not None, "setup() runs before the first batch"
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(logits)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        shifted = np.exp(output - output.max())
        probabilities = shifted / shifted.sum()
        index = int(probabilities.argmax())
        return {
            "class_index": index,
            "label": self.preprocess["labels"][index],
            "confidence": float(probabilities[index]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="full_depth.onnx (full_depth.export_onnx)")
    parser.add_argument("--preprocess", type=Path, required=True, help="preprocess.json beside it")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    spec = json.loads(args.preprocess.read_text())
    api = FullDepthOnnxAPI(args.model.resolve(), spec, args.threads)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    # No client.py written into the working directory (LitServe's default), one API server process.
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
