"""Anytime prediction over Server-Sent Events, deadlines that degrade (`on_deadline`), withdrawal."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
import pytest

from helpers.metrics import delta, scrape, value
from helpers.server import RunningServer
from helpers.waiting import wait_until
from ranet_serve.api.v1.schemas import ExitEventData, StreamDone

LAST = 5  # the tiny bundle's last exit


def files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of every event in a text/event-stream body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_events(response.text)


def test_a_stream_sends_every_exit_in_order_and_finals_equal_the_plain_answer(
    client: httpx.Client, images: list[bytes]
) -> None:
    sent = images[:3]
    streamed = read_events(
        client.post("/v1/classify", files=files(sent), params={"stream": "true", "confidence": 1})
    )
    plain = client.post("/v1/classify", files=files(sent), params={"confidence": 1}).json()
    exits = [(data["image"], data["exit"], data["final"]) for name, data in streamed if name == "exit"]
    for image in range(3):  # every image passes every exit, in order; only the last is final
        assert [(e, f) for i, e, f in exits if i == image] == [(k, k == LAST) for k in range(LAST + 1)]
    for name, data in streamed:
        if name == "exit":
            ExitEventData.model_validate(data)
    finals = {data["image"]: data for name, data in streamed if name == "exit" and data["final"]}
    for image, result in enumerate(plain["results"]):
        final = finals[image]
        assert set(final) == {*result, "image", "final"}
        for key in ("label", "class_index", "exit", "flops", "budget_limited", "deadline_limited"):
            assert final[key] == result[key]
        assert final["confidence"] == pytest.approx(result["confidence"], abs=1e-5)
    name, done = streamed[-1]
    assert name == "done" and [n for n, _ in streamed].count("done") == 1
    StreamDone.model_validate(done)
    assert (done["model"], done["version"], done["operating_point"]) == ("tiny", "2", "confidence=1")


def test_early_exits_end_their_images_stream_at_the_exit_that_answers(client: httpx.Client, images) -> None:
    streamed = read_events(
        client.post("/v1/classify", files=files(images[:2]), params={"stream": 1, "confidence": 0})
    )
    assert [(d["image"], d["exit"], d["final"]) for n, d in streamed if n == "exit"] == [
        (0, 0, True),
        (1, 0, True),
    ]


def test_accept_event_stream_streams_and_stream_false_does_not(client: httpx.Client, images) -> None:
    accept = {"Accept": "text/event-stream"}
    by_header = client.post("/v1/classify", files=files(images[:1]), headers=accept)
    assert [name for name, _ in read_events(by_header)][-1] == "done"
    refused = client.post("/v1/classify", files=files(images[:1]), headers=accept, params={"stream": "false"})
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["results"][0]["deadline_limited"] is False
    # `stream` in a form field or a JSON body works as in the query string.
    form = client.post("/v1/classify", files=files(images[:1]), data={"stream": "true", "confidence": "0"})
    assert [name for name, _ in read_events(form)] == ["exit", "done"]


def test_bad_stream_requests_get_ordinary_json_errors(client: httpx.Client, images) -> None:
    bad_flag = client.post("/v1/classify", files=files(images[:1]), params={"stream": "maybe"})
    assert bad_flag.status_code == 422
    assert bad_flag.json()["error"]["message"] == "stream must be true or false, got 'maybe'"
    unknown = client.post("/v1/classify", files=files(images[:1]), params={"stream": 1, "bogus": 1})
    assert unknown.status_code == 422 and "known: " in unknown.json()["error"]["message"]
    assert "stream" in unknown.json()["error"]["message"]
    missing = client.post("/v1/models/nope/classify", files=files(images[:1]), params={"stream": 1})
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    # v2 has no streaming: `stream` is an unknown parameter there.
    v2 = client.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}],
            "parameters": {"stream": True},
        },
    )
    assert v2.status_code == 422 and "unknown parameter 'stream'" in v2.json()["error"]


def test_on_deadline_is_validated_alike_on_v1_and_v2(client: httpx.Client, images) -> None:
    v1 = client.post("/v1/classify", files=files(images[:1]), params={"on_deadline": "later"})
    assert v1.status_code == 422
    assert v1.json()["error"]["message"] == "on_deadline must be one of error, best, got 'later'"
    v2 = client.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}],
            "parameters": {"on_deadline": "later"},
        },
    )
    assert v2.status_code == 422 and v2.json()["error"] == v1.json()["error"]["message"]


def hold_past_deadline(server: RunningServer, sent_at: float, deadline_ms: float) -> None:
    """Stage 2 is held (`faults.hold_stage`); release it once the request's deadline has passed."""
    assert server.faults.held.wait(30)
    remaining = sent_at + deadline_ms / 1000 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining + 0.02)  # the condition under test: the deadline has passed
    server.faults.gate.set()


@pytest.mark.parametrize("on_deadline", ["best", "error"])
def test_a_deadline_passing_mid_cascade_answers_the_deepest_exit_or_504(
    server: RunningServer, client: httpx.Client, images: list[bytes], on_deadline: str
) -> None:
    before = scrape(client)
    server.faults.gate.clear()
    server.faults.hold_stage = 2
    deadline_ms = 1000.0  # long enough to reach stage 2 on a busy machine
    sent_at = time.monotonic()
    releaser = threading.Thread(target=hold_past_deadline, args=(server, sent_at, deadline_ms))
    releaser.start()
    response = client.post(
        "/v1/classify",
        files=files(images[:2]),
        params={"confidence": 1, "deadline_ms": deadline_ms, "on_deadline": on_deadline},
    )
    releaser.join()
    after = scrape(client)
    if on_deadline == "error":
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        return
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    # Stage 2 finished after the deadline: exit 2 is the deepest each image reached.
    assert [(r["exit"], r["deadline_limited"], r["budget_limited"]) for r in results] == [
        (2, True, False)
    ] * 2
    assert delta(before, after, "ranet_deadline_limited_total", model="tiny") == 2
    assert delta(before, after, "ranet_batch_size_count", model="tiny", stage="3") == 0


def test_closing_a_stream_withdraws_its_images_at_the_next_stage_boundary(
    server: RunningServer, client: httpx.Client, images: list[bytes]
) -> None:
    before = scrape(client)
    server.faults.gate.clear()
    server.faults.hold_stage = 2
    with (
        server.client() as streaming,
        streaming.stream(
            "POST", "/v1/classify", files=files(images[:2]), params={"stream": "true", "confidence": 1}
        ) as response,
    ):
        assert response.status_code == 200
        received = ""
        lines = response.iter_lines()
        while received.count("event: exit") < 4:  # exits 0 and 1 of both images
            received += next(lines) + "\n"
        assert server.faults.held.is_set()
    # The client is gone; the server answers 499 for it once it has noticed and withdrawn the request.
    assert wait_until(
        lambda: (
            value(scrape(client), "ranet_requests_total", model="tiny", status="499", protocol="http")
            > value(before, "ranet_requests_total", model="tiny", status="499", protocol="http")
        )
    )
    server.faults.gate.set()  # stage 2 ends; its survivors are dropped instead of running stage 3
    assert wait_until(
        lambda: delta(before, scrape(client), "ranet_cancelled_total", model="tiny", where="cascade") == 1
    )
    after = scrape(client)
    assert delta(before, after, "ranet_batch_size_count", model="tiny", stage="2") == 1
    assert delta(before, after, "ranet_batch_size_count", model="tiny", stage="3") == 0
    # The server is fine: the next request runs every stage.
    assert (
        client.post("/v1/classify", files=files(images[:1]), params={"confidence": 1}).json()["results"][0][
            "exit"
        ]
        == LAST
    )


def test_v2_reports_deadline_limited_as_an_output_when_on_deadline_is_best(
    server: RunningServer, client: httpx.Client, images: list[bytes]
) -> None:
    def infer(parameters: dict[str, object]) -> httpx.Response:
        encoded = [base64.b64encode(data).decode() for data in images[:2]]
        tensor = {"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": encoded}
        return client.post("/v2/models/tiny/infer", json={"inputs": [tensor], "parameters": parameters})

    plain = {o["name"] for o in infer({"confidence": 1}).json()["outputs"]}
    assert "deadline_limited" not in plain  # only a best-effort request can be deadline-limited
    server.faults.gate.clear()
    server.faults.hold_stage = 2
    deadline_ms = 1000.0  # long enough to reach stage 2 on a busy machine
    releaser = threading.Thread(target=hold_past_deadline, args=(server, time.monotonic(), deadline_ms))
    releaser.start()
    response = infer({"confidence": 1, "deadline_ms": deadline_ms, "on_deadline": "best"})
    releaser.join()
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["deadline_limited"] == [True, True] and outputs["exit"] == [2, 2]
