"""Loading weights: this project's checkpoints and checkpoints written by the official training script.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is untrusted input and must not
be able to run code. The official key quirks are handled in one place, `normalize_state_dict`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ranet_serve.model.config import RANetConfig
from ranet_serve.model.ranet import RANet


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the config it is loaded into."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely onto the CPU (CUDA tensors of official checkpoints included)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests loading with weights_only=False: exactly what must not happen.
        raise CheckpointError(
            f"refused checkpoint {path}: not a weights-only torch checkpoint ({_unpickler_reason(exc)}); "
            "only tensors and plain containers are read, nothing else is unpickled"
        ) from exc
    except Exception as exc:  # torch raises several unrelated types for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from exc
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")
    return dict(raw)


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler found ("Unsupported global: GLOBAL x.Y was not an allowed global
    by default", "Unsupported operand 149"), without torch's advice to load with weights_only=False."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        after = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if after:
            return after[0].split(". ", 1)[0].rstrip(".")[:200]
    for line in text.splitlines():
        if "unsupported" in line.lower():
            return line.strip().rstrip(".")[:200]
    return "a disallowed object"


def normalize_state_dict(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    """Extract a bare state_dict from any accepted checkpoint layout.

    Accepted: the official training dict (`{"state_dict": ..., "optimizer": ..., ...}`), this project's
    training dict (same key), or a bare state_dict. The official script trains under
    `torch.nn.DataParallel`, so its keys carry a `module.` prefix; it is stripped here and nowhere else.
    """
    state = raw.get("state_dict", raw)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError("checkpoint has no state_dict (expected a dict of tensors)")
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        cleaned[key.removeprefix("module.")] = value
    return cleaned


def load_weights(model: RANet, state: Mapping[str, Tensor], *, assign: bool = False) -> None:
    """Load `state` into `model` strictly, explaining the first mismatches in terms of the config.

    `assign`: the model takes `state`'s tensors as its own instead of copying them into its existing
    ones (see `model_from_state`); floating-point entries are made float32 first.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, first: {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first: {', '.join(unexpected[:3])}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys with wrong shapes, first: {'; '.join(wrong_shape[:3])}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit config {model.config.name!r} "
            f"({model.config.model_dump_json(exclude={'name'})}): " + " | ".join(problems)
        )
    if assign:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(dict(state), strict=True, assign=assign)


def model_from_state(config: RANetConfig, state: Mapping[str, Tensor]) -> RANet:
    """A RANet of `config` whose parameters and buffers are `state`'s tensors, in eval mode.

    The model is built on the meta device and takes the loaded tensors over, so loading holds one copy
    of the weights, not two: a RANet built on the CPU first fills every parameter with its random
    initialisation only to have it overwritten (0.5 GB of imagenet-model1's 131 M parameters; the
    peak RSS of loading it went from 1.25 to 0.82 GB).
    """
    with torch.device("meta"):
        model = RANet(config)
    load_weights(model, state, assign=True)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # every tensor of a RANet is in its state_dict; anything else would be a bug here
        raise CheckpointError(f"tensors not set by the checkpoint: {', '.join(left[:3])}")
    return model.eval()


def load_model(path: str | Path, config: RANetConfig | None = None) -> RANet:
    """Build a RANet and load a checkpoint into it, in eval mode.

    This project's checkpoints carry their config; an official checkpoint needs `config` (its file
    records only the weights). An explicit `config` always wins.
    """
    raw = read_checkpoint(path)
    if config is None:
        stored = raw.get("config")
        if stored is None:
            raise CheckpointError(
                f"{path} does not record its config (an official checkpoint?): pass the config name or file"
            )
        config = RANetConfig.model_validate(stored)
    return model_from_state(config, normalize_state_dict(raw))


def save_checkpoint(path: str | Path, model: RANet, **extra: Any) -> None:
    """Write a checkpoint this project and `torch.load(weights_only=True)` can read back.

    Only plain containers, numbers, strings and tensors are stored (the config as a dict), so a
    weights-only load of it never needs to unpickle a class.
    """
    payload: dict[str, Any] = {
        "format": "ranet-serve-checkpoint/1",
        "config": model.config.model_dump(mode="json"),
        "state_dict": model.state_dict(),
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left beside a failed save
        raise
