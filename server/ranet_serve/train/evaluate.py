"""Per-exit softmax probabilities of a model over a dataset: the input of both paper protocols."""

from __future__ import annotations

import numpy as np
import torch

from ranet_serve.data.datasets import ImageArrays
from ranet_serve.data.transforms import normalize
from ranet_serve.model.ranet import RANet


@torch.no_grad()
def exit_probabilities(
    model: RANet, data: ImageArrays, batch_size: int = 256, device: torch.device | None = None
) -> np.ndarray:
    """Softmax probabilities of every exit, shape [exits, N, classes], float32.

    Evaluation transform only (normalisation): validation images never see training augmentation.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        for start in range(0, len(data), batch_size):
            batch = torch.from_numpy(data.images[start : start + batch_size])
            x = normalize(batch, data.mean, data.std).to(device)
            logits = model(x)
            chunks.append(torch.stack([torch.softmax(o.float(), dim=1) for o in logits]).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=1)


def accuracy_per_exit(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Top-1 accuracy (%) of every exit from [exits, N, classes] probabilities."""
    return [float(100.0 * np.mean(p.argmax(axis=1) == labels)) for p in probs]
