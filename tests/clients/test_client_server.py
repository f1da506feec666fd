"""The sync and async clients against the real server on 127.0.0.1: every call, every input kind and
encoding, every budget knob, and the mapping of the server's real error answers to exceptions."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from ranet_client import (
    AsyncRanetClient,
    BudgetError,
    ClassifyResponse,
    DeadlineExceededError,
    InvalidInputError,
    ModelInfo,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RanetClient,
    RetryPolicy,
    ServerError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from ranet_client._protocol import error_from_response
from ranet_client.image_sets import Sample

from helpers.bundles import make_store
from helpers.server import RunningServer, settings_for


def _check_result_is_consistent(answer: ClassifyResponse, info: ModelInfo) -> None:
    """Every result names a real class and an exit, and its FLOPs are that exit's cumulative cost."""
    version = info.version(answer.version)
    for result in answer.results:
        assert version.labels[result.class_index] == result.label
        assert 0 <= result.exit < len(version.exits)
        assert result.flops == version.exits[result.exit].cumulative_flops
        assert 0.0 < result.confidence <= 1.0
        assert result.top_k[0].class_index == result.class_index


def test_classify_one_image_returns_typed_results(
    server_url: str, tiny_info: ModelInfo, samples: list[Sample]
):
    with RanetClient(server_url) as client:
        answer = client.classify(samples[0].data)
    assert (answer.model, answer.version, answer.operating_point) == ("tiny", "2", "balanced")
    assert len(answer.results) == 1 and len(answer.result.top_k) == 1
    assert answer.timings.total_ms >= answer.timings.inference_ms >= 0
    _check_result_is_consistent(answer, tiny_info)


def test_every_input_kind_is_sent_as_an_image(
    server_url: str, tiny_info: ModelInfo, samples: list[Sample], tmp_path: Path
) -> None:
    path = tmp_path / samples[1].name
    path.write_bytes(samples[1].data)
    pixels = np.asarray(Image.open(io.BytesIO(samples[2].data)))
    inputs = [
        path,
        str(path),
        samples[1].data,
        Image.open(io.BytesIO(samples[1].data)),
        pixels,
        np.stack([pixels] * 3, axis=-1),
        io.BytesIO(samples[1].data),
    ]
    with RanetClient(server_url) as client:
        answer = client.classify(inputs, confidence=1.0)
    assert len(answer.results) == len(inputs)
    _check_result_is_consistent(answer, tiny_info)
    same = {(r.class_index, r.exit) for i, r in enumerate(answer.results) if i in (0, 1, 2, 3, 6)}
    assert len(same) == 1  # one image sent five ways gets one answer


@pytest.mark.parametrize("encoding", ["multipart", "json", "raw"])
def test_every_encoding_carries_images_and_knobs(
    server_url: str, samples: list[Sample], encoding: str
) -> None:
    with RanetClient(server_url, encoding=encoding) as client:  # type: ignore[arg-type]
        reference = client.classify(
            samples[3].data, encoding="multipart", operating_point="full-depth", top_k=3
        )
        answer = client.classify(samples[3].data, operating_point="full-depth", top_k=3)
    assert answer.operating_point == "full-depth" and len(answer.result.top_k) == 3
    assert (answer.result.class_index, answer.result.exit) == (
        reference.result.class_index,
        reference.result.exit,
    )


def test_max_flops_caps_the_exit_as_a_number_or_a_string(server_url: str, tiny_info: ModelInfo, samples):
    exits = tiny_info.latest.exits  # type: ignore[union-attr]
    cap = exits[1].cumulative_flops
    with RanetClient(server_url) as client:
        for value in (cap, float(cap), f"{cap / 1e3}k", str(cap)):
            answer = client.classify([s.data for s in samples[:4]], max_flops=value, confidence=1.0)
            assert {r.exit for r in answer.results} == {1}, value
            assert all(r.budget_limited and r.flops == cap for r in answer.results)


def test_budget_knobs_choose_thresholds_and_operating_points(server_url: str, tiny_info: ModelInfo, samples):
    latest = tiny_info.latest
    assert latest is not None
    fast = next(p for p in latest.operating_points if p.name == "fast")
    images = [s.data for s in samples[:4]]
    last = len(latest.exits) - 1
    with RanetClient(server_url) as client:
        by_target = client.classify(images, target_flops=fast.expected_flops)
        assert by_target.operating_point == "fast" and {r.exit for r in by_target.results} == {0}
        deepest = client.classify(images, confidence=1.0)
        assert {r.exit for r in deepest.results} == {last} and not any(
            r.budget_limited for r in deepest.results
        )
        custom = client.classify(images, thresholds=[0.0] * len(latest.exits))
        assert custom.operating_point == "custom-thresholds" and {r.exit for r in custom.results} == {0}
        as_text = client.classify(images, thresholds=",".join(["1.0"] * len(latest.exits)))
        assert {r.exit for r in as_text.results} == {last}
        named = client.classify(images, operating_point="full-depth", top_k=10)
        assert named.operating_point == "full-depth"
        probabilities = [t.probability for t in named.result.top_k]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(
            1, 1e-4
        )


def test_model_and_version_select_what_serves(server_url: str, samples: list[Sample]) -> None:
    with RanetClient(server_url, model="tiny") as client:
        assert client.classify(samples[0].data, version="1").version == "1"
        assert client.classify(samples[0].data).version == "2"
        assert client.classify(samples[0].data, model="tiny", version=2).version == "2"  # type: ignore[arg-type]


def test_catalogue_health_readiness_and_metrics(server_url: str) -> None:
    with RanetClient(server_url) as client:
        catalogue = client.models()
        info = client.model("tiny")
        live, ready, metrics = client.health(), client.ready(), client.metrics()
        assert client.wait_ready(timeout=5).ready
    assert catalogue.default_model == "tiny" and catalogue.get("tiny") == info
    assert info.default_version == "2" and [v.version for v in info.versions] == ["1", "2"]
    latest = info.latest
    assert latest is not None and latest.ready and len(latest.exits) == 6
    assert latest.input is not None and (latest.input.channels, latest.input.size) == (1, 28)
    assert len(latest.labels) == 10 and latest.default_operating_point == "balanced"
    assert {p.name for p in latest.operating_points} == {"fast", "balanced", "full-depth"}
    assert latest.cheapest_exit_flops == latest.exits[0].cumulative_flops > 0
    assert live.live and ready.ready and ready.models == {"tiny": ("1", "2")}
    assert "ranet_requests_total" in metrics and "ranet_exit_total" in metrics


def test_async_client_makes_every_call(server_url: str, tiny_info: ModelInfo, samples: list[Sample]) -> None:
    async def run() -> None:
        async with AsyncRanetClient(server_url) as client:
            answers = await asyncio.gather(
                *(
                    client.classify(s.data, max_flops=tiny_info.latest.exits[2].cumulative_flops)
                    for s in samples[:6]
                )  # type: ignore[union-attr]
            )
            for answer in answers:
                _check_result_is_consistent(answer, tiny_info)
                assert answer.result.exit <= 2
            batch = await client.classify([s.data for s in samples[:3]], encoding="json", top_k=2)
            assert len(batch.results) == 3 and all(len(r.top_k) == 2 for r in batch.results)
            assert (await client.models()).default_model == "tiny"
            assert (await client.model("tiny")).name == "tiny"
            assert (await client.health()).live and (await client.ready()).ready
            assert (await client.wait_ready(timeout=5)).ready
            assert "ranet_images_total" in await client.metrics()
            with pytest.raises(BudgetError):
                await client.classify(samples[0].data, max_flops=1)
            with pytest.raises(NotFoundError):
                await client.model("no-such-model")

    asyncio.run(run())


# -- the server's real error answers -----------------------------------------------------------------


def test_max_flops_below_the_cheapest_exit_is_a_budget_error_naming_its_cost(
    server_url: str, tiny_info: ModelInfo, samples: list[Sample]
) -> None:
    cheapest = tiny_info.latest.cheapest_exit_flops  # type: ignore[union-attr]
    with RanetClient(server_url) as client, pytest.raises(BudgetError) as caught:
        client.classify(samples[0].data, max_flops=cheapest - 1)
    error = caught.value
    assert (error.status, error.code) == (422, "invalid_budget") and error.attempts == 1
    assert error.details.get("cheapest_exit_flops") == cheapest


def test_request_errors_map_to_their_exception_classes(
    ranet_server: RunningServer, server_url: str, samples: list[Sample]
) -> None:
    image = samples[0].data
    too_many = ranet_server.settings.max_images_per_request + 1
    with RanetClient(server_url) as client:
        cases = [
            (lambda: client.classify(image, model="no-such-model"), NotFoundError, 404),
            (lambda: client.model("no-such-model"), NotFoundError, 404),
            (lambda: client.classify(image, version="9"), NotFoundError, 404),
            (lambda: client.classify([image] * too_many), PayloadTooLargeError, 413),
            (lambda: client.classify(b"definitely not an image"), InvalidInputError, 400),
            (lambda: client.classify(image, top_k=0), ValidationError, 422),
            (lambda: client.classify(image, confidence=2.0), ValidationError, 422),
            (lambda: client.classify(image, max_flops="lots"), ValidationError, 422),
            (lambda: client.classify(image, deadline_ms=-1), ValidationError, 422),
        ]
        for call, cls, status in cases:
            with pytest.raises(cls) as caught:
                call()
            assert caught.value.status == status, (cls, caught.value)
            assert caught.value.message and caught.value.code


def test_unsupported_media_type_maps_to_415(server_url: str) -> None:
    answer = httpx.post(f"{server_url}/v1/classify", content=b"hello", headers={"Content-Type": "text/plain"})
    error = error_from_response(answer)
    assert isinstance(error, UnsupportedMediaTypeError) and error.status == 415


def test_a_failing_stage_is_a_server_error_with_an_id_and_is_not_retried(
    ranet_server: RunningServer, server_url: str, samples: list[Sample]
) -> None:
    ranet_server.faults.fail_next = 1
    waits: list[float] = []
    with RanetClient(server_url, sleep=waits.append) as client, pytest.raises(ServerError) as caught:
        client.classify(samples[0].data)
    assert caught.value.status == 500 and caught.value.error_id and waits == []


def test_a_missed_deadline_is_a_504(
    ranet_server: RunningServer, server_url: str, samples: list[Sample]
) -> None:
    ranet_server.faults.stage_delay = 0.2
    with RanetClient(server_url) as client, pytest.raises(DeadlineExceededError) as caught:
        client.classify(samples[0].data, deadline_ms=50)
    assert caught.value.status == 504


# -- a real 429 from a full queue, retried after the server's Retry-After -----------------------------


@pytest.fixture(scope="module")
def tight_server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose queue holds one request, so a third concurrent request is refused with 429."""
    store = make_store(tmp_path_factory.mktemp("tight-store"), tiny_bundle_dir)
    running = RunningServer(settings_for(store, max_queue_size=1, max_batch_size=1)).start()
    yield running
    running.stop()


def _inflight(client: RanetClient) -> float:
    for line in client.metrics().splitlines():
        if line.startswith('ranet_inflight_requests{model="tiny"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_full_queue_answers_429_and_the_client_retries_after_retry_after(
    tight_server: RunningServer, samples: list[Sample]
) -> None:
    faults = tight_server.faults
    faults.reset()
    faults.gate.clear()
    faults.blocking = True
    waits: list[float] = []

    scheduler = tight_server.app.state.engine.engine.store.entry("tiny").batcher

    def sleep(seconds: float) -> None:  # the first retry wait opens the gate: the queue drains
        waits.append(seconds)
        faults.blocking = False
        faults.gate.set()
        deadline = time.monotonic() + 10
        while scheduler.queued > 0:  # what the Retry-After wait stands for: the queue has drained
            assert time.monotonic() < deadline, "the queue never drained"
            time.sleep(0.01)

    image = samples[0].data

    def send_once() -> None:
        with RanetClient(tight_server.url, retry=1) as other:
            other.classify(image)

    background = [threading.Thread(target=send_once) for _ in range(2)]
    try:
        with RanetClient(tight_server.url, retry=RetryPolicy(max_attempts=3), sleep=sleep) as client:
            background[0].start()
            assert faults.entered.wait(10)  # request A runs (blocked inside a stage)
            background[1].start()  # request B waits in the one-slot queue
            deadline = time.monotonic() + 10
            while scheduler.queued < 1:  # B has reached the queue (an event the scheduler exposes)
                assert time.monotonic() < deadline, "request B never reached the queue"
                time.sleep(0.01)
            with RanetClient(tight_server.url, retry=1) as once, pytest.raises(OverloadedError) as caught:
                once.classify(image)
            assert (
                caught.value.status == 429
                and caught.value.retry_after is not None
                and caught.value.retry_after >= 1
            )
            answer = client.classify(image)  # refused once more, then served after the wait
        assert answer.model == "tiny"
        assert len(waits) == 1 and waits[0] >= caught.value.retry_after
    finally:
        faults.blocking = False
        faults.gate.set()
        for thread in background:
            thread.join(30)
