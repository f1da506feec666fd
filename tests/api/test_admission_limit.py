"""Admission: the adaptive in-flight limit bounds admitted latency, and what the gate sheds is heard.

The limit is driven through a simulated closed-loop server (Little's law: latency = in flight /
throughput) on a fake clock, so the numbers are exact and nothing depends on this machine's speed.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import nullcontext
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ranet_serve.api.admission import AdmissionGate, EarlyRetries, adaptive_limit, batch_pipeline_floor
from ranet_serve.api.concurrency import DEFAULT_TARGET_SECONDS, AdaptiveLimit, LimitSettings
from ranet_serve.engine.catalog import Catalog, CatalogEntry
from ranet_serve.metrics import RequestMetrics
from ranet_serve.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_closed_loop(
    limit: AdaptiveLimit,
    clock: FakeClock,
    clients: int,
    per_second: float,
    seconds: float,
    service: float = 0.002,
) -> list[float]:
    """Admitted latencies of `clients` clients against a server answering `per_second` requests/s
    whose inference takes `service` seconds."""
    latencies: list[float] = []
    while clock.now < seconds:
        admitted = min(clients, limit.current)
        latency = max(service, admitted / per_second)
        for _ in range(admitted):
            clock.now += 1.0 / per_second
            limit.note_in_flight(admitted)
            limit.observe_service(service)
            limit.observe(latency)
            latencies.append(latency)
    return latencies


def test_ordinary_load_keeps_the_limit_at_its_ceiling() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=256), clock)
    latencies = run_closed_loop(limit, clock, clients=40, per_second=1000.0, seconds=5.0)
    # 40 ms at 40 clients is under the 50 ms target: nothing is shed, and the limit keeps room to
    # spare without growing past twice what the load uses.
    assert 40 < limit.current <= 2 * 40
    assert max(latencies) < limit.target_seconds


def test_a_limit_raised_at_light_load_does_not_admit_the_next_burst_wholesale() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=256), clock)
    run_closed_loop(limit, clock, clients=16, per_second=700.0, seconds=5.0)
    assert limit.current == 64  # the usage floor: 16 in flight never needed more
    burst = run_closed_loop(limit, clock, clients=400, per_second=1000.0, seconds=10.0)
    # The first answers of the burst: at most 64 were admitted, so they waited 64 ms, not 256.
    assert burst[0] <= 0.064 and max(burst) <= 1.5 * limit.target_seconds


def test_overload_brings_admitted_latency_down_to_about_the_target() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=256), clock)
    latencies = run_closed_loop(limit, clock, clients=400, per_second=300.0, seconds=10.0)
    # A fixed limit of 256 would keep every request waiting 256 / 300 = 0.85 s. The adaptive one starts
    # at 32 (a burst at start-up is not admitted whole: 32 / 300 = 0.107 s) and never lets the latency
    # run away; once settled it stays within 1.5x the target.
    target = limit.target_seconds
    assert target == DEFAULT_TARGET_SECONDS
    assert max(latencies) <= max(1.5 * target, 32 / 300.0)
    settled = latencies[len(latencies) // 2 :]
    assert max(settled) <= 1.5 * target
    assert 300 * target * 0.5 <= limit.current <= 256  # still enough in flight to keep the engine busy


def test_an_objective_sets_the_target_to_half_of_it() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=256, objective_seconds=0.08), clock)
    latencies = run_closed_loop(limit, clock, clients=400, per_second=300.0, seconds=10.0)
    assert limit.target_seconds == 0.04
    assert max(latencies[len(latencies) // 2 :]) <= 0.08  # within the objective


def test_the_limit_follows_the_slow_tail_of_a_window_not_its_mean() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=256, initial=64), clock)
    for latency in [0.02] * 8 + [0.15] * 2:  # with the sample below: mean 44 ms, under the 50 ms target
        limit.observe(latency)
    clock.now += 0.06  # the window is long enough now: the next sample closes it
    limit.observe(0.02)
    assert limit.target_seconds == 0.05
    assert limit.current < 64


def test_a_slow_model_is_not_held_to_the_default_target() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=64), clock)
    run_closed_loop(limit, clock, clients=8, per_second=20.0, seconds=20.0, service=0.13)
    assert limit.service_seconds == 0.13 and limit.target_seconds == 4 * 0.13
    assert limit.current >= 8  # eight clients of a 130 ms model are not overload


def test_without_an_objective_the_limit_keeps_two_full_batches_in_flight() -> None:
    # 64 clients against a slow engine (600 req/s: 107 ms each, twice the 50 ms target) are not shed:
    # below two full batches (one running, one forming) shedding only shrinks the batches.
    settings = Settings(max_batch_size=32, frontends=1)
    assert batch_pipeline_floor(settings) == 64
    assert batch_pipeline_floor(Settings(max_batch_size=32, frontends=4)) == 16  # each front-end's share
    assert batch_pipeline_floor(Settings(max_batch_size=1, frontends=4)) == 4  # never under the minimum
    clock = FakeClock()
    limit = adaptive_limit(settings, clock)
    latencies = run_closed_loop(limit, clock, clients=64, per_second=600.0, seconds=5.0)
    assert min(latencies) > limit.target_seconds  # over the target all along ...
    assert limit.current == 64  # ... and still every client admitted
    # Under a heavy overload the floor bounds what is admitted: 64 in flight, about 64 / 600 s each.
    burst = run_closed_loop(limit, clock, clients=400, per_second=600.0, seconds=10.0)  # 5 s more
    assert limit.current == 64 and max(burst) == pytest.approx(64 / 600.0)


def test_with_an_objective_the_limit_may_fall_below_two_full_batches() -> None:
    settings = Settings(max_batch_size=32, frontends=1, slo_p99_ms=80.0)
    clock = FakeClock()
    limit = adaptive_limit(settings, clock)
    latencies = run_closed_loop(limit, clock, clients=64, per_second=600.0, seconds=10.0)
    assert limit.settings.minimum == 4 and limit.current < 64
    assert max(latencies[len(latencies) // 2 :]) <= 0.08  # the objective rules


def test_the_limit_starts_low_and_climbs_to_its_ceiling_while_latency_is_low() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=256), clock)
    assert limit.current == 32
    run_closed_loop(limit, clock, clients=400, per_second=100_000.0, seconds=5.0)  # a very fast server
    assert limit.current == 256


def test_the_limit_never_leaves_its_bounds() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(LimitSettings(maximum=16, minimum=4), clock)
    limit.observe_service(0.001)
    for _ in range(2000):
        clock.now += 0.01
        limit.observe(10.0)
    assert limit.current == 4
    for _ in range(2000):
        clock.now += 0.01
        limit.observe(0.001)
    assert limit.current == 16


def test_shed_and_refused_requests_stay_out_of_the_latency_histogram() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    for status in (429, 401, 200, 503):
        metrics.request_finished("tiny", status, 0.01)
    metrics.request_finished("tiny", 429, 0.01, protocol="grpc")

    def count(status: str | None = None, protocol: str = "http") -> float:
        labels = {"model": "tiny", "protocol": protocol}
        if status is None:
            value = registry.get_sample_value("ranet_request_duration_seconds_count", labels)
        else:
            value = registry.get_sample_value("ranet_requests_total", {**labels, "status": status})
        return value or 0.0

    assert count() == 2  # the 200 and the 503
    assert (count("429"), count("401"), count("200")) == (1, 1, 1)
    assert (count("429", "grpc"), count(None, "grpc")) == (1, 0)


class FakeEngine:
    """What the gate reads: the catalog, the engine's queue, and where sheds are reported."""

    def __init__(self, queued: int = 0) -> None:
        self.catalog = Catalog.of([CatalogEntry(name="tiny", version="1", state="failed", error="-")])
        self.queued = queued
        self.sheds: list[str] = []

    def queued_requests(self) -> int:
        return self.queued

    def shed(self, model: str) -> None:
        self.sheds.append(model)

    def arriving(self, model: str, version: str | None) -> Any:
        return nullcontext()


async def call(
    gate: AdmissionGate, path: str, client: tuple[str, int] | None = None
) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "client": client}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    return sent[0]["status"], body, dict(sent[0]["headers"])


def test_gate_sheds_reach_the_engine_and_a_full_engine_queue_sheds_before_the_body() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            entered.set()
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        engine = FakeEngine()
        settings = Settings(max_inflight_requests=1, max_queue_size=8, default_model="tiny")
        gate = AdmissionGate(app, settings=settings, engine=engine, metrics=RequestMetrics())  # type: ignore[arg-type]
        first = asyncio.ensure_future(call(gate, "/v1/classify"))
        await entered.wait()
        status, body, headers = await call(gate, "/v2/models/tiny/infer")
        assert status == 429 and headers[b"retry-after"] == b"1"
        assert body["code"] == "overloaded" and "in flight" in body["error"]
        assert engine.sheds == ["tiny"]  # the load-adaptive point hears of the gate's sheds too
        status, _, _ = await call(gate, "/v1/models/nonexistent/classify")
        assert status == 429 and engine.sheds == ["tiny"]  # unknown models are no load signal
        release.set()
        assert (await first)[0] == 200

        engine.queued = 8  # every front-end's requests in the engine's queue: full
        status, body, _ = await call(gate, "/v1/classify")
        assert status == 429 and body["error"]["details"]["reason"] == "queue_full"
        assert engine.sheds == ["tiny", "tiny"]

    asyncio.run(scenario())


def test_early_retries_wait_out_their_retry_after_and_honest_clients_never_wait() -> None:
    clock = FakeClock()
    early = EarlyRetries(1.0, clock, spread=0.0)
    assert early.hold_seconds(("10.0.0.1", 5000)) == 0  # never told: no wait
    early.told(("10.0.0.1", 5000))
    clock.now += 0.25
    assert early.hold_seconds(("10.0.0.1", 5000)) == 0.75  # back early: waits out the rest
    assert early.hold_seconds(("10.0.0.1", 5001)) == 0  # another connection is not held
    clock.now += 0.75
    assert early.hold_seconds(("10.0.0.1", 5000)) == 0  # came back after Retry-After: no wait
    for port in range(EarlyRetries.SWEEP_AT + 10):  # old entries are swept, memory stays bounded
        clock.now += 0.01
        early.told(("10.0.0.2", port))
    assert len(early._release) <= EarlyRetries.SWEEP_AT


def test_early_retries_shed_together_come_back_spread_over_half_their_retry_after() -> None:
    clock = FakeClock()
    draws = iter([0.0, 0.5, 1.0])
    early = EarlyRetries(1.0, clock, spread=0.5, uniform=lambda: next(draws))
    for port in (1, 2, 3):
        early.told(("10.0.0.1", port))
    assert [early.hold_seconds(("10.0.0.1", port)) for port in (1, 2, 3)] == [1.0, 1.25, 1.5]


def test_an_early_retry_that_is_shed_again_gets_its_429_when_its_retry_after_is_over(
    monkeypatch: Any,
) -> None:
    held: list[float] = []

    async def no_wait(seconds: float) -> None:
        held.append(seconds)

    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            entered.set()
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        settings = Settings(max_inflight_requests=1, default_model="tiny")
        gate = AdmissionGate(app, settings=settings, engine=FakeEngine(), metrics=RequestMetrics())  # type: ignore[arg-type]
        clock = FakeClock()
        gate.early_retries = EarlyRetries(1.0, clock, spread=0.0)
        monkeypatch.setattr("ranet_serve.api.admission.asyncio.sleep", no_wait)
        first = asyncio.ensure_future(call(gate, "/v1/classify", client=("127.0.0.1", 1)))
        await entered.wait()
        assert (await call(gate, "/v1/classify", client=("127.0.0.1", 2)))[0] == 429  # full: shed at once
        assert held == []
        clock.now = 0.05
        status, _, headers = await call(gate, "/v1/classify", client=("127.0.0.1", 2))  # back at once
        assert status == 429 and headers[b"retry-after"] == b"1"
        assert held == [0.95]  # its 429 came when its Retry-After was over
        assert (await call(gate, "/v1/classify", client=("127.0.0.1", 3)))[0] == 429  # others: at once
        assert held == [0.95]
        release.set()
        assert (await first)[0] == 200
        # Back early once more, but now there is room: admitted at once, no wait in its latency.
        clock.now = 0.1
        entered.clear()
        second = asyncio.ensure_future(call(gate, "/v1/classify", client=("127.0.0.1", 2)))
        await entered.wait()
        assert held == [0.95]
        assert (await second)[0] == 200

    asyncio.run(scenario())


def test_a_connection_that_keeps_coming_back_early_is_held_longer_up_to_its_retry_after() -> None:
    clock = FakeClock()
    draws = [0.0]
    early = EarlyRetries(0.25, clock, maximum=1.0, spread=0.5, uniform=lambda: draws[0])
    conn = ("10.0.0.1", 5000)
    holds = []
    for _ in range(5):  # shed, back the moment its hold is over, shed again ...
        early.told(conn)
        holds.append(early.hold_seconds(conn))
        clock.now += holds[-1]
    # Doubling from the short hold, capped so that even the largest spread ends at the Retry-After.
    assert holds == pytest.approx([0.25, 0.5, 1.0 / 1.5, 1.0 / 1.5, 1.0 / 1.5])
    draws[0] = 1.0  # the largest spread
    early.told(conn)
    assert early.hold_seconds(conn) == pytest.approx(1.0)
    clock.now += 1.0  # a client that honours Retry-After is never held, however many 429s it had
    assert early.hold_seconds(conn) == 0
    clock.now += 2.5  # quiet for longer than two Retry-Afters: it starts over
    draws[0] = 0.0
    early.told(conn)
    assert early.hold_seconds(conn) == pytest.approx(0.25)
    assert early.hold_seconds(("10.0.0.1", 5001)) == 0  # strikes are per connection
    for port in range(EarlyRetries.SWEEP_AT + 10):  # the strike table stays bounded too
        clock.now += 0.01
        early.told(("10.0.0.2", port))
    assert len(early._strikes) <= EarlyRetries.SWEEP_AT
    for port in range(3 * EarlyRetries.SWEEP_AT):  # a storm of distinct connections all at once
        early.told(("10.0.0.3", port))
    assert len(early._strikes) <= EarlyRetries.SWEEP_AT and len(early._release) <= EarlyRetries.SWEEP_AT


def test_a_client_that_leaves_cancels_its_app_and_a_shutdown_cancel_still_propagates() -> None:
    """The app runs in the request's own task; the watcher cancels that task when the client goes away
    after its body. That cancel ends the request quietly (nothing answered, the task not left
    cancelling); a cancel from outside (shutdown) still reaches the server, alone or together with it."""

    async def scenario(outer_cancel: bool, client_leaves: bool) -> tuple[str, list[str], int]:
        entered = asyncio.Event()
        leave = asyncio.Event()
        events: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()  # the body: from here on the watcher reads `receive`
            entered.set()
            try:
                await asyncio.Event().wait()  # the engine, which never answers here
            except asyncio.CancelledError:
                events.append("app cancelled")
                raise

        async def receive() -> dict[str, Any]:
            if not events and not entered.is_set():
                events.append("body")
                return {"type": "http.request", "body": b"", "more_body": False}
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            events.append(f"sent {message['type']}")

        settings = Settings(default_model="tiny")
        gate = AdmissionGate(app, settings=settings, engine=FakeEngine(), metrics=RequestMetrics())  # type: ignore[arg-type]
        scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [], "client": None}
        request = asyncio.ensure_future(gate(scope, receive, send))
        await entered.wait()
        if client_leaves:
            leave.set()
            await asyncio.sleep(0)  # the watcher runs and cancels the request's task ...
        if outer_cancel:
            request.cancel()  # ... and with both, a shutdown cancels it too before it runs again
        if not outer_cancel:
            await request
            return "returned", events, request.cancelling()
        try:
            await request
        except asyncio.CancelledError:
            return "cancelled", events, gate.active
        return "returned", events, gate.active

    outcome, events, cancelling = asyncio.run(scenario(outer_cancel=False, client_leaves=True))
    assert outcome == "returned" and events == ["body", "app cancelled"] and cancelling == 0
    outcome, events, active = asyncio.run(scenario(outer_cancel=True, client_leaves=False))
    assert outcome == "cancelled" and events == ["body", "app cancelled"] and active == 0
    outcome, events, active = asyncio.run(scenario(outer_cancel=True, client_leaves=True))
    assert outcome == "cancelled" and events == ["body", "app cancelled"] and active == 0
