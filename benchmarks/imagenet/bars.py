"""Issue 21's bars, judged from the step's figures: the rows it adds to run_all.py's goal table.

run_all.py imports `bars` (through imagenet_scale.py) and calls it on the step's JSON, or on None when
the step did not run, so the goal table always lists every bar; the step writes the same rows into its
own JSON and report. Judging lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imagenet.budget import IMAGES_PER_REQUEST, SPEEDUP_SHARE_OF_FLOPS_RATIO
from imagenet.photos import PHOTO_SIZES
from imagenet.report import cell, verify_text

BAR_NAMES: tuple[tuple[str, str], ...] = (
    ("export of an official-format checkpoint (child process)", "completes; time and peak RSS reported"),
    ("ranet verify: every exit, ONNX and TorchScript vs PyTorch", "passes"),
    ("time to ready (process start to /readyz 200)", "reported"),
    ("RSS of the server's process tree, after load / under load", "reported"),
    (
        "decode + preprocess per image, full decode / JPEG draft",
        f"both sizes reported; draft faster at {PHOTO_SIZES[-1][0]}x{PHOTO_SIZES[-1][1]}",
    ),
    ("photos over v1 (multipart) and v2 (binary), resize_shorter_center_crop", "200 with a label, both"),
    *(
        (
            f"exit mix by max_flops, {n} image{'s' if n > 1 else ''} per request: "
            "realised speedup / FLOPs ratio",
            f">= {SPEEDUP_SHARE_OF_FLOPS_RATIO:.2f}",
        )
        for n in IMAGES_PER_REQUEST
    ),
)


def _bar(index: int, measured: str | None, met: bool | None) -> dict[str, Any]:
    goal, target = BAR_NAMES[index]
    return {"goal": f"ImageNet scale: {goal}", "target": target, "measured": measured, "met": met}


def bars(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 21's bars with the measured figures (None: not measured), for run_all.py's goal table."""
    if not result:
        return [_bar(i, None, None) for i in range(len(BAR_NAMES))]
    export, verify, serve = result["export"], result["verify"], result["serve"]
    rows = [
        _bar(
            0,
            f"{export['seconds']:.0f} s, peak RSS {export['peak_rss_mb']:.0f} MiB; bundle "
            f"{_mib(export['bundle_bytes'])} MiB from a {_mib(result['model']['checkpoint_bytes'])} MiB "
            "checkpoint",
            True,
        ),
        _bar(1, verify_text(verify), bool(verify["passed"])),
        _bar(2, f"{serve['ready_seconds']:.1f} s", True),
        _bar(
            3,
            f"{serve['rss_after_load']['total_mib']:.0f} MiB after load, peak "
            f"{serve['rss_under_load_peak_mib']:.0f} MiB under load",
            True,
        ),
        _decode_bar(result["decode"]),
        _photo_bar(result["photos"]),
    ]
    for i, batch in enumerate(IMAGES_PER_REQUEST):
        entry = result["budget"]["by_images_per_request"].get(str(batch))
        rows.append(_speedup_bar(6 + i, entry))
    return rows


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f}"


def _decode_bar(decode: Mapping[str, Any]) -> dict[str, Any]:
    """Both sizes reported; met when draft decoding is faster on the largest photo, the one it is for
    (a 500x375 photo has no 2x to spare over the 256-pixel shorter side: draft mode leaves it as is)."""
    parts = [
        f"{size}: {cell(f.get('before_ms'))} / {cell(f.get('after_ms'))} ms" for size, f in decode.items()
    ]
    largest = decode[f"{PHOTO_SIZES[-1][0]}x{PHOTO_SIZES[-1][1]}"] if decode else {}
    before, after = largest.get("before_ms"), largest.get("after_ms")
    met = None if before is None or after is None or len(decode) < len(PHOTO_SIZES) else after < before
    return _bar(4, ", ".join(parts), met)


def _photo_bar(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    fine = [r for r in rows if r["all_200"] and r["sane"]]
    text = f"{len(fine)} of {len(rows)} (size x protocol x budget) all 200 with a label at the capped exit"
    return _bar(5, text, bool(rows) and len(fine) == len(rows))


def _speedup_bar(index: int, entry: Mapping[str, Any] | None) -> dict[str, Any]:
    if not entry or entry["share_of_flops_ratio"] is None:
        return _bar(index, None, None)
    return _bar(
        index,
        f"{entry['share_of_flops_ratio']:.2f} ({entry['realised_speedup']:.2f}x vs FLOPs ratio "
        f"{entry['flops_ratio']:.2f}; {entry['mix']['images_per_s']:.1f} vs "
        f"{entry['full']['images_per_s']:.1f} img/s)",
        bool(entry["met"]),
    )
