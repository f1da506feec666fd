"""/metrics moves exactly as the responses say: exits, FLOPs, budget cuts, statuses."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from helpers.metrics import delta, scrape, value

FULL_DEPTH = 12649895


def test_counters_follow_the_responses(client: httpx.Client, images: list[bytes]) -> None:
    before = scrape(client)
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    answers = []
    for params in ({}, {"max_flops": "3M"}, {"confidence": 1.0}, {"target_flops": "2.5M"}):
        response = client.post("/v1/models/tiny/classify", files=files, params=params)
        assert response.status_code == 200
        answers.extend(response.json()["results"])
    bad = client.post("/v1/models/tiny/classify", files=files, params={"max_flops": "1k"})
    assert bad.status_code == 422
    after = scrape(client)

    exits = Counter(r["exit"] for r in answers)
    for k in range(6):
        assert delta(before, after, "ranet_exit_total", model="tiny", exit=str(k)) == exits.get(k, 0)
    assert sum(delta(before, after, "ranet_exit_total", model="tiny", exit=str(k)) for k in range(6)) == len(
        answers
    )
    assert delta(before, after, "ranet_images_total", model="tiny") == len(answers)
    assert delta(before, after, "ranet_flops_total", model="tiny") == sum(r["flops"] for r in answers)
    assert delta(before, after, "ranet_full_depth_flops_total", model="tiny") == FULL_DEPTH * len(answers)
    assert delta(before, after, "ranet_budget_limited_total", model="tiny") == sum(
        r["budget_limited"] for r in answers
    )
    assert delta(before, after, "ranet_requests_total", model="tiny", status="200") == 4
    assert delta(before, after, "ranet_requests_total", model="tiny", status="422") == 1
    assert delta(before, after, "ranet_rejected_total", model="tiny", reason="invalid_budget") == 1
    assert delta(before, after, "ranet_request_duration_seconds_count", model="tiny") == 5
    assert delta(before, after, "ranet_queue_duration_seconds_count", model="tiny") == 4
    assert delta(before, after, "ranet_flops_per_image_count", model="tiny") == len(answers)
    assert delta(before, after, "ranet_exit_confidence_count", model="tiny", exit="0") == exits[0]
    assert delta(before, after, "ranet_exit_latency_seconds_count", model="tiny", exit="5") == exits[5]
    assert delta(before, after, "ranet_batch_size_count", model="tiny", stage="0") >= 4
    assert delta(before, after, "ranet_stage_duration_seconds_count", model="tiny", stage="0") >= 4

    assert 0.0 <= value(after, "ranet_flops_saved_ratio", model="tiny") < 1.0
    assert value(after, "ranet_inflight_requests", model="tiny") == 0


def test_model_info_and_operating_point(client: httpx.Client) -> None:
    samples = scrape(client)
    for version in ("1", "2"):
        assert (
            value(
                samples, "ranet_model_info", model="tiny", version=version, config="fmnist-default", exits="6"
            )
            == 1
        )
    balanced = (5210532 + 7604693) / 2
    assert value(samples, "ranet_operating_point", model="tiny") == balanced


def test_latency_buckets_start_at_half_a_millisecond(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert 'ranet_request_duration_seconds_bucket{le="0.0005",model="tiny",protocol="http"}' in text
    assert 'ranet_stage_duration_seconds_bucket{le="0.0005",model="tiny",stage="0"}' in text


def test_unknown_models_share_one_label(client: httpx.Client) -> None:
    before = scrape(client)
    for name in ("a1", "b2", "c3"):
        assert (
            client.post(
                f"/v1/models/{name}/classify", content=b"x", headers={"Content-Type": "image/png"}
            ).status_code
            == 404
        )
    after = scrape(client)
    assert delta(before, after, "ranet_requests_total", model="unknown", status="404") == 3
    assert not any(labels and ("model", "a1") in labels for _, labels in after)


def test_flops_saved_ratio_follows_recent_images_not_the_whole_history() -> None:
    from ranet_serve.cascade.results import BatchResult, ImageResult
    from ranet_serve.metrics import SAVED_RATIO_HALF_LIFE_IMAGES, EngineMetrics

    def batch(flops: int, count: int) -> BatchResult:
        image = ImageResult(
            exit=0,
            class_index=0,
            confidence=0.9,
            top_k=((0, 0.9),),
            flops=flops,
            budget_limited=False,
            seconds=0.001,
        )
        return BatchResult(images=(image,) * count, stage_seconds=(0.001,), stage_batch_sizes=(count,))

    metrics = EngineMetrics()
    metrics.observe_batch("m", 100, batch(25, 10))
    ratio = metrics.flops_saved_ratio.labels("m")._value.get()
    assert ratio == pytest.approx(0.75)  # first images: the plain ratio
    for _ in range(8 * SAVED_RATIO_HALF_LIFE_IMAGES // 64):
        metrics.observe_batch("m", 100, batch(100, 64))  # then only full-depth images
    assert metrics.flops_saved_ratio.labels("m")._value.get() < 0.01
