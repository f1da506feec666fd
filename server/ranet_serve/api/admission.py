"""Admission control in front of the app: inference requests beyond the in-flight limit get 429.

The limit adapts (`api.concurrency.AdaptiveLimit`, capped at `max_inflight_requests`): it follows the
latency of the requests this front-end served, so admitted requests wait about a target latency at
most, however many clients hammer the server. Requests are also shed when the engine's queues (fed by
every front-end process) hold `max_queue_size` requests: admission is global, decided before the body
is read whichever front-end a request reached.

Why here and not only in the batcher: the batcher's bounded queue bounds work that reached it, but on a
small CPU model reading, parsing and decoding requests are the bottleneck, so under overload requests
pile up before they ever reach the queue, and latency grows without bound while nothing is shed. This
gate counts inference requests from the moment the app sees them until their answer is sent, and
sheds the excess before routing, dependencies or the body: a pure ASGI answer from pre-encoded bytes,
so rejecting costs a small fraction of serving. Shedding through the whole FastAPI stack costs nearly
as much as a real request, and at 2-4x overload the server would spend its time saying no (goodput
collapse). The answer has the same JSON shape, status and `Retry-After` as the batcher's 429.

gRPC requests (`api/grpc`) go through the same `Admission` object of their front-end process and are
shed with RESOURCE_EXHAUSTED at the same limits, before their tensors are decoded.

Admitted requests whose client disconnects after sending the body are cancelled: a queued request is
then skipped by the batcher instead of computed for nobody (Starlette does not cancel handlers when the
client goes away). Clients that time out and leave are common under overload, so this keeps capacity
for the ones still waiting.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ranet_serve.api.concurrency import AdaptiveLimit, LimitSettings
from ranet_serve.api.errors import error_body
from ranet_serve.api.paths import inference_model
from ranet_serve.cpus import frontend_count
from ranet_serve.engine.client import EngineClient
from ranet_serve.errors import OVERLOAD_REASONS, OverloadedError
from ranet_serve.metrics import RequestMetrics, model_label
from ranet_serve.settings import Settings

QUEUE_FULL, INFLIGHT_LIMIT, _, _ = OVERLOAD_REASONS
RETRY_AFTER_SECONDS = 1
# How long a connection that comes back before its Retry-After and is shed again waits for that 429 the
# first time (0.25-0.375 s with EarlyRetries' spread), doubling while it keeps coming back early, up to
# the Retry-After. Short at first: a closed-loop client shed once at a load just over the limit (64
# clients at full depth) is back in the running soon. Doubling: 400 clients that hammer cost about one
# 429 per client per Retry-After. Measured with 400 hey clients at full depth (2026-12-07, 2-core host,
# benchmarks/serving.py overload, two 15 s rounds, interleaved): 7,600 429s per round with doubling
# against 17,900 with the fixed short hold, the same goodput (853-940 vs 891-1009 200/s) and admitted
# p99 (75 vs 74-87 ms), and the 429 p50 of a client that honours Retry-After 1.7 vs 2.6-3.0 ms.
EARLY_RETRY_HOLD_SECONDS = 0.25
MINIMUM_LIMIT = 4  # the least the adaptive limit falls to with a latency objective set
BATCHES_IN_PIPELINE = 2  # without one: see batch_pipeline_floor


class Admission:
    """The admission state of one front-end process: its in-flight count, adaptive limit and the check
    of the engine's queue. Both protocols admit through the same object (`AdmissionGate` for HTTP, the
    gRPC servicer in `api/grpc`), so a process's limit counts every request it serves, whichever port it
    came in on. Runs on the event loop only, so a plain counter suffices."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: EngineClient,
        metrics: RequestMetrics,
        adaptive: AdaptiveLimit | None = None,
    ):
        self.limit = settings.max_inflight_requests
        self.adaptive = adaptive or adaptive_limit(settings)
        self.queue_limit = settings.max_queue_size
        self.engine = engine
        self.metrics = metrics
        self.default_model = settings.default_model
        self.default_model_explicit = settings.default_model_explicit
        self.active = 0
        self.messages = {
            INFLIGHT_LIMIT: f"too many requests in flight (adaptive limit, at most {self.limit})",
            QUEUE_FULL: f"the engine's queue is full ({self.queue_limit} requests)",
        }
        self.limits = {INFLIGHT_LIMIT: self.limit, QUEUE_FULL: self.queue_limit}

    def refusal(self) -> str | None:
        """Why a request arriving now is shed (INFLIGHT_LIMIT or QUEUE_FULL), or None: admit it."""
        if self.active >= self.adaptive.current:
            return INFLIGHT_LIMIT
        if self.engine.queued_requests() >= self.queue_limit:
            return QUEUE_FULL
        return None

    def admitted(self) -> Admitted:
        """Around an admitted request (after `refusal()` said None): counts it in flight, and feeds the
        adaptive limit its latency if it was served."""
        return Admitted(self)

    def shed(self, model: str | None, reason: str, seconds: float, protocol: str = "http") -> None:
        """Count a shed request (a 429 over HTTP, RESOURCE_EXHAUSTED over gRPC) and tell the engine."""
        name = model or self.engine.catalog.default_model(
            self.default_model, explicit=self.default_model_explicit
        )
        label = model_label(name, self.engine.catalog.has_model)
        self.metrics.request_finished(label, 429, seconds, reason, protocol)
        if label == name:
            self.engine.shed(name)  # the load-adaptive point hears of it, as of the engine's own sheds

    def overloaded(self, reason: str) -> OverloadedError:
        """The domain error of a shed request, with the message and details of the HTTP 429 body."""
        return OverloadedError(
            f"{self.messages[reason]}; retry after {RETRY_AFTER_SECONDS} s",
            retry_after_seconds=float(RETRY_AFTER_SECONDS),
            reason=reason,
            limit=self.limits[reason],
        )


class Admitted:
    """The context of `Admission.admitted()`; `served()` marks a request that was answered normally
    (errors answer early and would read as no load)."""

    __slots__ = ("admission", "ok", "started")

    def __init__(self, admission: Admission):
        self.admission = admission
        self.started = 0.0
        self.ok = False

    def served(self) -> None:
        self.ok = True

    def __enter__(self) -> Admitted:
        self.admission.active += 1
        self.admission.adaptive.note_in_flight(self.admission.active)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.admission.active -= 1
        if self.ok:
            self.admission.adaptive.observe(time.monotonic() - self.started)


class AdmissionGate:
    """Pure ASGI middleware; one per app, over the app's `Admission` (shared with gRPC)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        engine: EngineClient,
        metrics: RequestMetrics,
        adaptive: AdaptiveLimit | None = None,
        admission: Admission | None = None,
    ):
        self.app = app
        self.admission = admission or Admission(
            settings=settings, engine=engine, metrics=metrics, adaptive=adaptive
        )
        self.early_retries = (
            EarlyRetries(EARLY_RETRY_HOLD_SECONDS, maximum=RETRY_AFTER_SECONDS)
            if settings.hold_early_retries
            else None
        )
        self._bodies = {
            (reason, version): _shed_body(version, reason, message, self.admission.limits[reason])
            for reason, message in self.admission.messages.items()
            for version in ("v1", "v2")
        }

    @property
    def active(self) -> int:
        return self.admission.active

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_inference, model = (
            inference_model(scope["method"], scope["path"]) if scope["type"] == "http" else (False, None)
        )
        if not is_inference:
            await self.app(scope, receive, send)
            return
        reason = self.admission.refusal()
        if reason is not None:
            await self._shed(scope, send, model, reason, scope.get("client"))
            return
        with self.admission.admitted() as admitted:
            status = await self._run_until_disconnect(scope, receive, send)
            if status == 200:
                admitted.served()

    async def _run_until_disconnect(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Run the app in this task; cancel it if the client disconnects after its body and before its
        answer.

        Once the body has been received, nobody else reads `receive`, so a watcher waits on it: the
        server reports `http.disconnect` when the connection drops (or when the answer is complete,
        which the wrapped `send` marks first, so a finished request is never cancelled). The app runs in
        the server's own task for the request and only the watcher is a task of its own (py-spy, 16 hey
        clients: creating the app's and the watcher's tasks took 2.3% of a front-end's samples). A cancel the
        watcher made is told from one made from outside (shutdown) by the task's cancel count.
        """
        body_received = asyncio.Event()
        answered = False
        running = True
        disconnected = False
        status = 0
        task = asyncio.current_task()
        assert task is not None  # an ASGI app runs in a task

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_received.set()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal answered, status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        async def watch() -> None:
            nonlocal disconnected
            await body_received.wait()
            if not running:
                return
            message = await receive()
            if message["type"] == "http.disconnect" and not answered and running:
                disconnected = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, tracked_receive, tracked_send)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            disconnected = False  # our cancel, taken back here; if another is pending too, it goes on
            if task.uncancel() > 0:
                raise
        finally:
            running = False
            watcher.cancel()
            if disconnected:  # the app swallowed the cancel: take it back, so it cannot surface later
                task.uncancel()
        return status

    async def _shed(
        self,
        scope: Scope,
        send: Send,
        model: str | None,
        reason: str,
        connection: object = None,
    ) -> None:
        """Answer 429 from pre-encoded bytes; to a connection back before its last Retry-After was over,
        only once that is over (and remember every connection told to wait)."""
        if self.early_retries is not None and connection is not None:
            hold = self.early_retries.hold_seconds(connection)
            if hold > 0:
                await asyncio.sleep(hold)
            self.early_retries.told(connection)
        started = time.perf_counter()
        body = self._bodies[reason, "v2" if scope["path"].startswith("/v2/") else "v1"]
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.admission.shed(model, reason, time.perf_counter() - started)


class EarlyRetries:
    """Connections that were shed: a request back within its hold of the last 429 and shed again gets
    its 429 only when that hold is over.

    Only sheds wait: a request that finds room is admitted at once, early or not, so admitted latency
    never includes a hold and a client that kept coming back early is served as soon as the load falls.

    Why: closed-loop clients that ignore Retry-After (load tools, naive retry loops) resend the moment
    they get a 429, and on a small machine the storm of instant rejections takes the CPU the admitted
    requests need (measured: 400 such clients at full depth left 58-133 answered requests/s and 4,400-
    8,400 rejections/s, with admitted latency near a second). Holding an early retry on a timer costs
    nothing and turns each such client into at most one request per hold. A client that honours
    Retry-After never waits here, and the first 429 on a connection is answered at once.

    The hold starts at `seconds` (shorter than Retry-After, so a client shed once at a load just over
    the limit is soon back in the running) and doubles with every 429 the connection is told while it
    keeps coming back early, up to `maximum` (the Retry-After) spread included: a client that keeps
    hammering costs about one 429 per Retry-After, as it was asked to. A connection quiet for
    `2 x maximum` starts over. Without `maximum` the hold stays at `seconds`.

    Each connection's wait ends at a random point between its hold and `(1 + spread) x` it, never past
    `maximum` (a client that waits out its Retry-After is never held): clients shed in the same burst
    would otherwise all come back in the same millisecond, and that herd, answered on one event loop,
    delays every admitted request behind it.
    """

    SWEEP_AT = 4096  # entries; older ones are dropped then

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        maximum: float | None = None,
        spread: float = 0.5,
        uniform: Callable[[], float] = random.random,
    ):
        self.seconds = seconds
        self.maximum = seconds if maximum is None else max(maximum, seconds)
        self.clock = clock
        self.spread = spread
        self.uniform = uniform
        self._release: dict[object, float] = {}  # connection -> when its wait is over
        self._strikes: dict[object, tuple[int, float]] = {}  # connection -> (429s told in a row, last)

    def told(self, connection: object) -> None:
        now = self.clock()
        # Swept when full; still full after (thousands of connections all shed within the while): cleared,
        # so a sweep runs at most once per SWEEP_AT 429s. Forgetting a hold or a count only lets a 429 out
        # sooner.
        if len(self._release) >= self.SWEEP_AT:
            self._release = {c: t for c, t in self._release.items() if t > now}
            if len(self._release) >= self.SWEEP_AT // 2:
                self._release = {}
        if len(self._strikes) >= self.SWEEP_AT:
            self._strikes = {c: v for c, v in self._strikes.items() if now - v[1] <= 2 * self.maximum}
            if len(self._strikes) >= self.SWEEP_AT // 2:
                self._strikes = {}
        strikes, last = self._strikes.get(connection, (0, now))
        if now - last > 2 * self.maximum:
            strikes = 0
        # Spread included, never past `maximum`: a client that waits out its Retry-After finds no hold.
        hold = min(max(self.seconds, self.maximum / (1.0 + self.spread)), self.seconds * 2.0**strikes)
        self._strikes[connection] = (strikes + 1, now)
        self._release[connection] = now + hold * (1.0 + self.spread * self.uniform())

    def hold_seconds(self, connection: object) -> float:
        """How long a request on `connection` must wait for its hold to be over (0: none)."""
        release = self._release.get(connection)
        if release is None:
            return 0.0
        left = release - self.clock()
        if left <= 0:
            del self._release[connection]
            return 0.0
        return left


def adaptive_limit(settings: Settings, clock: Callable[[], float] = time.monotonic) -> AdaptiveLimit:
    """The in-flight limit of one front-end, capped by `max_inflight_requests`."""
    objective = settings.slo_p99_ms / 1000.0 if settings.slo_p99_ms is not None else None
    limit = settings.max_inflight_requests
    floor = MINIMUM_LIMIT if objective is not None else batch_pipeline_floor(settings)
    return AdaptiveLimit(LimitSettings(maximum=limit, minimum=min(floor, limit), objective_seconds=objective))


def batch_pipeline_floor(settings: Settings) -> int:
    """This front-end's share of the requests that keep the engine's batches full: one batch running
    and one forming (`BATCHES_IN_PIPELINE` x `max_batch_size`, split over the front-ends).

    Why a floor: an absolute latency target alone sheds a 64-client closed loop at full depth whenever
    the machine is slow enough that 64 / throughput exceeds it, and shedding there costs throughput: the
    batches shrink, and clients that resend at once after a 429 are held by `EarlyRetries` and sit idle
    (measured 2026-12-07: 857 of 9,000 requests shed, 566 against 660 req/s at 16 clients; 1.02x against
    1.45x LitServe's throughput without and with the floor; a floor of 1.5 batches: 0.94x). Under a heavy
    overload the limit falls to the floor and no further, so admitted latency is that of as many
    well-behaved clients: about 4x that of 16 (3.3-3.9x the 16-client p99 with 400 clients). With a
    latency objective set the objective rules (no floor)."""
    share = BATCHES_IN_PIPELINE * settings.max_batch_size / frontend_count(settings)
    return max(MINIMUM_LIMIT, math.ceil(share))


def _shed_body(version: str, reason: str, message: str, limit: int) -> bytes:
    details = {"reason": reason, "limit": limit, "retry_after_seconds": float(RETRY_AFTER_SECONDS)}
    text = f"{message}; retry after {RETRY_AFTER_SECONDS} s"
    return json.dumps(error_body(f"/{version}/", "overloaded", text, details=details)).encode()
