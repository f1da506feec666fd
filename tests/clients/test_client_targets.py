"""Load targets: the load generator drives plain one-image classifiers (TorchServe's /predictions/<model>,
a hand-written FastAPI app) with the same loop and report as RANet Serve, and reports nothing it was not
told (no exits, FLOPs or server timings from a plain server)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import uvicorn
from ranet_client import AsyncRanetClient
from ranet_client.cli import app
from ranet_client.errors import RanetError, ServerError
from ranet_client.image_sets import Sample, bundled_samples
from ranet_client.load import (
    MAX_CLIENTS,
    BudgetChoice,
    ImageRecord,
    LoadConfig,
    RequestRecord,
    make_target,
    run_load_sync,
    summarize,
)
from ranet_client.targets import (
    PlainTarget,
    Prediction,
    RanetTarget,
    TargetAnswer,
    TargetPool,
    parse_plain_answer,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

RANET_ANSWER = {
    "model": "m",
    "version": "1",
    "operating_point": "p",
    "results": [{"label": "Trouser", "class_index": 1, "confidence": 0.9, "exit": 0, "flops": 10}],
    "timings": {"queue_ms": 0.1, "inference_ms": 1.0, "total_ms": 2.0},
}


def _oracle(samples: list[Sample]) -> dict[bytes, int]:
    """A fake classifier that is right on even classes and wrong (class + 1) on odd ones."""
    answers = {}
    for s in samples:
        assert s.class_index is not None
        answers[s.data] = s.class_index if s.class_index % 2 == 0 else (s.class_index + 1) % 10
    return answers


def _expected_accuracy(samples: list[Sample]) -> float:
    return sum(1 for s in samples if s.class_index is not None and s.class_index % 2 == 0) / len(samples)


def test_plain_answers_are_parsed_strictly() -> None:
    assert parse_plain_answer({"class_index": 3, "label": "Dress", "confidence": 0.5}).class_index == 3
    assert parse_plain_answer([{"label": "Bag"}]).label == "Bag"
    one = parse_plain_answer({"class_index": 1})
    assert (one.exit, one.flops, one.confidence) == (None, None, None)
    for bad in ({}, {"class_index": "3"}, {"class_index": True}, [1, 2], "Bag", None):
        with pytest.raises(ValueError):
            parse_plain_answer(bad)


def test_plain_target_sends_the_raw_file_or_a_multipart_form() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"class_index": 8, "label": "Bag", "confidence": 0.9})

    async def run() -> None:
        raw = PlainTarget("stub:9", "/predictions/m", transport=httpx.MockTransport(handler))
        form = PlainTarget("stub:9", "/predict", body="multipart", transport=httpx.MockTransport(handler))
        answer = await raw.classify([b"PNGDATA"], {})
        await form.classify([b"PNGDATA"], {})
        assert answer.predictions[0].class_index == 8 and answer.queue_ms is None
        with pytest.raises(ValueError):
            await raw.classify([b"a", b"b"], {})
        with pytest.raises(ValueError):
            await raw.classify([b"a"], {"max_flops": "1M"})
        await raw.aclose()
        await form.aclose()

    asyncio.run(run())
    assert str(seen[0].url) == "http://stub:9/predictions/m"
    assert seen[0].content == b"PNGDATA" and seen[0].headers["content-type"] == "image/png"
    assert str(seen[1].url) == "http://stub:9/predict"
    assert seen[1].headers["content-type"].startswith("multipart/form-data")
    assert b'name="file"' in seen[1].content and b"PNGDATA" in seen[1].content
    with pytest.raises(ValueError):
        PlainTarget("stub", "predict")
    with pytest.raises(ValueError):
        PlainTarget("stub", "/predict", body=cast(Any, "json"))


def test_plain_target_failures_are_ranet_errors() -> None:
    answers = iter(
        [
            httpx.Response(503, json={"code": 503, "type": "ServiceUnavailableException", "message": "x"}),
            httpx.Response(200, content=b"not json"),
            httpx.Response(200, json={"unexpected": 1}),
        ]
    )
    target = PlainTarget("stub", "/p", transport=httpx.MockTransport(lambda request: next(answers)))

    async def run() -> list[RanetError]:
        errors = []
        for _ in range(3):
            try:
                await target.classify([b"x"], {})
            except RanetError as exc:
                errors.append(exc)
        await target.aclose()
        return errors

    first, second, third = asyncio.run(run())
    assert isinstance(first, ServerError) and first.status == 503
    assert (second.code, second.status) == ("invalid_response", 200)
    assert third.code == "invalid_response"


def test_load_against_a_plain_target_reports_accuracy_and_no_invented_figures() -> None:
    samples = bundled_samples()
    oracle = _oracle(samples)
    calls = 0
    failed: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 7:
            failed.append(request.content)
            return httpx.Response(500, json={"error": "boom"})
        return httpx.Response(200, json={"class_index": oracle[request.content]})

    config = LoadConfig(url="http://stub", requests=41, concurrency=3, plain_path="/predictions/m")
    target = PlainTarget("http://stub", "/predictions/m", transport=httpx.MockTransport(handler))
    report = run_load_sync(config, samples, target=target)

    assert (report.requests_sent, report.requests_ok, report.requests_failed) == (41, 40, 1)
    assert report.errors_by_status == {"500": 1}
    assert report.images_ok == report.labelled_images == 40
    assert report.exit_counts == {} and report.total_flops == 0 and report.mean_flops_per_image is None
    assert report.server_queue_ms_mean is None and report.server_inference_ms_mean is None
    # Request i sends sample i mod 20; the oracle is right on even classes; one answer was a 500.
    sent = [samples[i % len(samples)] for i in range(41)]
    expected_correct = sum(1 for s in sent if s.class_index is not None and s.class_index % 2 == 0)
    expected_correct -= sum(1 for s in samples if s.data in failed and oracle[s.data] == s.class_index)
    assert report.correct_images == expected_correct
    assert report.accuracy == pytest.approx(expected_correct / 40)
    json.dumps(report.to_dict())


@pytest.mark.parametrize("wire", ["plain", "ranet"])
def test_a_200_without_a_readable_answer_counts_as_failed(wire: str) -> None:
    # Every third answer is a 200 whose JSON lacks the fields: failed, by its code, never "200".
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            return httpx.Response(200, json={"model": "x"})
        if wire == "plain":
            return httpx.Response(200, json={"class_index": 1})
        return httpx.Response(200, json=RANET_ANSWER)

    transport = httpx.MockTransport(handler)
    if wire == "plain":
        config = LoadConfig(url="http://stub", requests=12, concurrency=1, plain_path="/p")
        target: Any = PlainTarget("http://stub", "/p", transport=transport)
    else:
        config = LoadConfig(url="http://stub", requests=12, concurrency=1)
        target = RanetTarget(AsyncRanetClient("http://stub", transport=transport, retry=1))
    report = run_load_sync(config, bundled_samples(), target=target)
    assert (report.requests_sent, report.requests_ok, report.requests_failed) == (12, 8, 4)
    assert report.errors_by_status == {"invalid_response": 4} and report.images_ok == 8


def test_plain_configs_refuse_what_a_plain_server_cannot_take() -> None:
    base = LoadConfig(plain_path="/predict")
    assert base.validated().plain_path == "/predict"
    plain, ranet = make_target(base.validated()), make_target(LoadConfig().validated())
    assert all(isinstance(t, PlainTarget) for t in plain.targets) and not plain.takes_knobs
    assert all(isinstance(t, RanetTarget) for t in ranet.targets) and ranet.takes_knobs
    for bad in (
        LoadConfig(plain_path="/predict", batch=2),
        LoadConfig(plain_path="/predict", mix=(BudgetChoice("cap", {"max_flops": "1M"}, 1.0),)),
        LoadConfig(plain_path="/predict", top_k=3),
        LoadConfig(plain_path="/predict", retries=2),
        LoadConfig(plain_path="predict"),
        LoadConfig(plain_path="/predict", plain_body=cast(Any, "json")),
    ):
        with pytest.raises(ValueError):
            bad.validated()


def test_summary_of_unknown_exits_flops_and_timings() -> None:
    unknown = ImageRecord(exit=None, flops=None, confidence=None, budget_limited=False, correct=True)
    known = ImageRecord(exit=2, flops=300, confidence=0.9, budget_limited=False, correct=False)
    records = [
        RequestRecord("none", 0.01, "200", images=(unknown,)),
        RequestRecord("none", 0.02, "200", images=(known,), server_queue_ms=1.0, server_inference_ms=3.0),
    ]
    report = summarize(records, LoadConfig(), duration_s=1.0)
    assert report.exit_counts == {2: 1} and report.total_flops == 300
    assert report.mean_flops_per_image == 300  # over the images whose cost is known, not diluted by zeros
    assert report.server_queue_ms_mean == 1.0 and report.server_inference_ms_mean == 3.0
    assert report.accuracy == 0.5


# -- the CLI against a TorchServe-like stub on a real socket -------------------------------------------


class PlainStub:
    """`POST /predictions/m` with the raw image as the body, answering like a TorchServe handler."""

    def __init__(self, oracle: dict[bytes, int]):
        self.oracle = oracle
        self.requests = 0
        app_ = Starlette(routes=[Route("/predictions/m", self.predict, methods=["POST"])])
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app_, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    async def predict(self, request: Request) -> JSONResponse:
        self.requests += 1
        index = self.oracle[await request.body()]
        return JSONResponse({"class_index": index, "label": str(index), "confidence": 1.0})

    def __enter__(self) -> PlainStub:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


@pytest.fixture
def plain_stub() -> Iterator[PlainStub]:
    with PlainStub(_oracle(bundled_samples())) as stub:
        yield stub


def test_cli_load_drives_a_plain_server(plain_stub: PlainStub, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    runner = CliRunner(env={"COLUMNS": "160", "RANET_URL": None})
    args = ["load", "--url", plain_stub.url, "--plain", "/predictions/m", "-n", "20", "-c", "4"]
    result = runner.invoke(app, [*args, "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert plain_stub.requests == 20
    assert report["requests_ok"] == 20 and report["labelled_images"] == 20
    assert report["accuracy"] == pytest.approx(_expected_accuracy(bundled_samples()))
    assert report["exit_counts"] == {} and report["mean_flops_per_image"] is None
    assert report["config"]["plain_path"] == "/predictions/m"

    refused = runner.invoke(app, [*args, "--batch", "2"])
    assert refused.exit_code == 1 and "one image per request" in refused.stderr
    refused = runner.invoke(app, [*args, "--budget-mix", "max_flops=20M"])
    assert refused.exit_code == 1 and "no budget knobs" in refused.stderr
    assert plain_stub.requests == 20  # nothing was sent for the refused runs

    unwritable = runner.invoke(app, [*args, "--json-out", str(tmp_path / "no-such-folder" / "r.json")])
    assert unwritable.exit_code == 2 and "does not exist" in unwritable.output
    assert plain_stub.requests == 20  # refused before the run, not after it
    with socket.socket() as closed:  # a port nothing listens on: every request fails
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
        failed = runner.invoke(app, ["load", "--url", nobody, "--plain", "/predictions/m", "-n", "3"])
    assert failed.exit_code == 1 and "no request succeeded" in failed.stderr


class _Gated:
    """A target whose answers wait for a gate; counts the requests it was given and whether it closed."""

    takes_knobs = True
    max_images_per_request = None

    def __init__(self, gate: asyncio.Event):
        self.gate = gate
        self.requests = 0
        self.closed = False

    async def classify(self, images: Any, knobs: Any) -> TargetAnswer:
        self.requests += 1
        await self.gate.wait()
        return TargetAnswer(predictions=(Prediction(class_index=0, label=None),))

    async def aclose(self) -> None:
        self.closed = True


def test_target_pool_sends_each_request_to_the_least_busy_client() -> None:
    async def scenario() -> list[_Gated]:
        gate = asyncio.Event()
        targets = [_Gated(gate) for _ in range(3)]
        pool = TargetPool(targets)
        first = [asyncio.create_task(pool.classify([b"x"], {})) for _ in range(3)]
        await asyncio.sleep(0)
        assert [t.requests for t in targets] == [1, 1, 1]  # three in flight: one per client
        more = [asyncio.create_task(pool.classify([b"x"], {})) for _ in range(2)]
        await asyncio.sleep(0)
        assert [t.requests for t in targets] == [2, 2, 1]  # then the least busy, first first
        gate.set()
        answers = await asyncio.gather(*first, *more)
        assert all(a.predictions[0].class_index == 0 for a in answers)
        await pool.classify([b"x"], {})  # all idle again: the first client
        assert [t.requests for t in targets] == [3, 2, 1]
        await pool.aclose()
        return targets

    assert all(t.closed for t in asyncio.run(scenario()))
    with pytest.raises(ValueError):
        TargetPool([])


def test_load_generator_opens_one_client_per_connection_up_to_a_cap() -> None:
    assert len(make_target(LoadConfig(concurrency=16).validated()).targets) == 16
    assert len(make_target(LoadConfig(concurrency=1).validated()).targets) == 1
    open_loop = LoadConfig(rate=100.0, max_inflight=256, plain_path="/predict").validated()
    assert len(make_target(open_loop).targets) == MAX_CLIENTS < 256
