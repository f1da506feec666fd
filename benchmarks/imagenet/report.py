"""The step's section of REPORT.md: the setup in words, the bars, then every table.

run_all.py copies the Markdown this renders (imagenet_scale.md) into REPORT.md as it is; the bars'
own texts are built in bars.py from the two formatting helpers here, so a figure reads the same in the
goal table and in this section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cell(value: object, digits: int = 1) -> str:
    """A table cell: "-" for None, floats to `digits` decimals, anything else as str() writes it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verify_text(verify: Mapping[str, Any]) -> str:
    """`ranet verify`'s verdict and worst differences in one line (the bar and the export table)."""
    state = "passed" if verify["passed"] else f"FAILED (exit {verify['returncode']})"
    reported = verify.get("worst_rel_diff_reported")
    relative = f"; worst relative {reported:.1e}" if reported is not None else ""
    rule = f" (rule: {verify['rule']})" if verify.get("rule") else ""
    return (
        f"{state}: {verify['checks']} checks, worst |diff| {verify['worst_abs_diff']:.2e} = "
        f"{verify['worst_rel_diff_of_max_logit']:.1e} of the largest |logit| ({verify['max_abs_logit']:.1f})"
        f"{relative}{rule}"
    )


def render(result: Mapping[str, Any]) -> str:
    """The step's section of REPORT.md: setup, the bars, then every table."""
    model, export, verify, serve = result["model"], result["export"], result["verify"], result["serve"]
    config, bn, flops = model["config"], model["bn_reestimation"], result["cumulative_flops"]
    lines = [
        "## Serving at ImageNet scale (issue 21)",
        "",
        f"Config `{config['name']}` ({model['parameters'] / 1e6:.1f} M parameters, {len(flops)} exits, "
        f"{flops[-1] / 1e9:.2f} GFLOPs at the last), random weights with batch-norm statistics re-estimated "
        f"on {bn['batches']} x {bn['batch_size']} "
        "smooth random 224x224 images (train mode, cumulative average) so logits stay at a trained model's "
        f"scale (largest |logit| on verify's batch: {max(model['verify_logit_max_abs']):.1f}); saved in the "
        "official format (`{epoch, arch, state_dict (module.*), best_prec1, optimizer}`), "
        f"{model['checkpoint_bytes'] / 2**20:.0f} MiB. `ranet serve` with the server's own split of the "
        f"{result['machine']['cores']} cores.",
        "",
        "| bar | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for bar in result["bars"]:
        verdict = "not measured" if bar["met"] is None else ("met" if bar["met"] else "NOT met")
        lines.append(
            f"| {bar['goal'].removeprefix('ImageNet scale: ')} | {bar['target']} | "
            f"{bar['measured'] or '-'} | {verdict} |"
        )
    lines += [
        "",
        "### Export, verify, start-up, memory",
        "",
        "| | |",
        "|---|---|",
        f"| `ranet export` (child process) | {export['seconds']:.1f} s, peak RSS "
        f"{export['peak_rss_mb']:.0f} MiB |",
        f"| bundle on disk | {export['bundle_bytes'] / 2**20:.0f} MiB in {len(export['files'])} files |",
        f"| `ranet verify` (child process) | {verify_text(verify)}; {verify['seconds']:.1f} s, peak RSS "
        f"{verify['peak_rss_mb']:.0f} MiB |",
        f"| time to ready | {serve['ready_seconds']:.2f} s (process start to /readyz 200) |",
        f"| RSS after load | {serve['rss_after_load']['total_mib']:.0f} MiB: "
        + ", ".join(f"{p['role']} {p['rss_mib']:.0f}" for p in serve["rss_after_load"]["processes"])
        + " |",
        f"| RSS under load | peak {serve['rss_under_load_peak_mib']:.0f} MiB, mean "
        f"{serve['rss_under_load_mean_mib']:.0f} MiB (sampled every 0.5 s through steps e and g) |",
        "",
        "RSS is summed over the server's processes; shared pages count once per process.",
        "",
        "### Photos (JPEG quality 90, `resize_shorter_center_crop`), one image per request, sequential",
        "",
        "The server decodes with JPEG draft mode: "
        f"{'yes' if result.get('server_draft_decoding') else 'no (full decode)'}. Outside inference = client "
        "latency - the server's inference time: HTTP, upload, decode, preprocess, queue, answer.",
        "",
        "| photo | bytes | protocol | budget | statuses | label | exit | latency p50 ms | server inference "
        "p50 ms | outside inference p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["photos"]:
        lines.append(
            f"| {r['photo']} | {r['encoded_bytes']:,} | {r['protocol']} | {r['budget']} | "
            f"{'/'.join(map(str, r['statuses']))} | {cell(r['label'])} | {cell(r['exit'])} | "
            f"{cell(r['latency_ms_p50'])} | {cell(r['inference_ms_p50'])} | "
            f"{cell(r['outside_inference_ms_p50'])} |"
        )
    lines += [
        "",
        "### Decode + preprocess per image (in process, one image, median)",
        "",
        "| photo | full decode (before) ms | JPEG draft (after) ms | after / before | draft scale | "
        "model input mean / max abs diff | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, d in result["decode"].items():
        ratio = d["after_ms"] / d["before_ms"] if d.get("after_ms") and d.get("before_ms") else None
        raw = d.get("raw") or {}
        diff = f"{cell(raw.get('mean_abs_diff'), 3)} / {cell(raw.get('max_abs_diff'), 3)}" if raw else "-"
        lines.append(
            f"| {size} | {cell(d['before_ms'], 2)} | {cell(d.get('after_ms'), 2)} | {cell(ratio, 2)} "
            f"| {cell(raw.get('draft_scale'))} | {diff} | {d['source']} |"
        )
    lines += _budget_lines(result["budget"])
    lines += _projection_lines(result["gpu_projection"])
    return "\n".join(lines) + "\n"


def _budget_lines(budget: Mapping[str, Any]) -> list[str]:
    mix = ", ".join(
        f"{100 * m['share']:.0f}% {m['name']} (max_flops {m['exit_flops'] / 1e9:.3f} G)"
        for m in budget["mix"]
    )
    side = budget["image_side"]
    lines = [
        "",
        "### Budgets: a stated exit mix by `max_flops` against full depth",
        "",
        f"Mix: {mix}; every request with `confidence=1`, so each image runs exactly to its cap (random "
        f"weights' confidences mean nothing); full depth: every request `confidence=1`. {side}x{side} JPEGs "
        f"(decoding stays small), {budget['clients']} closed-loop clients on the "
        f"load generator's raw wire, {budget['phase_seconds']:g} s per phase after a warm-up. FLOPs ratio = "
        "full depth's FLOPs per image / the mix's, both as the server reported them per image (stated mix: "
        f"{budget['expected_flops_ratio']:.2f}).",
        "",
        "| images per request | full depth img/s | mix img/s | realised speedup | FLOPs ratio | realised / "
        "FLOPs ratio | mix exits served | p50 ms full / mix |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, e in budget["by_images_per_request"].items():
        exits = ", ".join(f"{k}: {v}" for k, v in e["mix"]["exit_counts"].items())
        lines.append(
            f"| {batch} | {e['full']['images_per_s']:.2f} | {e['mix']['images_per_s']:.2f} | "
            f"{cell(e['realised_speedup'], 2)} | {cell(e['flops_ratio'], 2)} | "
            f"{cell(e['share_of_flops_ratio'], 2)} | {exits} | {cell(e['full']['latency_p50_ms'])} / "
            f"{cell(e['mix']['latency_p50_ms'])} |"
        )
    return lines


def _projection_lines(projection: Mapping[str, Any]) -> list[str]:
    cpu = projection["cpu_exit_ms_batch1"]
    lines = [
        "",
        "### GPU projection (a projection, not a measurement: no GPU in this run)",
        "",
        f"Assumption: {projection['assumption']}.",
        "",
        "Measured here: server inference ms per exit at batch 1 (one engine thread) "
        + ", ".join(f"exit {k}: {ms:g}" for k, ms in enumerate(cpu))
        + " (effective "
        + ", ".join(cell(g) for g in projection["cpu_effective_gflops_by_exit"])
        + " GFLOP/s).",
        "",
        f"Projected: {projection['gpu_full_depth_ms_per_image']:.3f} ms of GPU compute per image at full "
        "depth, "
        f"{projection['gpu_full_depth_images_per_s']:.0f} img/s (the mix: "
        f"{cell(projection['gpu_mix_images_per_s'], 0)} img/s), about "
        f"{cell(projection['gpu_speedup_over_one_cpu_thread'], 0)}x one CPU thread here. Decoding then "
        "dominates: CPU cores needed to decode as fast as the GPU classifies:",
        "",
        "| photo, decode | decode ms per image (one core) | cores, full depth | cores, the mix |",
        "|---|---|---|---|",
    ]
    for name, c in projection["decode_cores_to_feed_gpu"].items():
        lines.append(f"| {name} | {c['decode_ms']} | {c['cores_full_depth']} | {cell(c['cores_mix'])} |")
    return lines
