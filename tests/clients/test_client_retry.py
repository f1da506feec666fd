"""Retries: 429/503 and connection failures are retried with bounded attempts, Retry-After is honoured,
request errors are not retried. Sleeps are injected, so no test waits for real."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from ranet_client import (
    AsyncRanetClient,
    BudgetError,
    ConnectionFailedError,
    OverloadedError,
    RanetClient,
    RequestTimeoutError,
    RetryPolicy,
    UnavailableError,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

OK_BODY = {
    "model": "stub",
    "version": "1",
    "operating_point": "balanced",
    "results": [
        {
            "label": "Bag",
            "class_index": 8,
            "confidence": 0.9,
            "top_k": [{"label": "Bag", "class_index": 8, "probability": 0.9}],
            "exit": 1,
            "flops": 1234,
            "budget_limited": False,
        }
    ],
    "timings": {"queue_ms": 0.1, "inference_ms": 1.0, "total_ms": 2.0},
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def _overloaded(retry_after: str | None = "2") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(
        429, json={"error": {"code": "overloaded", "message": "queue full"}}, headers=headers
    )


class Script:
    """A MockTransport handler answering from a list (the last answer repeats); counts attempts."""

    def __init__(self, *answers: httpx.Response | Exception):
        self.answers = list(answers)
        self.attempts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[min(self.attempts, len(self.answers) - 1)]
        self.attempts += 1
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def _client(script: Script, waits: list[float], **kwargs: object) -> RanetClient:
    return RanetClient(
        "http://stub",
        transport=httpx.MockTransport(script),
        sleep=waits.append,
        rng=random.Random(0),
        **kwargs,  # type: ignore[arg-type]
    )


def test_429_twice_then_200_takes_three_attempts_waiting_retry_after() -> None:
    script = Script(_overloaded("2"), _overloaded("2"), httpx.Response(200, json=OK_BODY))
    waits: list[float] = []
    with _client(script, waits) as client:
        answer = client.classify(PNG)
    assert script.attempts == 3
    assert answer.result.label == "Bag" and answer.result.flops == 1234
    policy = RetryPolicy()
    assert len(waits) == 2
    for retry, wait in enumerate(waits):
        assert 2.0 <= wait <= 2.0 + policy.jitter * policy.backoff(retry)


def test_503_without_retry_after_backs_off_exponentially() -> None:
    unavailable = httpx.Response(503, json={"error": {"code": "not_ready", "message": "loading"}})
    script = Script(unavailable, unavailable, unavailable, httpx.Response(200, json=OK_BODY))
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=4, backoff_initial=0.1, jitter=0.5)
    with _client(script, waits, retry=policy) as client:
        client.classify(PNG)
    assert script.attempts == 4
    for retry, wait in enumerate(waits):
        full = 0.1 * 2**retry
        assert full * (1 - policy.jitter) <= wait <= full


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    script = Script(_overloaded("1"))
    waits: list[float] = []
    with _client(script, waits, retry=3) as client, pytest.raises(OverloadedError) as caught:
        client.classify(PNG)
    assert script.attempts == 3 and len(waits) == 2
    assert caught.value.attempts == 3 and caught.value.retry_after == 1.0 and caught.value.status == 429


def test_a_retry_after_beyond_the_callers_limit_is_not_waited_for() -> None:
    script = Script(_overloaded("120"), httpx.Response(200, json=OK_BODY))
    waits: list[float] = []
    with (
        _client(script, waits, retry=RetryPolicy(max_retry_after=30)) as client,
        pytest.raises(OverloadedError),
    ):
        client.classify(PNG)
    assert script.attempts == 1 and waits == []


def test_connection_errors_are_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json=OK_BODY))
    waits: list[float] = []
    with _client(script, waits) as client:
        client.classify(PNG)
    assert script.attempts == 2 and len(waits) == 1


def test_request_errors_and_timeouts_are_not_retried() -> None:
    budget = httpx.Response(422, json={"error": {"code": "invalid_budget", "message": "below cheapest exit"}})
    for answer, cls in ((budget, BudgetError), (httpx.ReadTimeout("slow"), RequestTimeoutError)):
        script = Script(answer, httpx.Response(200, json=OK_BODY))
        waits: list[float] = []
        with _client(script, waits) as client, pytest.raises(cls):
            client.classify(PNG)
        assert script.attempts == 1 and waits == []


def test_a_single_attempt_policy_never_retries() -> None:
    script = Script(_overloaded("1"), httpx.Response(200, json=OK_BODY))
    waits: list[float] = []
    with _client(script, waits, retry=1) as client, pytest.raises(OverloadedError):
        client.classify(PNG)
    assert script.attempts == 1


def test_async_client_retries_429_with_retry_after() -> None:
    script = Script(_overloaded("2"), _overloaded("2"), httpx.Response(200, json=OK_BODY))
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> str:
        async with AsyncRanetClient(
            "http://stub", transport=httpx.MockTransport(script), sleep=fake_sleep, rng=random.Random(0)
        ) as client:
            return (await client.classify(PNG)).result.label

    assert asyncio.run(run()) == "Bag"
    assert script.attempts == 3 and len(waits) == 2 and all(w >= 2.0 for w in waits)


def test_readiness_503_is_an_answer_not_an_error() -> None:
    script = Script(httpx.Response(503, json={"ready": False, "status": "loading"}))
    with _client(script, []) as client:
        state = client.ready()
    assert not state.ready and state.status == "loading" and script.attempts == 1


def test_wait_ready_gives_up_after_its_timeout() -> None:
    script = Script(httpx.Response(503, json={"ready": False, "status": "loading"}))
    with _client(script, []) as client, pytest.raises(UnavailableError, match="not ready"):
        client.wait_ready(timeout=0.05, interval=0.01)


# -- the same over a real socket: a Starlette stub on 127.0.0.1 -----------------------------------------


class StubServer:
    """Answers classify with 429 + Retry-After `busy_answers` times, then 200; records arrival times."""

    def __init__(self, busy_answers: int, retry_after: str):
        self.busy_answers = busy_answers
        self.retry_after = retry_after
        self.arrivals: list[float] = []
        self.bodies: list[bytes] = []
        app = Starlette(routes=[Route("/v1/classify", self.classify, methods=["POST"])])
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    async def classify(self, request: Request) -> JSONResponse:
        self.arrivals.append(time.monotonic())
        self.bodies.append(await request.body())
        if len(self.arrivals) <= self.busy_answers:
            return JSONResponse(
                {"error": {"code": "overloaded", "message": "queue full"}},
                status_code=429,
                headers={"Retry-After": self.retry_after},
            )
        return JSONResponse(OK_BODY)

    def __enter__(self) -> StubServer:
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
def stub() -> Iterator[StubServer]:
    with StubServer(busy_answers=2, retry_after="1") as server:
        yield server


def test_real_socket_429_retry_after_is_honoured_with_real_sleeps(stub: StubServer) -> None:
    """Real time: the two retries arrive no sooner than the 1 s the server asked for."""
    policy = RetryPolicy(max_attempts=4, backoff_initial=0.01, jitter=0.5)
    with RanetClient(stub.url, retry=policy, timeout=5) as client:
        answer = client.classify(PNG, max_flops="20M")
    assert answer.model == "stub" and len(stub.arrivals) == 3
    gaps = [b - a for a, b in zip(stub.arrivals, stub.arrivals[1:], strict=False)]
    assert all(gap >= 1.0 for gap in gaps), gaps
    assert all(b"20M" in body and PNG in body for body in stub.bodies)  # every attempt resends everything


def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed on exit: nothing listens there
    waits: list[float] = []
    client = RanetClient(f"http://127.0.0.1:{port}", retry=3, sleep=waits.append)
    with client, pytest.raises(ConnectionFailedError) as caught:
        client.classify(PNG)
    assert caught.value.status is None and caught.value.attempts == 3 and len(waits) == 2
    assert json.dumps(str(caught.value))
