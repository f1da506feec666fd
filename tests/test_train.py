"""Training: a short run lowers the loss, checkpoints every epoch and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ranet_serve.data.datasets import FASHION_MNIST_DIR, load_fashion_mnist, split_validation
from ranet_serve.model.checkpoint import load_model, read_checkpoint
from ranet_serve.model.config import load_config
from ranet_serve.train.loop import learning_rate, train
from ranet_serve.train.recipe import TrainRecipe, recipe_from_preset

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)",
)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> TrainRecipe:
    config = load_config("fmnist-default", n_channels=4, growth_rate=4, name="fmnist-tiny")
    config_path = tmp_path / "tiny.json"
    config_path.write_text(config.to_json())
    return recipe_from_preset(
        "fmnist-default", config=str(config_path), epochs=3, batch_size=32, max_train_images=320, threads=1
    ).model_copy(update={"val_size": 200})


@needs_fmnist
def test_short_training_run_lowers_the_loss_and_checkpoints_each_epoch(tiny_recipe, tmp_path: Path) -> None:
    seen: list[int] = []
    result = train(tiny_recipe, tmp_path / "run", progress=False, on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [0, 1, 2]
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    state = read_checkpoint(result.checkpoint)  # weights_only load
    assert state["epoch"] == 2 and len(state["history"]) == 3
    assert state["recipe"]["config"] == tiny_recipe.config
    assert len(state["val_indices"]) == 200
    model = load_model(result.best_checkpoint)  # config recovered from the checkpoint itself
    assert model.config.name == "fmnist-tiny" and model.num_exits == 6
    # Validation accuracy is recorded per exit and better than chance at the last exit.
    assert len(result.history[-1]["val_acc"]) == 6
    assert result.history[-1]["val_acc"][-1] > 20.0


@needs_fmnist
def test_resume_continues_exactly_where_training_stopped(tiny_recipe, tmp_path: Path) -> None:
    straight = train(tiny_recipe.model_copy(update={"epochs": 2}), tmp_path / "straight", progress=False)
    interrupted = tmp_path / "interrupted"

    class Crash(Exception):
        pass

    def crash(record: dict) -> None:
        raise Crash

    with pytest.raises(Crash):  # dies right after epoch 0's checkpoint
        train(tiny_recipe.model_copy(update={"epochs": 2}), interrupted, progress=False, on_epoch=crash)
    resumed = train(tiny_recipe.model_copy(update={"epochs": 2}), interrupted, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    a = read_checkpoint(straight.checkpoint)["state_dict"]
    b = read_checkpoint(resumed.checkpoint)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_validation_split_is_fixed_by_the_seed_and_disjoint() -> None:
    rng = np.random.default_rng(0)
    from ranet_serve.data.datasets import ImageArrays

    data = ImageArrays(
        rng.integers(0, 255, (100, 1, 4, 4), dtype=np.uint8),
        np.arange(100) % 10,
        tuple("abcdefghij"),
        (0.5,),
        (0.5,),
    )
    train_a, val_a, idx_a = split_validation(data, 20, seed=3)
    _, _, idx_b = split_validation(data, 20, seed=3)
    _, _, idx_c = split_validation(data, 20, seed=4)
    np.testing.assert_array_equal(idx_a, idx_b)
    assert not np.array_equal(idx_a, idx_c)
    assert len(train_a) == 80 and len(val_a) == 20
    assert set(train_a.labels.tolist() + val_a.labels.tolist()) <= set(range(10))
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train_a.images[:, 0, 0, 0], val_a.images[:, 0, 0, 0]])),
        np.sort(data.images[:, 0, 0, 0]),
    )


def test_learning_rate_schedules() -> None:
    cosine = TrainRecipe(epochs=10, lr=0.1, schedule="cosine")
    assert learning_rate(cosine, 0) == pytest.approx(0.1)
    assert learning_rate(cosine, 5) == pytest.approx(0.05)
    assert learning_rate(cosine, 10) == pytest.approx(0.0, abs=1e-12)
    steps = TrainRecipe(epochs=300, lr=0.1, schedule="multistep", milestones=(0.5, 0.75))
    assert [learning_rate(steps, e) for e in (0, 149, 150, 224, 225)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )


@needs_fmnist
def test_fashion_mnist_loads_from_the_debian_package() -> None:
    test = load_fashion_mnist("test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names[9] == "Ankle boot"


def test_recipe_presets_carry_the_papers_numbers() -> None:
    cifar = recipe_from_preset("cifar")
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.momentum, cifar.weight_decay) == (
        300,
        64,
        0.1,
        0.9,
        1e-4,
    )
    assert cifar.schedule == "multistep" and cifar.crop_padding == 4
    with pytest.raises(ValueError, match="unknown preset"):
        recipe_from_preset("mnist")
    assert json.loads(TrainRecipe().model_dump_json())["dataset"] == "fashion-mnist"
