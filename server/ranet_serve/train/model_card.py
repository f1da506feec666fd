"""MODEL_CARD.md for a bundle: data, config, per-exit FLOPs and accuracy, curves, how it was made.

Everything in the card is read from the manifest and the training checkpoint, so the card cannot
drift from the weights it describes.
"""

from __future__ import annotations

import platform
import statistics
from pathlib import Path
from typing import Any

from ranet_serve.export.manifest import Manifest


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_model_card(
    manifest: Manifest,
    *,
    commands: list[str],
    training: dict[str, Any] | None = None,
    plots: list[str] | None = None,
) -> str:
    """The card as Markdown. `training` is the training checkpoint's recipe and history."""
    config = manifest.config
    last = manifest.exits[-1]
    lines = [
        f"# Model card: {manifest.name} version {manifest.version}",
        "",
        f"RANet (Resolution Adaptive Network, CVPR 2020) config `{config.name}`: {config.num_scales} "
        f"resolutions, {config.num_exits} exits, {config.num_classes} classes, input "
        f"{config.in_channels}x{config.image_size}x{config.image_size} ({manifest.input.color_mode}).",
        "",
        "## How it was made",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    if training is not None:
        recipe = training.get("recipe", {})
        history = training.get("history", [])
        epoch_seconds = [float(h.get("seconds", 0.0)) for h in history]
        seconds = sum(epoch_seconds)
        # The median epoch too: the total includes any time the machine was shared or the run paused.
        median = f", median epoch {statistics.median(epoch_seconds):.0f} s" if epoch_seconds else ""
        lines += [
            f"Training: {recipe.get('epochs')} epochs, batch {recipe.get('batch_size')}, SGD momentum "
            f"{recipe.get('momentum')}, LR {recipe.get('lr')} ({recipe.get('schedule')}), weight decay "
            f"{recipe.get('weight_decay')}, random crop (padding {recipe.get('crop_padding')}) + horizontal "
            f"flip, loss = sum of per-exit cross-entropy, seed {recipe.get('seed')}, "
            f"{recipe.get('threads')} CPU threads.",
            f"Wall time {seconds / 60:.1f} min on {platform.machine()} ({platform.processor() or 'cpu'})"
            f"{median}, "
            f"checkpoint of epoch {int(training.get('epoch', -1)) + 1} (best last-exit validation accuracy).",
            "",
        ]
    lines += [
        "## Data",
        "",
        "Fashion-MNIST from Debian's `dataset-fashion-mnist` package (MIT licence): 60,000 training and "
        "10,000 test images, 28x28 grayscale, 10 balanced classes. 5,000 training images (fixed by the "
        "seed, indices stored in the training checkpoint) are held out as the validation split used for "
        "model selection and threshold calibration; the test split is used only for reporting.",
        "",
        "## Exits",
        "",
        "| exit | stage MFLOPs | cumulative MFLOPs | share of last exit | val acc % | test acc % |",
        "|---|---|---|---|---|---|",
    ]
    for stage, exit_ in zip(manifest.stages, manifest.exits, strict=True):
        lines.append(
            f"| {exit_.index} | {stage.flops / 1e6:.3f} | {exit_.cumulative_flops / 1e6:.3f} | "
            f"{100 * exit_.cumulative_flops / last.cumulative_flops:.1f}% | {_pct(exit_.val_accuracy)} | "
            f"{_pct(exit_.test_accuracy)} |"
        )
    calibration = manifest.calibration
    if calibration is not None:
        default = calibration.point(calibration.default_point)
        lines += [
            "",
            "## Default operating point",
            "",
            f"`{default.name}` ({default.method}): thresholds "
            f"{', '.join(f'{t:.4f}' for t in default.thresholds)}; "
            f"{default.expected_flops / 1e6:.3f} MFLOPs per image on validation "
            f"({100 * default.expected_flops / last.cumulative_flops:.1f}% of the last exit), "
            f"validation accuracy {default.val_accuracy:.2f}% "
            f"(last exit {calibration.last_exit_val_accuracy:.2f}%), "
            f"test accuracy {_pct(default.test_accuracy)}% at "
            f"{(default.test_expected_flops or 0) / 1e6:.3f} MFLOPs per image.",
            "",
            "Rule: the cheapest calibrated point whose validation accuracy is within 0.5 percentage points "
            "of the last exit's.",
            "",
            "## Operating points",
            "",
            "| point | method | val MFLOPs | val acc % | test MFLOPs | test acc % |",
            "|---|---|---|---|---|---|",
        ]
        for p in calibration.points:
            test_flops = "-" if p.test_expected_flops is None else f"{p.test_expected_flops / 1e6:.3f}"
            lines.append(
                f"| {p.name} | {p.method} | {p.expected_flops / 1e6:.3f} | {p.val_accuracy:.2f} | "
                f"{test_flops} | {_pct(p.test_accuracy)} |"
            )
    if plots:
        lines += ["", "## Curves", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)
