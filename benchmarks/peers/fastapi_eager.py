"""The 'what people write by hand' baseline: FastAPI + uvicorn + PyTorch eager, one file, no batching.

This is the common tutorial shape on purpose (an `async def` route taking an `UploadFile`, the model
called inline under `torch.no_grad()`, one image per request), so the benchmark shows what the usual
approach delivers next to ranet serve and TorchServe. It serves the bundle's checkpoint at full depth
with the bundle's preprocessing. Usage:

    .venv/bin/python benchmarks/peers/fastapi_eager.py --port 8090 [--bundle model_store/ranet-fmnist/1]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_depth import load_full_depth

ROOT = Path(__file__).resolve().parents[2]


def create_app(bundle_dir: Path) -> FastAPI:
    model, spec = load_full_depth(bundle_dir)
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    size = spec["size"]
    app = FastAPI(title="RANet full depth, FastAPI + eager")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, object]:
        image = Image.open(io.BytesIO(await file.read())).convert(spec["color_mode"])
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if spec["invert"]:
            pixels = 1.0 - pixels
        planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        x = torch.from_numpy((planes - mean) / std).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(model(x), dim=1)[0]
        index = int(probabilities.argmax())
        return {
            "class_index": index,
            "label": spec["labels"][index],
            "confidence": float(probabilities[index]),
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=ROOT / "model_store" / "ranet-fmnist" / "1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(create_app(args.bundle), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
