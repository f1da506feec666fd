"""The training loop: sum of per-exit cross-entropy, SGD with momentum, checkpoint every epoch.

The loss is the official one (unweighted sum over exits, spec section 9). Model selection uses the
last exit's accuracy on the held-out validation split, evaluated without augmentation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ranet_serve.data.datasets import ImageArrays
from ranet_serve.data.sources import load_splits
from ranet_serve.data.transforms import normalize, random_crop_flip
from ranet_serve.model.checkpoint import read_checkpoint, save_checkpoint
from ranet_serve.model.config import load_config
from ranet_serve.model.ranet import RANet
from ranet_serve.train.evaluate import accuracy_per_exit, exit_probabilities
from ranet_serve.train.recipe import TrainRecipe


@dataclass
class TrainResult:
    checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate(recipe: TrainRecipe, progress: float) -> float:
    """LR at `progress` epochs (fractional) into training."""
    if recipe.schedule == "cosine":
        return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * progress / recipe.epochs))
    drops = sum(progress >= m * recipe.epochs for m in recipe.milestones)
    return recipe.lr * (0.1**drops)


def train(
    recipe: TrainRecipe,
    out_dir: Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train per `recipe`, writing `out_dir/last.pt` every epoch and `out_dir/best.pt` on improvement."""
    torch.manual_seed(recipe.seed)
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    device = resolve_device(recipe.device)
    config = load_config(recipe.config)
    splits = load_splits(
        recipe.dataset,
        val_size=recipe.val_size,
        seed=recipe.seed,
        data_dir=recipe.data_dir,
        image_size=config.image_size,
        channels=config.in_channels,
    )
    if splits.train.images.shape[1] != config.in_channels:
        raise ValueError(
            f"config {config.name} expects {config.in_channels} input channels, "
            f"{recipe.dataset} has {splits.train.images.shape[1]}"
        )
    train_data = splits.train
    if recipe.max_train_images is not None:
        train_data = train_data.subset(np.arange(min(recipe.max_train_images, len(train_data))))

    model = RANet(config).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    use_amp = recipe.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator().manual_seed(recipe.seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start_epoch, best_acc, history = 0, -1.0, []
    if resume and last_path.is_file():
        state = read_checkpoint(last_path)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch, best_acc, history = (
            int(state["epoch"]) + 1,
            float(state["best_val_acc"]),
            list(state["history"]),
        )

    images = torch.from_numpy(train_data.images)
    labels = torch.from_numpy(train_data.labels)
    steps_per_epoch = math.ceil(len(train_data) / recipe.batch_size)
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train_data), generator=generator)
        loss_sum, correct, seen = 0.0, torch.zeros(config.num_exits), 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress)
        for step in bar:
            lr = learning_rate(recipe, epoch + step / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            batch = images[idx]
            if recipe.crop_padding > 0 or recipe.flip:
                batch = random_crop_flip(batch, recipe.crop_padding, generator, flip=recipe.flip)
            x = normalize(batch, train_data.mean, train_data.std).to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                outputs = model(x)
                loss = sum((F.cross_entropy(o, y) for o in outputs), torch.zeros((), device=device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                loss_sum += float(loss) * len(idx)
                seen += len(idx)
                correct += torch.stack([(o.argmax(1) == y).sum() for o in outputs]).cpu().float()
            if step % 20 == 0:
                accs = " ".join(f"{100 * c / seen:.1f}" for c in correct.tolist())
                bar.set_postfix_str(f"loss {loss_sum / seen:.3f} acc/exit {accs} lr {lr:.4f}")
        val_acc = exit_accuracies(model, splits.val, device=device)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_acc": (100 * correct / seen).tolist(),
            "val_acc": val_acc,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        improved = val_acc[-1] > best_acc
        best_acc = max(best_acc, val_acc[-1])
        extra = {
            "epoch": epoch,
            "best_val_acc": best_acc,
            "history": history,
            "recipe": recipe.model_dump(mode="json"),
            "val_indices": torch.from_numpy(splits.val_indices),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
        }
        save_checkpoint(last_path, model.cpu(), **extra)
        if improved:
            save_checkpoint(best_path, model, **{k: v for k, v in extra.items() if k != "optimizer"})
        model.to(device)
        if on_epoch is not None:  # after the checkpoint: a crash in the callback loses nothing
            on_epoch(record)
    return TrainResult(checkpoint=last_path, best_checkpoint=best_path, history=history)


def exit_accuracies(model: RANet, data: ImageArrays, device: torch.device | None = None) -> list[float]:
    """Top-1 accuracy (%) of every exit on `data`, evaluation transform only."""
    return accuracy_per_exit(exit_probabilities(model, data, device=device), data.labels)
