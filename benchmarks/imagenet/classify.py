"""Steps e and h's input: one image classified over either protocol a user would pick, with timings.

v1 takes the JPEG as a multipart part with the knobs in the query; v2 takes it as one BYTES tensor in
the binary extension (no base64, which would add a third to a 3.5 MB photo). Both answers are read
into one `Answer`, so the photo table compares the protocols on the same fields: the client's latency
and the server's own inference time, the difference being everything outside inference.
"""

from __future__ import annotations

import json
import statistics
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    """One image's answer as either protocol carries it, with the request's timings."""

    status: int
    latency_ms: float
    label: str | None = None
    class_index: int | None = None
    exit: int | None = None
    flops: int | None = None
    inference_ms: float | None = None


def classify_v1(client: Any, url: str, model: str, data: bytes, knobs: Mapping[str, object]) -> Answer:
    """One JPEG as a multipart `files` part to /v1/models/<model>/classify, knobs in the query."""
    started = time.perf_counter()
    response = client.post(
        f"{url}/v1/models/{model}/classify",
        params={k: str(v) for k, v in knobs.items()},
        files=[("files", ("photo.jpg", data, "image/jpeg"))],
    )
    latency = 1000.0 * (time.perf_counter() - started)
    if response.status_code != 200:
        return Answer(response.status_code, latency)
    body = response.json()
    result = body["results"][0]
    return Answer(
        200,
        latency,
        result["label"],
        int(result["class_index"]),
        int(result["exit"]),
        int(result["flops"]),
        float(body["timings"]["inference_ms"]),
    )


def v2_binary_request(
    images: Sequence[bytes], parameters: Mapping[str, object]
) -> tuple[bytes, dict[str, str]]:
    """A v2 request with the images as one BYTES tensor in the binary extension (no base64)."""
    payload = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(payload)},
            }
        ],
        "parameters": dict(parameters),
    }
    encoded = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(encoded)),
        "Content-Type": "application/octet-stream",
    }
    return encoded + payload, headers


def classify_v2(client: Any, url: str, model: str, data: bytes, knobs: Mapping[str, object]) -> Answer:
    """One JPEG to /v2/models/<model>/infer, knobs as request parameters; JSON outputs back."""
    body, headers = v2_binary_request([data], knobs)
    started = time.perf_counter()
    response = client.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers)
    latency = 1000.0 * (time.perf_counter() - started)
    if response.status_code != 200:
        return Answer(response.status_code, latency)
    document = response.json()
    outputs = {o["name"]: o["data"][0] for o in document["outputs"]}
    return Answer(
        200,
        latency,
        str(outputs["label"]),
        int(outputs["class_index"]),
        int(outputs["exit"]),
        int(outputs["flops"]),
        float(document["parameters"]["inference_ms"]),
    )


def _p50(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def photo_runs(
    url: str, model: str, photos: Mapping[str, bytes], budgets: Mapping[str, dict[str, Any]], repeats: int
) -> list[dict[str, Any]]:
    """Step e: every photo size x protocol x budget, `repeats` sequential requests after one warm-up."""
    import httpx

    rows = []
    with httpx.Client(timeout=120.0) as client:
        for size, data in photos.items():
            for protocol, call in (("v1 multipart", classify_v1), ("v2 binary", classify_v2)):
                for budget, spec in budgets.items():
                    call(client, url, model, data, spec["knobs"])  # warm-up: connection, caches
                    answers = [call(client, url, model, data, spec["knobs"]) for _ in range(repeats)]
                    rows.append(_photo_row(size, len(data), protocol, budget, spec["exit"], answers))
    return rows


def _photo_row(
    size: str, encoded: int, protocol: str, budget: str, expected_exit: int, answers: Sequence[Answer]
) -> dict[str, Any]:
    ok = [a for a in answers if a.status == 200]
    outside = [a.latency_ms - a.inference_ms for a in ok if a.inference_ms is not None]
    sane = bool(ok) and all(bool(a.label) and a.exit == expected_exit for a in ok)
    return {
        "photo": size,
        "encoded_bytes": encoded,
        "protocol": protocol,
        "budget": budget,
        "requests": len(answers),
        "statuses": sorted({a.status for a in answers}),
        "all_200": len(ok) == len(answers),
        "sane": sane,
        "label": ok[0].label if ok else None,
        "exit": ok[0].exit if ok else None,
        "flops": ok[0].flops if ok else None,
        "latency_ms_p50": _p50([a.latency_ms for a in ok]),
        "inference_ms_p50": _p50([a.inference_ms for a in ok if a.inference_ms is not None]),
        "outside_inference_ms_p50": _p50(outside),
    }


def exit_times(url: str, model: str, image: bytes, cumulative: Sequence[int], repeats: int) -> list[float]:
    """Server inference ms of one 224x224 image capped at each exit (best of `repeats`): the CPU's
    per-exit cost at batch 1, which the GPU projection starts from."""
    import httpx

    times = []
    with httpx.Client(timeout=120.0) as client:
        for flops in cumulative:
            knobs = {"max_flops": flops, "confidence": 1}
            answers = [classify_v1(client, url, model, image, knobs) for _ in range(repeats + 1)][1:]
            measured = [a.inference_ms for a in answers if a.inference_ms is not None]
            if not measured:
                raise SystemExit(f"no answer capped at {flops} FLOPs: statuses {[a.status for a in answers]}")
            times.append(round(min(measured), 2))
    return times
