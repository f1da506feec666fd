"""The load-adaptive operating point: frontier, moves down and up, hysteresis, dwell, shedding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranet_serve.engine.adaptive import AdaptiveSettings, LoadAdaptivePoint, efficient_frontier
from ranet_serve.export.manifest import OperatingPoint


def point(name: str, mflops: float, accuracy: float) -> OperatingPoint:
    return OperatingPoint(
        name=name,
        method="optimized",
        thresholds=(0.5, 1.0),
        expected_flops=mflops * 1e6,
        val_accuracy=accuracy,
        exit_distribution=(0.5, 0.5),
    )


# A curve with a dominated point (d: dearer than c, less accurate) and one beyond the ceiling (z).
CURVE = (
    point("a", 4.0, 90.0),
    point("b", 5.0, 91.0),
    point("c", 6.0, 92.0),
    point("d", 7.0, 91.5),
    point("e", 8.0, 92.5),
    point("f", 10.0, 93.0),
    point("z", 20.0, 93.5),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(clock: FakeClock, moved: list[str] | None = None, **overrides: float) -> LoadAdaptivePoint:
    values: dict[str, float] = {"slo_p99_seconds": 0.100, "min_samples": 10, **overrides}
    return LoadAdaptivePoint(
        CURVE,
        "f",
        AdaptiveSettings(**values),  # type: ignore[arg-type]
        on_change=(lambda p: moved.append(p.name)) if moved is not None else None,
        clock=clock,
    )


def feed(
    target: LoadAdaptivePoint, clock: FakeClock, seconds: float, count: int, spacing: float = 0.01
) -> None:
    for _ in range(count):
        clock.now += spacing
        target.observe(seconds)


def test_frontier_drops_dominated_and_dearer_points_and_ends_at_the_ceiling() -> None:
    names = [p.name for p in efficient_frontier(CURVE, CURVE[5])]
    assert names == ["a", "b", "c", "e", "f"]
    # A cheaper point as accurate as the ceiling ends the frontier below it.
    names = [p.name for p in efficient_frontier((*CURVE, point("g", 9.0, 93.0)), CURVE[5])]
    assert names == ["a", "b", "c", "e", "g", "f"]


def test_starts_at_the_ceiling_and_steps_down_by_at_least_a_quarter_of_the_flops() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved)
    assert adaptive.current.name == "f"
    feed(adaptive, clock, 0.090, 10)  # p99 90 ms > 0.8 x 100 ms
    assert adaptive.current.name == "c"  # most accurate point with <= 7.5 MFLOPs (d is dominated)
    assert moved == ["c"]


@pytest.mark.parametrize(("p99", "expected"), [(0.100, "c"), (0.140, "b"), (0.200, "a"), (10.0, "a")])
def test_a_larger_overshoot_moves_further_in_one_step(p99: float, expected: str) -> None:
    # Budget = 10 MFLOPs x max(0.25, min(0.75, 80 ms / p99)): 7.5 (c), 5.7 (b), 4.0 (a), 2.5 (a: cheapest).
    clock = FakeClock()
    adaptive = controller(clock)
    feed(adaptive, clock, p99, 10)
    assert adaptive.current.name == expected
    assert adaptive.moves == 1


def test_no_second_move_within_the_dwell_time_and_only_on_new_samples() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved, dwell_seconds=1.0)
    feed(adaptive, clock, 0.090, 10)
    assert moved == ["c"]
    feed(adaptive, clock, 0.090, 9, spacing=0.1)  # 0.9 s later, and 9 samples < min_samples
    assert moved == ["c"]
    feed(adaptive, clock, 0.090, 1, spacing=0.2)  # dwell passed, 10 samples since the move
    assert moved == ["c", "a"]  # 6 * 0.75 = 4.5 MFLOPs: a
    feed(adaptive, clock, 0.090, 20, spacing=0.2)
    assert moved == ["c", "a"]  # already the cheapest point


def test_latency_between_the_water_marks_holds_the_point() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved)
    feed(adaptive, clock, 0.090, 10)
    feed(adaptive, clock, 0.065, 200, spacing=0.1)  # 65 ms: under 80 ms, over 50 ms
    assert moved == ["c"]


def test_climbs_back_to_the_ceiling_but_never_beyond_when_load_falls() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved)
    feed(adaptive, clock, 0.090, 10)
    feed(adaptive, clock, 0.090, 10, spacing=0.2)
    assert adaptive.current.name == "a"
    feed(adaptive, clock, 0.010, 200, spacing=0.2)
    # Up by at least 25% of the FLOPs per move: a (4) -> b (5) -> e (8 >= 6.25) -> f (10).
    assert moved == ["c", "a", "b", "e", "f"]
    assert adaptive.current.name == "f"


def test_old_samples_leave_the_window() -> None:
    clock = FakeClock()
    adaptive = controller(clock, window_seconds=2.0)
    feed(adaptive, clock, 0.060, 30, spacing=0.01)
    assert adaptive.recent_p99() == pytest.approx(0.060)
    clock.now += 5.0
    adaptive.observe(0.060)
    assert adaptive.recent_p99() is None  # one sample left: below min_samples


def test_a_shed_request_counts_as_infinitely_late() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved)
    feed(adaptive, clock, 0.010, 9)  # fast requests...
    clock.now += 0.01
    adaptive.observe_shed()  # ...but one was refused for a full queue
    assert moved == ["a"]  # shed: the largest single drop (to 2.5 MFLOPs: the cheapest point)
    assert adaptive.recent_p99() is None  # samples restart after a move


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        AdaptiveSettings(slo_p99_seconds=math.nan)
    with pytest.raises(ValueError, match="hysteresis"):
        AdaptiveSettings(slo_p99_seconds=0.1, low_water=0.9, high_water=0.8)
    with pytest.raises(ValueError, match="step_down"):
        AdaptiveSettings(slo_p99_seconds=0.1, step_down=1.2)
    with pytest.raises(ValueError, match="max_drop"):
        AdaptiveSettings(slo_p99_seconds=0.1, max_drop=0.9)
    with pytest.raises(ValueError, match="unknown ceiling"):
        LoadAdaptivePoint(CURVE, "nope", AdaptiveSettings(slo_p99_seconds=0.1))


def test_a_move_up_waits_longer_than_a_move_down() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved, dwell_seconds=1.0, up_dwell_factor=4.0)
    feed(adaptive, clock, 0.090, 10)
    assert moved == ["c"]
    feed(adaptive, clock, 0.010, 35, spacing=0.1)  # 3.5 s of fast answers: too soon to rise
    assert moved == ["c"]
    feed(adaptive, clock, 0.010, 6, spacing=0.1)  # 4.1 s since the move down
    assert moved == ["c", "e"]  # 6 MFLOPs x 1.25 = 7.5: e (8), the cheapest point at least that dear


@pytest.mark.parametrize("seed", range(5))
def test_decisions_equal_the_rule_on_the_p99_of_the_window(seed: int) -> None:
    # The controller keeps counts instead of sorting the window; its decisions must equal the rule
    # "p99 (numpy, method 'higher') above 80% / below 50% of the objective" on random windows.
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(20, 400))
        latencies = rng.choice(
            [0.03, 0.045, 0.05, 0.06, 0.08, 0.081, 0.2], size=n, p=rng.dirichlet(np.ones(7))
        )
        p99 = float(np.percentile(latencies, 99, method="higher"))
        clock = FakeClock()
        down = controller(clock, min_samples=n, dwell_seconds=0.0)
        for value in latencies:
            clock.now += 1e-4
            down.observe(float(value))
        assert (down.moves == 1) == (p99 > 0.080), (n, p99)
        clock = FakeClock()
        up = controller(clock, min_samples=n, dwell_seconds=0.0)
        up.observe_shed()  # one shed alone is below min_samples unless n == 1: force a move down first
        for _ in range(n - 1):
            clock.now += 1e-4
            up.observe(0.5)
        assert up.current.name == "a"
        for value in latencies:
            clock.now += 1e-4
            up.observe(float(value))
        assert (up.current.name != "a") == (p99 < 0.050), (n, p99)


class FakeWorker:
    """A worker whose busy share of wall time is `load` x the served point's MFLOPs: its cumulative busy
    seconds, as the batcher counts them."""

    def __init__(self, clock: FakeClock, load: float):
        self.clock = clock
        self.load = load
        self.busy = 0.0
        self.last = clock.now
        self.serving: LoadAdaptivePoint | None = None

    def __call__(self) -> float:
        mflops = self.serving.current.expected_flops / 1e6 if self.serving is not None else 10.0
        self.busy += (self.clock.now - self.last) * self.load * mflops
        self.last = self.clock.now
        return self.busy


def measured(clock: FakeClock, worker: FakeWorker, moved: list[str], **overrides: float) -> LoadAdaptivePoint:
    values: dict[str, float] = {"slo_p99_seconds": 0.100, "min_samples": 10, "dwell_seconds": 0.0}
    adaptive = LoadAdaptivePoint(
        CURVE,
        "f",
        AdaptiveSettings(**{**values, **overrides}),  # type: ignore[arg-type]
        on_change=lambda p: moved.append(p.name),
        busy_seconds=worker,
        clock=clock,
    )
    worker.serving = adaptive
    return adaptive


def test_a_saturated_worker_takes_the_biggest_move_down_at_once() -> None:
    # The same small overshoot (p99 90 ms vs 80 ms) that moves f -> c on latency alone (see above).
    clock, moved = FakeClock(), []
    adaptive = measured(clock, FakeWorker(clock, 0.095), moved)  # 0.95 busy at f (10 MFLOPs)
    feed(adaptive, clock, 0.090, 10)
    assert moved == ["a"]  # 10 x 0.25 = 2.5 MFLOPs allowed: the cheapest point
    clock, moved = FakeClock(), []
    adaptive = measured(clock, FakeWorker(clock, 0.05), moved)  # 0.5 busy at f
    feed(adaptive, clock, 0.090, 10)
    assert moved == ["c"]  # a worker with room: the overshoot decides, as without the check


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (0.0125, ["a", "f"]),  # 0.05 busy at a (4 MFLOPs); f would make it 0.125: straight there
        (0.03, ["a", "e"]),  # 0.12 at a; f would need 0.30 > 0.25, e (8 MFLOPs) 0.24; and e stays
        (0.055, ["a"]),  # 0.22 at a; b (5 MFLOPs) would need 0.275: no move up, however low the p99
    ],
)
def test_moves_up_only_as_far_as_the_worker_can_carry(load: float, expected: list[str]) -> None:
    clock, moved = FakeClock(), []
    worker = FakeWorker(clock, 0.095)
    adaptive = measured(clock, worker, moved, max_utilisation_up=0.25)
    feed(adaptive, clock, 0.090, 10)
    assert moved == ["a"]
    worker.load = load
    feed(adaptive, clock, 0.010, 80, spacing=0.1)
    assert moved == expected
    mflops = adaptive.current.expected_flops / 1e6
    assert adaptive.utilisation_after(adaptive.current) == pytest.approx(load * mflops)


class FakeIntake:
    """Images admitted to the worker: `rate` per second of the fake clock."""

    def __init__(self, clock: FakeClock, rate: float):
        self.clock, self.rate, self.start = clock, rate, clock.now

    def __call__(self) -> int:
        return int((self.clock.now - self.start) * self.rate)


@pytest.mark.parametrize(
    ("load", "backlog", "expected"),
    [
        (0.095, 200, ["a"]),  # 0.95 busy, 200 images x 0.95 ms = 190 ms ahead: move now, all the way
        (0.095, 50, []),  # 47.5 ms of work ahead: under 0.8 x 100 ms
        (0.05, 200, []),  # a lot queued but the worker is only half busy: latency decides, not this
    ],
)
def test_an_arrival_behind_a_deep_queue_moves_down_before_any_answer(
    load: float, backlog: int, expected: list[str]
) -> None:
    clock, moved = FakeClock(), []
    worker, intake = FakeWorker(clock, load), FakeIntake(clock, 1000.0)  # 1000 images/s admitted
    adaptive = LoadAdaptivePoint(
        CURVE,
        "f",
        AdaptiveSettings(slo_p99_seconds=0.100, dwell_seconds=0.0),
        on_change=lambda p: moved.append(p.name),
        busy_seconds=worker,
        admitted_images=intake,
        clock=clock,
    )
    worker.serving = adaptive
    for _ in range(5):  # 50 ms of arrivals, no answer yet: the latency rule has nothing to go on
        clock.now += 0.01
        adaptive.observe_arrival(backlog)
    assert moved == expected
    assert adaptive.recent_p99() is None


def test_arrivals_without_the_workers_cost_never_move() -> None:
    clock, moved = FakeClock(), []
    adaptive = controller(clock, moved)  # no busy time, no intake: the latency rule alone
    for _ in range(50):
        clock.now += 0.01
        adaptive.observe_arrival(10_000)
    assert moved == []
