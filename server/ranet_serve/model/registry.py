"""Registry of the published RANet configurations (spec section 4), addressable by name.

Configs are data: each published model is one line of numbers over a shared base, registered once
per class count, so the CLI and bundle manifests can name a config as a string
(`cifar10-model1`, `imagenet-model2`, `fmnist-default`).
"""

from __future__ import annotations

from ranet_serve.model.config import RANetConfig

# CIFAR defaults shared by every published CIFAR model (official args.py defaults).
_CIFAR_BASE: dict[str, object] = {
    "family": "cifar",
    "image_size": 32,
    "n_channels": 16,
    "growth_rate": 6,
    "n_blocks": 2,
    "block_step": 2,
    "compress_factor": 0.25,
    "reduction": 0.5,
}

_CIFAR_MODELS: dict[str, dict[str, object]] = {
    # budgeted-batch models (official README; Boosted-DNN model1..3 scripts)
    "model1": {
        "step": 2,
        "step_mode": "lg",
        "scale_list": (1, 2, 3),
        "gr_factor": (4, 2, 1),
        "bn_factor": (4, 2, 1),
    },
    "model2": {
        "step": 2,
        "step_mode": "lg",
        "scale_list": (1, 2, 2, 3),
        "gr_factor": (4, 2, 2, 1),
        "bn_factor": (4, 2, 2, 1),
    },
    "model3": {
        "step": 2,
        "step_mode": "lg",
        "scale_list": (1, 2, 3, 3),
        "gr_factor": (4, 2, 1, 1),
        "bn_factor": (4, 2, 1, 1),
    },
    # anytime-prediction model (official train_cifar.sh)
    "anytime": {
        "step": 4,
        "step_mode": "even",
        "scale_list": (1, 2, 3, 3),
        "gr_factor": (4, 2, 1, 1),
        "bn_factor": (4, 2, 1, 1),
    },
}

_IMAGENET_BASE: dict[str, object] = {
    "family": "imagenet",
    "num_classes": 1000,
    "image_size": 224,
    "growth_rate": 16,
    "step": 8,
    "step_mode": "even",
    "scale_list": (1, 2, 3, 4),
    "gr_factor": (4, 2, 2, 1),
    "bn_factor": (4, 2, 2, 1),
    "n_blocks": 2,
    "block_step": 2,
    "compress_factor": 0.25,
    "reduction": 0.5,
}

_IMAGENET_MODELS: dict[str, dict[str, object]] = {
    "model1": {"n_channels": 32},
    "model2": {"n_channels": 64},
}

# The project's default model: 3 resolutions (28, 14, 7), 6 exits, grayscale, sized to train on a
# 2-core CPU in about an hour (see model_store/ranet-fmnist/1/MODEL_CARD.md). With the CIFAR family's
# 128-wide classifier convs the heads would hold 1.2 M of its 1.67 M parameters and make a 21 MB
# bundle; 64-wide heads give 0.69 M parameters. (48-wide, 0.52 M, trained once for 14 epochs, missed
# the default point's accuracy bar on test.)
_FMNIST_DEFAULT: dict[str, object] = {
    "family": "cifar",
    "num_classes": 10,
    "in_channels": 1,
    "image_size": 28,
    "n_channels": 12,
    "growth_rate": 6,
    "gr_factor": (4, 2, 1),
    "bn_factor": (4, 2, 1),
    "scale_list": (1, 2, 3),
    "n_blocks": 2,
    "block_step": 2,
    "step": 2,
    "step_mode": "even",
    "compress_factor": 0.25,
    "reduction": 0.5,
    "classifier_channels": 64,
}


def _build_registry() -> dict[str, RANetConfig]:
    registry: dict[str, RANetConfig] = {}
    for classes in (10, 100):
        for model, numbers in _CIFAR_MODELS.items():
            name = f"cifar{classes}-{model}"
            registry[name] = RANetConfig.model_validate(
                {**_CIFAR_BASE, **numbers, "name": name, "num_classes": classes}
            )
    for model, numbers in _IMAGENET_MODELS.items():
        name = f"imagenet-{model}"
        registry[name] = RANetConfig.model_validate({**_IMAGENET_BASE, **numbers, "name": name})
    registry["fmnist-default"] = RANetConfig.model_validate({**_FMNIST_DEFAULT, "name": "fmnist-default"})
    return registry


_REGISTRY = _build_registry()


def list_configs() -> list[str]:
    """Names of every registered config, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> RANetConfig:
    """Return the registered config `name`; raise ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown RANet config {name!r}; known configs: {', '.join(list_configs())}"
        ) from None
