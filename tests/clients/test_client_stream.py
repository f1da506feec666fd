"""`classify_stream` (sync and async) against the real server on 127.0.0.1, and its SSE handling on
`httpx.MockTransport`: event order, finals equal to `classify`, error mapping before and inside the
stream, an early close withdrawing the request, and `on_deadline`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ranet_client import (
    AsyncRanetClient,
    BudgetError,
    ClassifyResponse,
    ConnectionFailedError,
    DeadlineExceededError,
    ExitEvent,
    InvalidInputError,
    Knobs,
    ModelInfo,
    NotFoundError,
    OverloadedError,
    RanetClient,
    RanetError,
    ServerError,
    StreamSummary,
    ValidationError,
)
from ranet_client.cli import app
from ranet_client.image_sets import Sample
from ranet_client.load import parse_budget_mix
from ranet_client.streams import SSEDecoder, StreamItem
from typer.testing import CliRunner

from helpers.metrics import delta, scrape, value
from helpers.server import RunningServer
from helpers.waiting import wait_until

LAST = 5  # the tiny bundle's last exit


def _exits(items: list[StreamItem]) -> list[ExitEvent]:
    return [item for item in items if isinstance(item, ExitEvent)]


def _check_order(items: list[StreamItem], images: int) -> None:
    """Every image's events are exits 0, 1, ... in order, only the last is final; the summary is last."""
    assert isinstance(items[-1], StreamSummary)
    assert not any(isinstance(item, StreamSummary) for item in items[:-1])
    events = _exits(items)
    for image in range(images):
        mine = [e for e in events if e.image == image]
        assert [e.exit for e in mine] == list(range(len(mine))), image
        assert [e.final for e in mine] == [False] * (len(mine) - 1) + [True]


def _same_answers(streamed: ClassifyResponse | StreamSummary, plain: ClassifyResponse) -> None:
    assert (streamed.model, streamed.version, streamed.operating_point) == (
        plain.model,
        plain.version,
        plain.operating_point,
    )
    assert len(streamed.results) == len(plain.results)
    for mine, theirs in zip(streamed.results, plain.results, strict=True):
        for key in ("label", "class_index", "exit", "flops", "budget_limited", "deadline_limited"):
            assert getattr(mine, key) == getattr(theirs, key), key
        # Batched with other images or not, float results may differ in their last bits.
        assert mine.confidence == pytest.approx(theirs.confidence, abs=1e-5)


def test_a_stream_yields_every_exit_in_order_then_the_answer_classify_gives(
    server_url: str, samples: list[Sample]
) -> None:
    images = [s.data for s in samples[:3]]
    with RanetClient(server_url) as client:
        with client.classify_stream(images, confidence=1, top_k=2) as stream:
            items = list(stream)
        plain = client.classify(images, confidence=1, top_k=2)
    _check_order(items, 3)
    events = _exits(items)
    assert {e.image for e in events} == {0, 1, 2}
    assert all(len([e for e in events if e.image == i]) == LAST + 1 for i in range(3))
    assert all(len(e.top_k) == 2 and e.result.exit == e.exit for e in events)
    summary = items[-1]
    assert isinstance(summary, StreamSummary) and stream.summary is summary
    assert summary.results == tuple(e.result for e in events if e.final)
    assert summary.operating_point == "confidence=1" and summary.timings.total_ms > 0
    _same_answers(summary, plain)
    response = summary.as_response()
    assert response.raw["results"][0]["exit"] == LAST and "image" not in response.raw["results"][0]
    assert stream.response is not None and stream.response.is_closed


def test_early_exits_end_their_images_stream_at_the_exit_that_answers(
    server_url: str, samples: list[Sample]
) -> None:
    images = [s.data for s in samples[:8]]
    with RanetClient(server_url) as client:
        items = list(client.classify_stream(images))  # the default point: images leave early or late
        plain = client.classify(images)
    _check_order(items, 8)
    assert isinstance(items[-1], StreamSummary)
    _same_answers(items[-1], plain)
    final_exits = [e.exit for e in _exits(items) if e.final]
    assert len(final_exits) == 8 and len(_exits(items)) == sum(k + 1 for k in final_exits)


@pytest.mark.parametrize("encoding", ["multipart", "json", "raw"])
def test_every_encoding_streams(server_url: str, samples: list[Sample], encoding: str) -> None:
    with (
        RanetClient(server_url, encoding=encoding) as client,  # type: ignore[arg-type]
        client.classify_stream(samples[4].data, confidence=1, version="1") as stream,
    ):
        items = list(stream)
    _check_order(items, 1)
    assert [e.exit for e in _exits(items)] == list(range(LAST + 1))
    assert stream.summary is not None and stream.summary.version == "1"


def test_the_async_stream_matches_classify(server_url: str, samples: list[Sample]) -> None:
    images = [s.data for s in samples[5:9]]

    async def run() -> tuple[list[StreamItem], list[StreamItem], ClassifyResponse]:
        async with AsyncRanetClient(server_url) as client:
            async with client.classify_stream(images, confidence=1) as stream:
                items = [item async for item in stream]
            # Without `async with`: the first item sends the request.
            loose = [item async for item in client.classify_stream(images)]
            return items, loose, await client.classify(images, confidence=1)

    items, loose, plain = asyncio.run(run())
    _check_order(items, 4)
    _check_order(loose, 4)
    assert isinstance(items[-1], StreamSummary)
    _same_answers(items[-1], plain)


# -- errors ---------------------------------------------------------------------------------------------


def test_errors_before_the_stream_raise_the_classes_classify_raises(
    server_url: str, samples: list[Sample], tiny_info: ModelInfo
) -> None:
    image = samples[0].data
    cheapest = tiny_info.latest.cheapest_exit_flops  # type: ignore[union-attr]
    cases: list[tuple[bytes, dict[str, Any], type[RanetError], int]] = [
        (image, {"model": "no-such-model"}, NotFoundError, 404),
        (b"not an image", {}, InvalidInputError, 400),
        (image, {"top_k": 0}, ValidationError, 422),
        (image, {"on_deadline": "later"}, ValidationError, 422),
        (image, {"max_flops": cheapest - 1}, BudgetError, 422),
    ]
    with RanetClient(server_url) as client:
        for data, knobs, cls, status in cases:
            with pytest.raises(RanetError) as plain:
                client.classify(data, **knobs)
            with pytest.raises(RanetError) as streamed:
                list(client.classify_stream(data, **knobs))
            assert type(streamed.value) is type(plain.value) is cls, knobs
            assert (streamed.value.status, streamed.value.code) == (status, plain.value.code)
            assert streamed.value.details == plain.value.details
            with pytest.raises(cls):  # entering the `with` block sends the request
                client.classify_stream(data, **knobs).__enter__()
    assert streamed.value.details.get("cheapest_exit_flops") == cheapest


def _release_after(server: RunningServer, seconds: float, before: Callable[[], None] = lambda: None) -> None:
    assert server.faults.held.wait(30)
    time.sleep(seconds)
    before()
    server.faults.gate.set()


@pytest.fixture
def held_stage_2(ranet_server: RunningServer, server_url: str) -> Iterator[RunningServer]:
    """Stage 2 waits for `faults.gate` (set again, whatever happens, after the test)."""
    ranet_server.faults.gate.clear()
    ranet_server.faults.hold_stage = 2
    yield ranet_server
    ranet_server.faults.gate.set()


def test_a_deadline_passing_inside_the_stream_is_an_error_event_raised_as_504(
    held_stage_2: RunningServer, samples: list[Sample]
) -> None:
    # A deadline long enough for the request to reach stage 2 on a busy machine; released past it.
    releaser = threading.Thread(target=_release_after, args=(held_stage_2, 1.1))
    releaser.start()
    items: list[StreamItem] = []
    with RanetClient(held_stage_2.url) as client, pytest.raises(DeadlineExceededError) as caught:
        for item in client.classify_stream(samples[0].data, confidence=1, deadline_ms=1000):
            items.append(item)
    releaser.join()
    assert caught.value.status == 504 and caught.value.code == "deadline_exceeded"
    assert [e.exit for e in _exits(items)] == [0, 1]  # the stream had started: exits 0 and 1 came first


def test_a_stage_failing_inside_the_stream_is_an_error_event_raised_as_a_server_error(
    held_stage_2: RunningServer, samples: list[Sample]
) -> None:
    def fail_next() -> None:
        held_stage_2.faults.fail_next = 1

    releaser = threading.Thread(target=_release_after, args=(held_stage_2, 0.05, fail_next))
    releaser.start()
    items: list[StreamItem] = []
    with RanetClient(held_stage_2.url) as client, pytest.raises(ServerError) as caught:
        items.extend(client.classify_stream(samples[0].data, confidence=1))
    releaser.join()
    assert caught.value.status == 500 and caught.value.code == "stage_failed"
    assert [e.exit for e in _exits(items)] == [0, 1]  # the stream had started


def test_on_deadline_best_answers_the_deepest_exit_reached(
    held_stage_2: RunningServer, samples: list[Sample]
) -> None:
    releaser = threading.Thread(target=_release_after, args=(held_stage_2, 1.1))
    releaser.start()
    with RanetClient(held_stage_2.url) as client:
        answer = client.classify(
            [s.data for s in samples[:2]], confidence=1, deadline_ms=1000, on_deadline="best"
        )
    releaser.join()
    assert [(r.exit, r.deadline_limited, r.budget_limited) for r in answer.results] == [(2, True, False)] * 2
    assert Knobs(on_deadline="best").as_strings() == {"on_deadline": "best"}
    assert parse_budget_mix("confidence=1&deadline_ms=50&on_deadline=best")[0].knobs["on_deadline"] == "best"


# -- closing early ----------------------------------------------------------------------------------------


def _check_withdrawn(server: RunningServer, before: dict) -> None:  # type: ignore[type-arg]
    """The server saw the client leave (499), and the images never ran past stage 2."""
    with httpx.Client(base_url=server.url) as metrics:
        labels = {"model": "tiny", "status": "499", "protocol": "http"}
        assert wait_until(
            lambda: (
                value(scrape(metrics), "ranet_requests_total", **labels)
                > value(before, "ranet_requests_total", **labels)
            )
        )
        server.faults.gate.set()  # stage 2 ends; its survivors are dropped instead of running stage 3
        assert wait_until(
            lambda: (
                delta(before, scrape(metrics), "ranet_cancelled_total", model="tiny", where="cascade") == 1
            )
        )
        after = scrape(metrics)
    assert delta(before, after, "ranet_batch_size_count", model="tiny", stage="3") == 0


def test_closing_a_stream_early_closes_the_connection_and_the_server_withdraws_the_request(
    held_stage_2: RunningServer, samples: list[Sample]
) -> None:
    with httpx.Client(base_url=held_stage_2.url) as metrics:
        before = scrape(metrics)
    with RanetClient(held_stage_2.url) as client:
        with client.classify_stream([s.data for s in samples[:2]], confidence=1) as stream:
            got = [next(stream) for _ in range(4)]  # exits 0 and 1 of both images; stage 2 is held
        assert stream.response is not None and stream.response.is_closed
        assert sorted((e.image, e.exit) for e in _exits(got)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert next(stream, None) is None  # a closed stream has nothing more
    _check_withdrawn(held_stage_2, before)


def test_closing_an_async_stream_early_withdraws_the_request(
    held_stage_2: RunningServer, samples: list[Sample]
) -> None:
    with httpx.Client(base_url=held_stage_2.url) as metrics:
        before = scrape(metrics)

    async def run() -> list[StreamItem]:
        async with AsyncRanetClient(held_stage_2.url) as client:
            stream = client.classify_stream(samples[0].data, confidence=1)
            got: list[StreamItem] = []
            async for item in stream:
                got.append(item)
                if len(got) == 2:
                    break
            await stream.aclose()
            assert stream.response is not None and stream.response.is_closed
            return got

    got = asyncio.run(run())
    assert [e.exit for e in _exits(got)] == [0, 1]
    _check_withdrawn(held_stage_2, before)


def test_the_aiohttp_wire_streams_events_as_they_come_and_closes_early_alike(
    held_stage_2: RunningServer, samples: list[Sample]
) -> None:
    pytest.importorskip("aiohttp")
    from ranet_client.aiohttp_transport import AiohttpTransport

    with httpx.Client(base_url=held_stage_2.url) as metrics:
        before = scrape(metrics)

    async def run() -> tuple[list[StreamItem], list[StreamItem], list[StreamItem]]:
        async with AsyncRanetClient(held_stage_2.url, transport=AiohttpTransport(2)) as client:
            async with client.classify_stream(samples[0].data, confidence=1) as stream:
                early = [await anext(stream), await anext(stream)]  # stage 2 is still held
            assert stream.response is not None and stream.response.is_closed
            await asyncio.get_running_loop().run_in_executor(None, _check_withdrawn, held_stage_2, before)
            images = [s.data for s in samples[:3]]
            fast = [item async for item in client.classify_stream(images, confidence=1)]
        async with AsyncRanetClient(held_stage_2.url) as plain:
            slow = [item async for item in plain.classify_stream(images, confidence=1)]
        return early, fast, slow

    early, fast, slow = asyncio.run(run())
    assert [e.exit for e in _exits(early)] == [0, 1]
    _check_order(fast, 3)
    assert sorted((e.image, e.exit, e.class_index) for e in _exits(fast)) == sorted(
        (e.image, e.exit, e.class_index) for e in _exits(slow)
    )


# -- the CLI ----------------------------------------------------------------------------------------------


def test_cli_stream_prints_every_exit_as_it_arrives(
    server_url: str, samples: list[Sample], tmp_path: Path
) -> None:
    path = tmp_path / samples[0].name
    path.write_bytes(samples[0].data)
    runner = CliRunner(env={"COLUMNS": "160", "RANET_URL": None})
    text = runner.invoke(app, ["classify", str(path), "--url", server_url, "--stream", "--confidence", "1"])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert [line.split("  ")[1] for line in lines[:-1]] == [f"exit {k}" for k in range(LAST + 1)]
    assert lines[LAST].endswith("final") and "final" not in "".join(lines[:LAST])
    assert lines[-1].startswith("done: tiny v2 (confidence=1)")
    as_json = runner.invoke(
        app, ["classify", str(path), "--url", server_url, "--stream", "--json", "--confidence", "1"]
    )
    assert as_json.exit_code == 0, as_json.output
    documents = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [d["event"] for d in documents] == ["exit"] * (LAST + 1) + ["done"]
    assert [d["exit"] for d in documents[:-1]] == list(range(LAST + 1))
    assert all(d["image"] == str(path) for d in documents[:-1]) and documents[-1]["model"] == "tiny"
    bad = runner.invoke(app, ["classify", str(path), "--url", server_url, "--stream", "--on-deadline", "x"])
    assert bad.exit_code != 0


# -- the wire, without a server ----------------------------------------------------------------------------


def _event(name: str, data: dict) -> bytes:  # type: ignore[type-arg]
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


EXIT_0 = {
    "label": "Bag",
    "class_index": 8,
    "confidence": 0.5,
    "top_k": [{"label": "Bag", "class_index": 8, "probability": 0.5}],
    "exit": 0,
    "flops": 100,
    "budget_limited": False,
    "deadline_limited": False,
    "image": 0,
    "final": True,
}
DONE = {
    "model": "m",
    "version": "1",
    "operating_point": "p",
    "timings": {"queue_ms": 1, "inference_ms": 2, "total_ms": 3},
}


def _mock(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    sent: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handler), sent


def _sse(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)


def test_the_sse_decoder_joins_data_lines_and_skips_comments() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "event: exit", "data: {", "data: }", "id: 7", "", "data:x", ""]
    assert [m for m in map(decoder.feed, lines) if m is not None] == [("exit", "{\n}"), ("message", "x")]


def test_the_stream_request_asks_for_events_and_a_429_before_it_is_retried() -> None:
    transport, sent = _mock(
        httpx.Response(
            429, headers={"Retry-After": "2"}, json={"error": {"code": "overloaded", "message": "no"}}
        ),
        _sse(b": hello\n\n" + _event("exit", EXIT_0) + _event("future", {}) + _event("done", DONE)),
    )
    waits: list[float] = []
    with RanetClient("http://test", transport=transport, sleep=waits.append, retry=2) as client:
        items = list(client.classify_stream(b"\x89PNG", on_deadline="best", deadline_ms=50))
    assert len(sent) == 2 and len(waits) == 1 and waits[0] >= 2
    assert sent[0].headers["accept"] == "text/event-stream"
    body = sent[0].read().decode("latin-1")
    for field, text in (("stream", "true"), ("on_deadline", "best"), ("deadline_ms", "50")):
        assert f'name="{field}"\r\n\r\n{text}\r\n' in body
    assert [type(i) for i in items] == [ExitEvent, StreamSummary]
    summary = items[1]
    assert isinstance(summary, StreamSummary) and summary.result.label == "Bag"
    with RanetClient("http://test", transport=_mock(_sse(b""))[0], encoding="json") as client:
        request = client.classify_stream(b"x")
        with pytest.raises(ConnectionFailedError):
            list(request)  # ended without `done`
    json_transport, json_sent = _mock(_sse(_event("done", DONE)))
    with RanetClient("http://test", transport=json_transport, encoding="json") as client:
        list(client.classify_stream(b"x", on_deadline="error"))
    assert json.loads(json_sent[0].read())["stream"] is True
    assert json.loads(json_sent[0].read())["on_deadline"] == "error"


def test_error_events_and_answers_that_are_not_streams_map_to_errors() -> None:
    error = {"error": {"code": "overloaded", "message": "queue full"}, "status": 429}
    not_json = httpx.Response(200, json={"results": []})
    transport, _ = _mock(_sse(_event("exit", EXIT_0) + _event("error", error)), not_json)
    with RanetClient("http://test", transport=transport, retry=1) as client:
        items: list[StreamItem] = []
        with pytest.raises(OverloadedError) as caught:
            items.extend(client.classify_stream(b"x"))
        assert caught.value.status == 429 and caught.value.message == "queue full" and len(items) == 1
        with pytest.raises(RanetError) as wrong:
            list(client.classify_stream(b"x"))
        assert wrong.value.code == "invalid_response"
