"""An adaptive concurrency limit for one front-end: admit only as many requests as keep latency bounded.

Why: a fixed in-flight limit is either too low for a light model or holds seconds of work for a
heavy one (measured with 400 clients at full depth: a limit of 256 admitted requests that then
waited 1.7-2.1 s). By Little's law the latency of admitted requests is the in-flight count over the
throughput, so bounding latency means bounding the in-flight count at throughput x target. Like
Netflix's concurrency-limits gradient algorithm, the limit follows the ratio of a latency target to
the recent latency (the 90th percentile of a window of served requests: a mean hides the tail the
target is about): while requests take longer than the target the limit shrinks in proportion;
while they do not, it grows by about its square root (additive increase), so at ordinary load it
rises to the ceiling and nothing is shed. The target needs no setting: half the latency objective
when one is set (so the p99 of admitted requests stays within it), else the larger of 50 ms and
four times the engine's recent shortest inference time (a model that takes 130 ms per image is not
held to 50 ms). Inference time, not latency: under a sustained overload every latency includes the
queue, so the lowest latency seen says nothing about the model.

The limit never falls below `LimitSettings.minimum`: without an objective the front-end's share of two
full batches (`api.admission.batch_pipeline_floor`), since shedding below that costs throughput (smaller
batches, and shed clients held idle by the early-retry rule).

The limit also stays within `USAGE_HEADROOM` times the most requests that were actually in flight
lately (as TCP does not grow a window the sender is not using, RFC 7661). Without that, an hour at
light load would raise the limit to its ceiling, and the first burst of a heavy overload would be
admitted wholesale: measured with 400 clients after a 16-client run, the first round's admitted p99
was 309 ms against 173 ms in the next round, which started from the limit the first had found.

Only the front-end's event loop calls this (no locking). Time comes from a clock the tests replace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Without an objective. Measured 2026-12-07 on the 2-core dev machine (benchmarks/serving.py's overload
# part: 400 closed-loop hey clients at full depth, two 15 s rounds, early retries held 0.25 s by
# admission.EARLY_RETRY_HOLD_SECONDS; the 16-client p99 was 21-26 ms): admitted p50 / p99 57-64 / 100-103 ms
# at 70 ms, 46-47 / 83-85 ms at 50 ms, 39 / 79-85 ms at 40 ms; goodput 1.11x, 1.0x and 0.93x the 16-client
# rate. Below 50 ms the p50 falls but the p99 does not (the tail is not the queue) while goodput does.
# A 64-client closed loop (hey, 5 s) is shed a little: 327 of about 5,600 requests at 50 ms (42 at 70 ms),
# 1,055 answered/s against 990 at 16 clients: the work the limit turns away is work beyond 50 ms of queue.
DEFAULT_TARGET_SECONDS = 0.05
SERVICE_MULTIPLE = 4.0
USAGE_HEADROOM = 2.0  # the limit grows to at most this multiple of the recent peak in flight


@dataclass(frozen=True)
class LimitSettings:
    maximum: int = 256
    minimum: int = 4
    # Where the limit starts (capped by `maximum`): a burst at start-up is admitted only this far until
    # latencies are known, as TCP's slow start; additive increase reaches the ceiling within seconds.
    initial: int = 32
    # The least the limit may grow to whatever the load uses (see USAGE_HEADROOM). 64: a jump from 16 to
    # 64 clients (32 per front-end) is not shed (measured with 32 here: 64 of 3,400 requests answered
    # 429; with 64, none), while a burst of 400 after a light load waits about 128 / 1000 s at full depth.
    usage_floor: int = 64
    window_seconds: float = 0.05  # the recent latency: over at least this long ...
    window_samples: int = 8  # ... and at least this many requests, ...
    window_quantile: float = 0.9  # ... the latency this share of them stayed within
    service_reset_seconds: float = 10.0  # the shortest inference time is measured anew this often
    smoothing: float = 0.5  # share of a new limit taken at each update
    objective_seconds: float | None = None  # a p99 objective (RANET_SLO_P99_MS)


class AdaptiveLimit:
    """`current` moves with `observe(seconds)` of every admitted request that was served."""

    def __init__(self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.limit = float(min(max(settings.initial, settings.minimum), settings.maximum))
        self.service_seconds = math.inf
        self._service_next = math.inf
        self._service_since = clock()
        self._window_start = clock()
        self._window: list[float] = []
        self._peak_in_flight = 0  # the most requests in flight since the last update

    @property
    def current(self) -> int:
        return int(self.limit)

    @property
    def target_seconds(self) -> float:
        if self.settings.objective_seconds is not None:
            return 0.5 * self.settings.objective_seconds
        service = self.service_seconds if math.isfinite(self.service_seconds) else 0.0
        return max(DEFAULT_TARGET_SECONDS, SERVICE_MULTIPLE * service)

    def observe_service(self, seconds: float) -> None:
        """Record the engine's inference time of one served request (no queueing in it)."""
        now = self.clock()
        if now - self._service_since >= self.settings.service_reset_seconds:
            self.service_seconds = self._service_next  # the shortest of the last period takes over
            self._service_next = math.inf
            self._service_since = now
        self.service_seconds = min(self.service_seconds, seconds)
        self._service_next = min(self._service_next, seconds)

    def note_in_flight(self, count: int) -> None:
        """Record how many requests are in flight as one more is admitted."""
        if count > self._peak_in_flight:
            self._peak_in_flight = count

    def observe(self, seconds: float) -> None:
        """Record one served request's latency (arrival to answer, in this front-end)."""
        now = self.clock()
        window = self._window
        window.append(seconds)
        if (
            len(window) >= self.settings.window_samples
            and now - self._window_start >= self.settings.window_seconds
        ):
            window.sort()
            self._update(window[min(len(window) - 1, int(self.settings.window_quantile * len(window)))])
            self._window, self._window_start = [], now

    def _update(self, recent_seconds: float) -> None:
        s = self.settings
        gradient = self.target_seconds / max(recent_seconds, 1e-9)
        grow = gradient >= 1.0  # at or under the target: additive increase; over it: at most halve
        if grow:
            target = self.limit + math.sqrt(self.limit)
            if self._peak_in_flight > 0:  # not past what the load uses (never below the floor)
                target = min(target, max(float(s.usage_floor), USAGE_HEADROOM * self._peak_in_flight))
        else:
            target = self.limit * max(0.5, gradient)
        self._peak_in_flight = 0
        self.limit = (1 - s.smoothing) * self.limit + s.smoothing * target
        self.limit = min(max(self.limit, s.minimum), s.maximum)
