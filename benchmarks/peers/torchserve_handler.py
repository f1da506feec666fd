"""TorchServe handler for the RANet bundle at full depth (TorchScript), written for this benchmark.

TorchServe's stock image handler needs torchvision, which these machines do not have; this one decodes
with Pillow and normalises with numpy, using the bundle's own input spec (`preprocess.json` in the
archive), so TorchServe sees exactly the tensors ranet serve computes. It is self-contained (torch,
numpy, Pillow only) because TorchServe imports it inside its own worker process.

TorchServe batches requests itself (`batchSize`, `maxBatchDelay` in config.properties) and hands the
handler a list of requests; the answer is one JSON object per request: class_index, label, confidence.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class RanetFullDepthHandler:
    """initialize(context) loads the model; handle(data, context) answers one batch of requests."""

    def __init__(self) -> None:
        self.model: Any = None
        self.spec: dict[str, Any] = {}
        self.scale: np.ndarray = np.ones(1, dtype=np.float32)
        self.offset: np.ndarray = np.zeros(1, dtype=np.float32)
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties.get("model_dir"))
        self.spec = json.loads((model_dir / "preprocess.json").read_text())
        # The same intra-op thread count as the server it is compared with (set by the benchmark).
        torch.set_num_threads(int(os.environ.get("RANET_PEER_THREADS", torch.get_num_threads())))
        self.model = torch.jit.load(str(model_dir / "full_depth.pt"), map_location="cpu").eval()
        logging.getLogger(__name__).info("ranet full depth: %d torch threads", torch.get_num_threads())
        mean = np.asarray(self.spec["mean"], dtype=np.float64)[:, None, None]
        std = np.asarray(self.spec["std"], dtype=np.float64)[:, None, None]
        # x = (p / 255 - mean) / std, or with inversion ((1 - p / 255) - mean) / std: one multiply-add.
        if self.spec.get("invert"):
            scale, offset = -1.0 / (255.0 * std), (1.0 - mean) / std
        else:
            scale, offset = 1.0 / (255.0 * std), -mean / std
        self.scale = scale.astype(np.float32)
        self.offset = offset.astype(np.float32)
        self.initialized = True

    def _tensor(self, payload: bytes) -> np.ndarray:
        size = int(self.spec["size"])
        image: Image.Image = Image.open(io.BytesIO(payload))
        image = image.convert(self.spec["color_mode"])
        if image.size != (size, size):
            image = image.resize((size, size), RESAMPLING[self.spec["interpolation"]])
        pixels = np.asarray(image, dtype=np.float32)
        planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return planes * self.scale + self.offset

    @staticmethod
    def _payload(row: dict[str, Any]) -> bytes:
        """The image of one request. TorchServe puts a raw body under "body" and each multipart form
        field under its own name: "data" in TorchServe's examples, "file" from the load generator's
        and hey's multipart requests (the field every multipart peer here reads)."""
        return bytes(row.get("data") or row.get("body") or row.get("file") or b"")

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        batch = np.stack([self._tensor(self._payload(row)) for row in data])
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(torch.from_numpy(batch)), dim=1)
        confidence, index = probabilities.max(dim=1)
        labels = self.spec["labels"]
        return [
            {"class_index": int(k), "label": labels[int(k)], "confidence": float(c)}
            for k, c in zip(index.tolist(), confidence.tolist(), strict=True)
        ]
