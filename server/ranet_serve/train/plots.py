"""PNG plots of the paper's two protocols (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ranet_serve.export.manifest import OperatingPoint


def plot_accuracy_vs_flops(
    geometric: list[OperatingPoint],
    optimized: list[OperatingPoint],
    anytime_flops: list[int],
    anytime_accuracy: list[float],
    out: Path,
    title: str,
) -> Path:
    """Budgeted batch (both threshold searches, test split) with the anytime exits as steps."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for points, label, style in (
        (geometric, "geometric prior (paper)", "o-"),
        (optimized, "optimized", "s-"),
    ):
        pts = sorted(_test_or_val(p) for p in points)
        ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], style, markersize=3, label=label)
    ax.step(
        [f / 1e6 for f in anytime_flops],
        anytime_accuracy,
        where="post",
        color="gray",
        alpha=0.7,
        label="anytime (single exit)",
    )
    ax.scatter([f / 1e6 for f in anytime_flops], anytime_accuracy, color="gray", s=12)
    ax.set_xlabel("average MFLOPs per image (test)")
    ax.set_ylabel("top-1 accuracy % (test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _test_or_val(point: OperatingPoint) -> tuple[float, float]:
    """(FLOPs, accuracy) on the test split, or on validation when the point has no test figures."""
    if point.test_accuracy is not None and point.test_expected_flops is not None:
        return point.test_expected_flops, point.test_accuracy
    return point.expected_flops, point.val_accuracy


def plot_exit_distribution(points: list[OperatingPoint], out: Path, title: str) -> Path:
    """Share of validation images leaving at each exit, per operating point (stacked bars)."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    num_exits = len(points[0].exit_distribution)
    bottoms = [0.0] * len(points)
    positions = list(range(len(points)))
    for k in range(num_exits):
        shares = [p.exit_distribution[k] for p in points]
        ax.bar(positions, shares, bottom=bottoms, label=f"exit {k}")
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    ax.set_xticks(positions, [f"{p.expected_flops / 1e6:.1f}" for p in points], rotation=90, fontsize=6)
    ax.set_xlabel("operating point (validation MFLOPs per image)")
    ax.set_ylabel("share of images")
    ax.set_title(title)
    ax.legend(fontsize=7, ncols=num_exits, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
