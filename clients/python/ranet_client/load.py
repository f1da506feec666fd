"""A bounded load generator: closed loop (N concurrent clients) or open loop (a fixed request rate).

Every run stops by itself: after `requests` requests or `duration` seconds, whichever comes first, and
never later than MAX_DURATION_S plus one request timeout (an overall guard cancels anything left). It
targets only the URL it is given. Retries are off by default because a load test should count the
server's 429s, not hide them. The report is computed from the answers alone, so it can be checked
against the server's own /metrics.

The same loop drives other servers for comparisons (`plain_path`: one image per request to a fixed
path, e.g. TorchServe's `/predictions/<model>`); see `ranet_client.targets`.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import httpx

from ranet_client import aiohttp_transport
from ranet_client._protocol import DEFAULT_URL, Encoding
from ranet_client.aio import AsyncRanetClient
from ranet_client.budget import KNOB_NAMES, parse_flops
from ranet_client.errors import RanetError
from ranet_client.image_sets import Sample
from ranet_client.targets import (
    PLAIN_BODIES,
    PlainBody,
    PlainTarget,
    Prediction,
    RanetTarget,
    RawTarget,
    Target,
    TargetPool,
)

Wire = Literal["auto", "httpx", "aiohttp", "raw"]

MAX_DURATION_S = 600.0
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 512
MAX_RATE = 10_000.0
MAX_BATCH = 256
DEFAULT_REQUESTS = 100
NO_BUDGET = "none"


# -- budget mix ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetChoice:
    """One entry of a budget mix: knobs sent with a share `weight` of the requests."""

    name: str
    knobs: dict[str, str]
    weight: float


def parse_budget_mix(text: str | None) -> tuple[BudgetChoice, ...]:
    """Parse a budget mix such as "none:0.5,max_flops=20M:0.3,target_flops=15M:0.2".

    Syntax: entries separated by ","; each entry is `SPEC[:WEIGHT]` (weight 1 when omitted; weights are
    relative). SPEC is `none` (the server's default operating point) or `KNOB=VALUE` pairs joined by
    "&", e.g. `max_flops=20M&top_k=3`. Per-exit thresholds use "/" between exits:
    `thresholds=0.9/0.8/0.8/0.6/0.5/1`. Raises ValueError naming the bad entry.
    """
    if text is None or not text.strip():
        return (BudgetChoice(NO_BUDGET, {}, 1.0),)
    choices = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        spec, weight = entry, 1.0
        if ":" in entry:
            spec, _, weight_text = entry.rpartition(":")
            try:
                weight = float(weight_text)
            except ValueError as exc:
                raise ValueError(
                    f"budget mix entry {entry!r}: weight {weight_text!r} is not a number"
                ) from exc
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"budget mix entry {entry!r}: the weight must be positive")
        choices.append(BudgetChoice(spec.strip(), _parse_spec(spec.strip(), entry), weight))
    if not choices:
        raise ValueError("the budget mix is empty")
    return tuple(choices)


def _parse_spec(spec: str, entry: str) -> dict[str, str]:
    if spec.lower() == NO_BUDGET:
        return {}
    knobs: dict[str, str] = {}
    for pair in spec.split("&"):
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"budget mix entry {entry!r}: expected KNOB=VALUE, got {pair!r}")
        if key not in KNOB_NAMES:
            raise ValueError(
                f"budget mix entry {entry!r}: unknown knob {key!r}; known: {', '.join(KNOB_NAMES)}"
            )
        if key in ("max_flops", "target_flops"):
            parse_flops(value)  # fail before the run, not as hundreds of 422s
        if key == "thresholds":
            value = value.replace("/", ",")
        knobs[key] = value
    return knobs


# -- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    """What to run. `rate` set: open loop (requests start on schedule, at most `max_inflight` pending,
    extra ones are counted as dropped); otherwise closed loop with `concurrency` clients.
    `retries` is the number of attempts per request (1: no retries). `plain_path` set: the target is
    not RANet Serve but a plain classifier taking one image per request at `url` + `plain_path`
    (`plain_body`: the raw file or a multipart form), so no batch, budget knobs or retries."""

    url: str = DEFAULT_URL
    model: str | None = None
    requests: int | None = None
    duration: float | None = None
    concurrency: int = 4
    rate: float | None = None
    batch: int = 1
    mix: tuple[BudgetChoice, ...] = (BudgetChoice(NO_BUDGET, {}, 1.0),)
    top_k: int | None = None
    timeout: float = 30.0
    retries: int = 1
    encoding: Encoding = "multipart"
    seed: int = 0
    max_inflight: int = 256
    plain_path: str | None = None
    plain_body: PlainBody = "raw"
    # How requests go over the wire: aiohttp when installed (the `fast` extra), else httpx's own; "raw":
    # pre-encoded HTTP/1.1 bytes on keep-alive connections (ranet_client.rawhttp), the cheapest client.
    wire: Wire = "auto"

    def validated(self) -> LoadConfig:
        """Checked and bounded: a request count when neither count nor duration is given, durations capped."""
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"requests must be in 1..{MAX_REQUESTS}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be positive")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE:g}] requests per second")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be in 1..{MAX_BATCH}")
        if not 1 <= self.max_inflight <= 10 * MAX_CONCURRENCY:
            raise ValueError(f"max_inflight must be in 1..{10 * MAX_CONCURRENCY}")
        if self.timeout <= 0 or self.retries < 1:
            raise ValueError("timeout must be positive and retries at least 1")
        if not self.mix:
            raise ValueError("the budget mix is empty")
        if self.wire not in ("auto", "httpx", "aiohttp", "raw"):
            raise ValueError(f"wire must be auto, httpx, aiohttp or raw, got {self.wire!r}")
        if self.wire == "raw" and not self.url.startswith("http://"):
            raise ValueError("wire raw speaks plain http only (no TLS)")
        if self.wire == "aiohttp" and not aiohttp_transport.available():
            raise ValueError("wire aiohttp needs aiohttp: pip install 'ranet-client[fast]'")
        if self.plain_path is not None:
            self._check_plain()
        requests = DEFAULT_REQUESTS if self.requests is None and self.duration is None else self.requests
        return replace(self, requests=requests, duration=min(self.duration or MAX_DURATION_S, MAX_DURATION_S))

    def _check_plain(self) -> None:
        """A plain server has no batches, budgets or top-k: refuse rather than silently drop them."""
        if self.plain_body not in PLAIN_BODIES:
            raise ValueError(f"plain_body must be one of {', '.join(PLAIN_BODIES)}")
        if not (self.plain_path or "").startswith("/"):
            raise ValueError("plain_path must start with '/'")
        if self.batch != 1:
            raise ValueError("a plain target takes one image per request: batch must be 1")
        if any(choice.knobs for choice in self.mix) or self.top_k is not None:
            raise ValueError("a plain target takes no budget knobs or top_k")
        if self.retries != 1:
            raise ValueError("a plain target is never retried: retries must be 1")

    @property
    def mode(self) -> str:
        return "open-loop" if self.rate is not None else "closed-loop"


# -- records and report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """One answered image; `exit`, `flops` and `confidence` are None when the server does not report
    them (a plain target), and `correct` when the image has no label."""

    exit: int | None
    flops: int | None
    confidence: float | None
    budget_limited: bool
    correct: bool | None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; `status` is the HTTP status or "connection_error"/"timeout".
    The server timings are None when the server does not send them."""

    choice: str
    latency_s: float
    status: str
    code: str | None = None
    images: tuple[ImageRecord, ...] = ()
    server_queue_ms: float | None = None
    server_inference_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "200"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ms = [1000.0 * x for x in latencies_s]
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": sum(ms) / len(ms),
    }


@dataclass(frozen=True)
class BudgetSummary:
    """Per budget-mix entry: what it cost and how accurate it was."""

    requests: int
    ok: int
    images: int
    mean_flops_per_image: float | None
    accuracy: float | None
    latency_p50_ms: float | None


@dataclass(frozen=True)
class LoadReport:
    """The outcome of a run. Exit counts, FLOPs and accuracy cover the images of successful requests;
    latency covers successful requests (errors are counted by status and code instead)."""

    mode: str
    url: str
    model: str | None
    duration_s: float
    requests_sent: int
    requests_ok: int
    requests_failed: int
    requests_dropped: int
    images_ok: int
    throughput_rps: float
    images_per_s: float
    latency_ms: dict[str, float | None]
    exit_counts: dict[int, int]
    total_flops: int
    mean_flops_per_image: float | None
    budget_limited_images: int
    labelled_images: int
    correct_images: int
    accuracy: float | None
    errors_by_status: dict[str, int]
    errors_by_code: dict[str, int]
    by_budget: dict[str, BudgetSummary]
    server_queue_ms_mean: float | None
    server_inference_ms_mean: float | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_fractions(self) -> dict[int, float]:
        total = sum(self.exit_counts.values())
        return {k: v / total for k, v in self.exit_counts.items()} if total else {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (exit indices become string keys, as JSON requires)."""
        data = asdict(self)
        data["exit_counts"] = {str(k): v for k, v in sorted(self.exit_counts.items())}
        data["exit_fractions"] = {str(k): v for k, v in sorted(self.exit_fractions.items())}
        return data


def _mean(values: Sequence[float | int | None]) -> float | None:
    """Mean of the known values; None when none is known (never a made-up zero)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def summarize(
    records: Sequence[RequestRecord], config: LoadConfig, duration_s: float, dropped: int = 0
) -> LoadReport:
    """Aggregate request records into a report (pure: testable without a server)."""
    ok = [r for r in records if r.ok]
    images = [image for r in ok for image in r.images]
    exits = Counter(image.exit for image in images if image.exit is not None)
    total_flops = sum(image.flops for image in images if image.flops is not None)
    judged = [image.correct for image in images if image.correct is not None]
    failed = [r for r in records if not r.ok]
    by_budget: dict[str, BudgetSummary] = {}
    for choice in config.mix:
        mine = [r for r in records if r.choice == choice.name]
        mine_ok = [r for r in mine if r.ok]
        mine_images = [image for r in mine_ok for image in r.images]
        mine_judged = [image.correct for image in mine_images if image.correct is not None]
        by_budget[choice.name] = BudgetSummary(
            requests=len(mine),
            ok=len(mine_ok),
            images=len(mine_images),
            mean_flops_per_image=_mean([i.flops for i in mine_images]),
            accuracy=sum(mine_judged) / len(mine_judged) if mine_judged else None,
            latency_p50_ms=1000.0 * percentile([r.latency_s for r in mine_ok], 50) if mine_ok else None,
        )
    elapsed = max(duration_s, 1e-9)
    config_echo = {key: value for key, value in asdict(config).items() if key not in ("mix",)} | {
        "mix": {c.name: c.weight for c in config.mix}
    }
    return LoadReport(
        mode=config.mode,
        url=config.url,
        model=config.model,
        duration_s=duration_s,
        requests_sent=len(records),
        requests_ok=len(ok),
        requests_failed=len(failed),
        requests_dropped=dropped,
        images_ok=len(images),
        throughput_rps=len(ok) / elapsed,
        images_per_s=len(images) / elapsed,
        latency_ms=_latency_summary([r.latency_s for r in ok]),
        exit_counts=dict(sorted(exits.items())),
        total_flops=total_flops,
        mean_flops_per_image=_mean([image.flops for image in images]),
        budget_limited_images=sum(image.budget_limited for image in images),
        labelled_images=len(judged),
        correct_images=sum(judged),
        accuracy=sum(judged) / len(judged) if judged else None,
        errors_by_status=dict(sorted(Counter(r.status for r in failed).items())),
        errors_by_code=dict(sorted(Counter(r.code or r.status for r in failed).items())),
        by_budget=by_budget,
        server_queue_ms_mean=_mean([r.server_queue_ms for r in ok]),
        server_inference_ms_mean=_mean([r.server_inference_ms for r in ok]),
        config=config_echo,
    )


# -- the run ---------------------------------------------------------------------------------------


class _Plan:
    """Which images and budget request i sends: images cycle through the samples in order (every
    sample equally often), budgets are drawn from the mix with a seeded generator."""

    def __init__(self, config: LoadConfig, samples: Sequence[Sample]):
        self.config = config
        self.samples = samples
        self.rng = random.Random(config.seed)
        self.weights = [c.weight for c in config.mix]

    def request(self, index: int) -> tuple[BudgetChoice, list[Sample]]:
        choice = self.rng.choices(self.config.mix, weights=self.weights)[0]
        batch = self.config.batch
        n = len(self.samples)
        return choice, [self.samples[(index * batch + j) % n] for j in range(batch)]


def _judge(sample: Sample, prediction: Prediction) -> bool | None:
    """Whether a prediction is right: by class index when both sides have one, else by label name."""
    if sample.class_index is not None and prediction.class_index is not None:
        return prediction.class_index == sample.class_index
    if sample.label is not None and prediction.label is not None:
        return prediction.label == sample.label
    return None


# Most HTTP clients the load generator opens; more connections than this are shared out among them.
MAX_CLIENTS = 64


def make_target(config: LoadConfig) -> TargetPool:
    """The target `config` describes (a plain classifier when `plain_path` is set, else RANet Serve), as
    a pool of clients with one connection each, or a few beyond MAX_CLIENTS (see `TargetPool`)."""
    connections = config.concurrency if config.rate is None else config.max_inflight
    clients = min(connections, MAX_CLIENTS)
    per_client = math.ceil(connections / clients)
    # One TLS context for every client: httpx would build one per client (about 20 ms each).
    tls = ssl.create_default_context()

    wire = config.wire if config.wire != "auto" else ("aiohttp" if aiohttp_transport.available() else "httpx")

    def transport() -> httpx.AsyncBaseTransport:
        if wire == "aiohttp":  # a third of httpx's CPU per request: see ranet_client.aiohttp_transport
            return aiohttp_transport.AiohttpTransport(max_connections=per_client)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        return httpx.AsyncHTTPTransport(verify=tls, limits=limits)

    targets: list[Target] = []
    if wire == "raw":  # pre-encoded requests on keep-alive connections: see ranet_client.rawhttp
        raw = RawTarget(
            config.url,
            ranet=config.plain_path is None,
            model=config.model,
            path=config.plain_path,
            body=config.plain_body,
            timeout=config.timeout,
        )
        return TargetPool([raw])
    for _ in range(clients):
        if config.plain_path is not None:
            targets.append(
                PlainTarget(
                    config.url,
                    config.plain_path,
                    body=config.plain_body,
                    timeout=config.timeout,
                    transport=transport(),  # the transport holds the connection limits
                )
            )
        else:
            client = AsyncRanetClient(
                config.url,
                model=config.model,
                timeout=config.timeout,
                retry=config.retries,
                encoding=config.encoding,
                transport=transport(),
            )
            targets.append(RanetTarget(client))
    return TargetPool(targets)


async def _one(
    target: Target, config: LoadConfig, choice: BudgetChoice, batch: list[Sample]
) -> RequestRecord:
    started = time.perf_counter()
    knobs: dict[str, Any] = dict(choice.knobs)
    if config.top_k is not None and "top_k" not in knobs:
        knobs["top_k"] = config.top_k
    try:
        answer = await target.classify([s.data for s in batch], knobs)
    except RanetError as exc:
        # A 2xx whose body could not be read failed too: it is recorded by its code, never as "200".
        answered = exc.status is not None and not 200 <= exc.status < 300
        status = str(exc.status) if answered else (exc.code or "invalid_response")
        return RequestRecord(choice.name, time.perf_counter() - started, status, exc.code)
    latency = time.perf_counter() - started
    images = tuple(
        ImageRecord(
            exit=p.exit,
            flops=p.flops,
            confidence=p.confidence,
            budget_limited=p.budget_limited,
            correct=_judge(sample, p),
        )
        for sample, p in zip(batch, answer.predictions, strict=False)
    )
    return RequestRecord(
        choice.name,
        latency,
        "200",
        images=images,
        server_queue_ms=answer.queue_ms,
        server_inference_ms=answer.inference_ms,
    )


async def run_load(
    config: LoadConfig,
    samples: Sequence[Sample],
    *,
    client: AsyncRanetClient | None = None,
    target: Target | None = None,
    on_request: Callable[[RequestRecord], None] | None = None,
) -> LoadReport:
    """Run the load described by `config` with `samples` and report. A `client` (RANet Serve) or any
    `target` may be supplied and is left open; otherwise `make_target(config)` creates one that is
    closed afterwards. `on_request` sees each record (progress bars)."""
    config = config.validated()
    if not samples:
        raise ValueError("no images to send")
    plan = _Plan(config, samples)
    records: list[RequestRecord] = []
    dropped = 0
    if client is not None and target is not None:
        raise ValueError("give a client or a target, not both")
    own = client is None and target is None
    if target is None:
        target = make_target(config) if client is None else RanetTarget(client, own=False)
    assert config.duration is not None
    start = time.perf_counter()
    deadline = start + config.duration

    def record(result: RequestRecord) -> None:
        records.append(result)
        if on_request is not None:
            on_request(result)

    async def one(index: int) -> None:
        choice, batch = plan.request(index)
        record(await _one(target, config, choice, batch))

    async def closed_loop() -> None:
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while (config.requests is None or issued < config.requests) and time.perf_counter() < deadline:
                index = issued
                issued += 1
                await one(index)

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))

    async def open_loop() -> None:
        nonlocal dropped
        assert config.rate is not None
        pending: set[asyncio.Task[None]] = set()
        index = 0
        try:
            while config.requests is None or index < config.requests:
                due = start + index / config.rate
                if due >= deadline:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= config.max_inflight:
                    dropped += 1  # the server is not keeping up; an unbounded backlog would hide it
                else:
                    task = asyncio.create_task(one(index))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                index += 1
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()

    # The hard stop: the schedule ends at the deadline, and requests still running then get at most
    # every attempt's timeout plus the longest retry wait.
    guard = config.duration + config.retries * (config.timeout + 30.0) + 5.0
    try:
        async with asyncio.timeout(guard):
            await (open_loop() if config.rate is not None else closed_loop())
    except TimeoutError:
        pass
    finally:
        if own:
            await target.aclose()
    return summarize(records, config, time.perf_counter() - start, dropped)


def run_load_sync(config: LoadConfig, samples: Sequence[Sample], **kwargs: Any) -> LoadReport:
    """`run_load` for callers without an event loop (the CLI), on `event_loop_factory()`'s loop."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run_load(config, samples, **kwargs))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the `fast` extra), else None: asyncio's own.

    Why: the load generator shares the machine it measures, and every microsecond of its CPU is taken
    from the server. On the raw wire most of what is left per request is the event loop's own work
    (a write, a read, a timer for the timeout, a task switch); uvloop does it in C.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
