"""Operating points that follow load: keep a latency objective by trading accuracy for FLOPs.

With a p99 objective set, the server's default operating point (the one a request without budget
knobs gets) moves along the bundle's calibrated accuracy/FLOPs curve:

* down (cheaper) quickly when the recent p99 exceeds `high_water` x objective, or when requests are
  shed for a full queue (a shed request counts as an infinitely late one): the next point costs at
  most `step_down` x the current FLOPs, and less in proportion to how far the p99 overshoots
  (`high_water` x objective / p99, down to `max_drop` x the FLOPs in one move), so a sudden overload
  reaches a point that can carry it in one or two moves instead of one small step per dwell time;
  with the worker busy `saturated` of the time since the last move, the move is always the biggest
  one allowed, because the latencies of the requests that got through understate a growing queue;
* down at once, before any answer, when a request arrives behind more work than `high_water` x
  objective at the worker's recent cost per image while the worker is `saturated`
  (`observe_arrival`): the leading signal that catches a sudden overload within tens of
  milliseconds instead of after `min_samples` answers;
* up (more accurate) slowly when the p99 since the last move stayed under `low_water` x objective,
  never beyond the ceiling (the configured default point). Where the worker's busy time is known,
  to the dearest point that would keep the worker's utilisation at or below `max_utilisation_up`
  (today's utilisation scaled by the FLOPs ratio), and nowhere if none would: a point that carries
  the load with a low p99 looks like headroom, and a move up that overloads the worker again builds
  the queue whose latency the objective was set against. Otherwise to the first point that costs at
  least `step_up` x the current FLOPs;
* never twice within `dwell_seconds` (`up_dwell_factor` times longer before a move up, so a point
  that just relieved an overload is not given up at once), and only on samples taken since the
  last move, so every decision judges the point that is being served (that, and the gap between
  the two water marks, is the hysteresis).

Only the efficient frontier of the curve is used: a point that is dearer than another but no more
accurate on validation data is never worth moving to. Requests that set any knob are untouched:
the controller only moves the default. Pure logic with an injectable clock; thread-safe, because
request handlers report from the event loop while metrics read from anywhere.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ranet_serve.export.manifest import OperatingPoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptiveSettings:
    slo_p99_seconds: float
    window_seconds: float = 2.0  # samples older than this do not count
    dwell_seconds: float = 1.0  # minimum time between two moves
    up_dwell_factor: float = 4.0  # a move up waits this many dwell times since the last move
    min_samples: int = 20  # a p99 of fewer samples is noise
    high_water: float = 0.8  # move down above this share of the objective
    low_water: float = 0.5  # move up below this share of the objective
    step_down: float = 0.75  # next point's FLOPs <= this x current FLOPs
    max_drop: float = 0.25  # ...and never below this x current FLOPs in one move
    step_up: float = 1.25  # next point's FLOPs >= this x current FLOPs
    # Worker utilisation (busy share of wall time) where it is known. Measured with the default bundle
    # on 2 cores, where HTTP and decoding share the cores with the worker: 0.8-0.95 when overloaded,
    # 0.6 at the edge of the objective, 0.35-0.4 with room to spare; and it grows faster than FLOPs
    # (a move from 4.0 to 4.8 MFLOPs took it from 0.40 to 0.62), so the bar sits at the low end.
    max_utilisation_up: float = 0.4  # move up only to a point this would stay under
    saturated: float = 0.75  # at or above this since the last move: the biggest move down allowed

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slo_p99_seconds) and self.slo_p99_seconds > 0):
            raise ValueError(
                f"the p99 objective must be a positive number of seconds, got {self.slo_p99_seconds}"
            )
        if not 0 < self.low_water < self.high_water:
            raise ValueError("need 0 < low_water < high_water (the gap is the hysteresis)")
        if not (0 < self.max_drop <= self.step_down < 1 < self.step_up):
            raise ValueError("need 0 < max_drop <= step_down < 1 < step_up")
        if not self.max_utilisation_up > 0:
            raise ValueError(f"max_utilisation_up must be positive, got {self.max_utilisation_up}")


def efficient_frontier(points: Sequence[OperatingPoint], ceiling: OperatingPoint) -> list[OperatingPoint]:
    """Points no dearer than `ceiling`, cheapest first, each strictly more accurate than all cheaper ones.

    The ceiling itself is always the last entry.
    """
    candidates = sorted(
        (p for p in points if p.expected_flops < ceiling.expected_flops),
        key=lambda p: (p.expected_flops, -p.val_accuracy),
    )
    frontier: list[OperatingPoint] = []
    for point in candidates:
        if point.val_accuracy >= ceiling.val_accuracy:
            # As accurate as the ceiling and cheaper: keep it, but nothing dearer is worth it.
            frontier.append(point)
            break
        if not frontier or point.val_accuracy > frontier[-1].val_accuracy:
            frontier.append(point)
    frontier.append(ceiling)
    return frontier


class LoadAdaptivePoint:
    """Chooses the default operating point from recent request latencies."""

    def __init__(
        self,
        points: Sequence[OperatingPoint],
        ceiling: str,
        settings: AdaptiveSettings,
        *,
        on_change: Callable[[OperatingPoint], None] | None = None,
        busy_seconds: Callable[[], float] | None = None,
        admitted_images: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`busy_seconds`: the worker's cumulative busy time (`Batcher.busy_seconds`), for the
        utilisation checks; None moves on latency alone. `admitted_images` (`Batcher.admitted_images`)
        gives, with it, the worker's cost per image, which `observe_arrival` needs."""
        by_name = {p.name: p for p in points}
        if ceiling not in by_name:
            raise ValueError(f"unknown ceiling point {ceiling!r}")
        self.settings = settings
        self.frontier = efficient_frontier(points, by_name[ceiling])
        self._index = len(self.frontier) - 1
        self._on_change = on_change
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()  # (time, seconds), since the last move
        # Kept as samples come and go, so a request costs O(1) under the lock: the p99 itself is only
        # computed when a move down needs its size.
        self._above_high = 0  # samples > high_water x objective
        self._not_below_low = 0  # samples >= low_water x objective
        self._last_move = -math.inf
        self._busy_seconds = busy_seconds
        self._admitted_images = admitted_images
        # (time, worker busy seconds, images admitted) at each event since the last move, in the window.
        self._busy_marks: deque[tuple[float, float, int]] = deque()
        self._lock = threading.Lock()
        self.moves = 0

    @property
    def current(self) -> OperatingPoint:
        return self.frontier[self._index]

    def observe(self, seconds: float) -> None:
        """Record one answered request's latency (server-side, arrival to answer)."""
        self._record(seconds)

    def observe_shed(self) -> None:
        """Record a request refused for overload: as late as can be."""
        self._record(math.inf)

    def _record(self, seconds: float) -> None:
        moved_to: OperatingPoint | None = None
        with self._lock:
            now = self._clock()
            self._count(seconds, +1)
            self._samples.append((now, seconds))
            horizon = now - self.settings.window_seconds
            while self._samples and self._samples[0][0] < horizon:
                self._count(self._samples.popleft()[1], -1)
            self._mark(now)
            if now - self._last_move >= self.settings.dwell_seconds:
                moved_to = self._decide(now, may_rise=now - self._last_move >= self._up_dwell)
        if moved_to is not None and self._on_change is not None:
            self._on_change(moved_to)

    def observe_arrival(self, backlog_images: int) -> None:
        """Record a request arriving with `backlog_images` of work ahead of it (queued and running).

        The leading signal: an answered request's latency arrives only after its wait, so at a sudden
        overload the first move would come after `min_samples` answers (about 130 ms at full depth on
        the dev machine), with a queue that deep already built. When the work ahead of an arriving
        request would take longer than `high_water` x objective at the worker's recent cost per image,
        and the worker is `saturated`, the point moves down at once, as far as one move may.
        """
        moved_to: OperatingPoint | None = None
        with self._lock:
            now = self._clock()
            self._mark(now)
            if self._index > 0 and now - self._last_move >= self.settings.dwell_seconds:
                wait = backlog_images * self._seconds_per_image()
                if (
                    wait > self.settings.high_water * self.settings.slo_p99_seconds
                    and self.utilisation_after(self.frontier[self._index]) >= self.settings.saturated
                ):
                    budget = self.frontier[self._index].expected_flops * self.settings.max_drop
                    moved_to = self._move(
                        self._cheapest_within(budget),
                        now,
                        f"{backlog_images} images ahead of a new request, about {1000 * wait:.1f} ms of work",
                    )
        if moved_to is not None and self._on_change is not None:
            self._on_change(moved_to)

    def _mark(self, now: float) -> None:
        if self._busy_seconds is None:
            return
        admitted = self._admitted_images() if self._admitted_images is not None else 0
        self._busy_marks.append((now, self._busy_seconds(), admitted))
        horizon = now - self.settings.window_seconds
        while self._busy_marks[0][0] < horizon:
            self._busy_marks.popleft()

    def _seconds_per_image(self) -> float:
        """The worker's busy seconds per admitted image since the last move (0 if unknown)."""
        if len(self._busy_marks) < 2:
            return 0.0
        (_, busy_then, images_then), (_, busy_now, images_now) = self._busy_marks[0], self._busy_marks[-1]
        images = images_now - images_then
        return (busy_now - busy_then) / images if images > 0 else 0.0

    def _count(self, seconds: float, sign: int) -> None:
        objective = self.settings.slo_p99_seconds
        self._above_high += sign * (seconds > self.settings.high_water * objective)
        self._not_below_low += sign * (seconds >= self.settings.low_water * objective)

    def recent_p99(self) -> float | None:
        """The p99 of the samples that count now (None below `min_samples`)."""
        with self._lock:
            return self._p99()

    def _p99(self) -> float | None:
        if len(self._samples) < self.settings.min_samples:
            return None
        # 'higher' keeps an infinite (shed) sample from turning into NaN by interpolation.
        return float(np.percentile([s for _, s in self._samples], 99, method="higher"))

    def utilisation_after(self, point: OperatingPoint) -> float:
        """The worker's recent utilisation, scaled to `point`'s FLOPs (0 if unknown).

        Recent: over the samples that count now (since the last move, within the window). Stage time
        grows less than in proportion to FLOPs (every call has a fixed cost), so the estimate errs on
        the busy side: it may hold a move up back, never wave an overload through.
        """
        if len(self._busy_marks) < 2:
            return 0.0
        (since, busy_then, _), (until, busy_now, _) = self._busy_marks[0], self._busy_marks[-1]
        if until <= since:
            return 0.0
        utilisation = (busy_now - busy_then) / (until - since)
        return utilisation * point.expected_flops / self.frontier[self._index].expected_flops

    @property
    def _up_dwell(self) -> float:
        return self.settings.dwell_seconds * self.settings.up_dwell_factor

    def _decide(self, now: float, may_rise: bool) -> OperatingPoint | None:
        n = len(self._samples)
        if n < self.settings.min_samples:
            return None
        # The p99 ('higher' method) is the sorted sample at rank k, so it is above a threshold exactly
        # when at least n - k samples are, and below one exactly when at most n - k - 1 are not.
        k = math.ceil(0.99 * (n - 1))
        objective = self.settings.slo_p99_seconds
        current = self.frontier[self._index].expected_flops
        target = self._index
        if self._above_high >= n - k and self._index > 0:
            p99 = self._p99()
            assert p99 is not None
            overshoot = self.settings.high_water * objective / p99  # 0 for a shed request
            if self.utilisation_after(self.frontier[self._index]) >= self.settings.saturated:
                # A saturated worker: the queue grows with every request, and the latencies seen so far
                # (of requests that got through) understate the overload. Go as far as one move may.
                overshoot = 0.0
            target = self._cheapest_within(
                current * max(self.settings.max_drop, min(self.settings.step_down, overshoot))
            )
        elif may_rise and self._not_below_low <= n - k - 1 and self._index < len(self.frontier) - 1:
            if self._busy_seconds is not None and len(self._busy_marks) >= 2:
                # The dearest point the worker could carry at today's load, however far up it is.
                affordable = [
                    i
                    for i in range(self._index + 1, len(self.frontier))
                    if self.utilisation_after(self.frontier[i]) <= self.settings.max_utilisation_up
                ]
                target = affordable[-1] if affordable else self._index
            else:
                wanted = current * self.settings.step_up
                dearer = [
                    i
                    for i in range(self._index + 1, len(self.frontier))
                    if self.frontier[i].expected_flops >= wanted
                ]
                target = dearer[0] if dearer else len(self.frontier) - 1
        if target == self._index:
            return None
        return self._move(
            target, now, f"{n} samples since the last move, p99 {1000 * (self._p99() or 0.0):.1f} ms"
        )

    def _cheapest_within(self, budget: float) -> int:
        """The dearest point below the current one that costs at most `budget` FLOPs (else the cheapest)."""
        cheaper = [i for i in range(self._index) if self.frontier[i].expected_flops <= budget]
        return cheaper[-1] if cheaper else 0

    def _move(self, target: int, now: float, why: str) -> OperatingPoint:
        logger.info(
            "operating point %s -> %s (%s; objective %.1f ms, worker utilisation %.2f)",
            self.frontier[self._index].name,
            self.frontier[target].name,
            why,
            1000 * self.settings.slo_p99_seconds,
            self.utilisation_after(self.frontier[self._index]),
        )
        self._index = target
        self._last_move = now
        self._busy_marks.clear()
        self._samples.clear()  # judge the new point on its own latencies
        self._above_high = self._not_below_low = 0
        self.moves += 1
        return self.frontier[target]
