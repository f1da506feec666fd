"""Anytime prediction and deadlines that degrade (issue 18): what streaming and `on_deadline` buy.

Starts `ranet serve` on 127.0.0.1 with the bundle (stress.py's `start_server`, the server's own split of
the cores), then measures two things on Fashion-MNIST test images with their labels.

Part A, streaming. Each image is one streamed request (`classify_stream` of the project's async client,
one client per connection, --stream-clients of them in a closed loop), at full depth (`confidence=1`:
every image passes every exit) and at the default operating point. Per image: the time from sending to
the first `exit` event and to the final one (the answer), and whether the events came in exit order
(exits 0, 1, ... of the one image, only the last one final, then `done`); one out of order fails the
run (exit code 1, after the results are written). At the default point the same figures for the
images that go deep (final exit >= --deep-exit), the ones an anytime answer helps.

Part B, deadlines under overload. One image per request, pre-encoded, sent by stress.py's minimal
HTTP/1.1 client (a fraction of httpx's CPU, which the server would otherwise lose on a small host):
  1. capacity R: closed loop, 16 clients, full depth, answers 200 per second;
  2. unloaded latency: one client, full depth, p50; the deadline D is --deadline-factor x that p50
     (or --deadline-ms);
  3. open loop at --multiple x R (requests start on schedule whatever the server does, latency counts
     from the scheduled start; at most --max-inflight pending, later ones count as dropped) for
     --phase-seconds, once per configuration, in turn: full depth with `deadline_ms=D` and
     `on_deadline=error`; the same with `on_deadline=best`; the same with `on_deadline=best` and
     `deadline_ms` = --best-share x D (a client leaving room for the answer's way back); the default
     point with `deadline_ms=D` and `on_deadline=best`; full depth without a deadline (the fixed
     reference point).
Every configuration is judged against D as the client measures it. Per configuration: share of
requests answered 200 within D, answered 200 later, 504, 429 and anything else (the five sum to 1);
accuracy of the 200s, of those within D, and over all requests counting every miss as wrong; mean exit
and MFLOPs per answered image; share of answers that are `deadline_limited`, and how far past D those
arrive. The server runs with RANET_HOLD_EARLY_RETRIES=false: the open-loop client sends many
independent arrivals over shared keep-alive connections, which that setting would read as one client
retrying early (its documented exception: a proxy's shared upstream connections).

`make bench` runs it as run_all.py's step `anytime` (its sizes: --anytime-* options there).
Writes anytime.json and anytime.md. Usage:

    .venv/bin/python benchmarks/anytime.py [--stream-images 1000] [--stream-clients 4]
        [--phase-seconds 5] [--rounds 1] [--multiple 2] [--deadline-factor 2.5] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ranet_client import AsyncRanetClient, ExitEvent, StreamSummary
from ranet_client.image_sets import Sample

from common import DEFAULT_BUNDLE, ROOT, fmnist_samples, machine_facts, versions
from ranet_serve.export.bundle import load_bundle
from stress import Pool, closed_loop, encode_classify, open_loop, percentile, start_server, stop_server

FULL_DEPTH = {"confidence": "1"}
SERVER_ENV = {"RANET_HOLD_EARLY_RETRIES": "false"}
CAPACITY_CLIENTS = 16
STATUSES = ("within_deadline", "late_200", "deadline_504", "shed_429", "other")


# -- Part A: streaming ------------------------------------------------------------------------------------


@dataclass
class Streamed:
    """One streamed image: seconds from sending to its first and final `exit` events and to `done`."""

    index: int
    first_s: float
    final_s: float
    done_s: float
    exits: list[int]
    final_exit: int
    first_correct: bool
    final_correct: bool
    in_order: bool
    problem: str | None = None


def check_order(items: Sequence[ExitEvent | StreamSummary]) -> str | None:
    """None when the events of a one-image stream came in exit order, else what was wrong."""
    events = [item for item in items if isinstance(item, ExitEvent)]
    if not items or not isinstance(items[-1], StreamSummary):
        return "the stream did not end with its done event"
    if sum(isinstance(item, StreamSummary) for item in items) != 1:
        return "more than one done event"
    if not events:
        return "no exit event"
    exits = [e.exit for e in events]
    if exits != list(range(len(exits))):
        return f"exits out of order: {exits}"
    if {e.image for e in events} != {0}:
        return f"images {sorted({e.image for e in events})} in a one-image request"
    if [e.final for e in events] != [False] * (len(events) - 1) + [True]:
        return f"final flags {[e.final for e in events]}: only the last event may be final"
    return None


async def stream_one(client: AsyncRanetClient, index: int, sample: Sample, knobs: dict[str, Any]) -> Streamed:
    items: list[ExitEvent | StreamSummary] = []
    arrived: list[float] = []
    started = time.perf_counter()
    async with client.classify_stream(sample.data, **knobs) as stream:
        async for item in stream:
            arrived.append(time.perf_counter() - started)
            items.append(item)
    problem = check_order(items)
    events = [(t, item) for t, item in zip(arrived, items, strict=True) if isinstance(item, ExitEvent)]
    finals = [(t, e) for t, e in events if e.final] or events[-1:]
    (first_s, first), (final_s, final) = events[0], finals[-1]
    return Streamed(
        index=index,
        first_s=first_s,
        final_s=final_s,
        done_s=arrived[-1],
        exits=[e.exit for _, e in events],
        final_exit=final.exit,
        first_correct=first.class_index == sample.class_index,
        final_correct=final.class_index == sample.class_index,
        in_order=problem is None,
        problem=problem,
    )


async def stream_images(
    url: str, samples: Sequence[Sample], knobs: dict[str, str], clients: int, timeout: float
) -> tuple[list[Streamed], float, float]:
    """Every sample once, streamed by `clients` closed-loop clients; (records, wall s, client CPU s)."""
    records: list[Streamed] = []
    cursor = 0

    async def worker() -> None:
        nonlocal cursor
        async with AsyncRanetClient(url, timeout=timeout, retry=1, max_connections=1) as client:
            while cursor < len(samples):
                index = cursor
                cursor += 1
                records.append(await stream_one(client, index, samples[index], knobs))

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return records, time.perf_counter() - started, time.process_time() - cpu


def _ms(values: Sequence[float], q: float) -> float | None:
    found = percentile([1000.0 * v for v in values], q)
    return None if found is None else round(found, 2)


def stream_summary(records: Sequence[Streamed]) -> dict[str, Any]:
    """Time to first and final event (p50, p90) and their ratios; accuracy of the first and final answers."""
    if not records:
        return {"images": 0}
    first = [r.first_s for r in records]
    final = [r.final_s for r in records]
    p50_first, p50_final = _ms(first, 50), _ms(final, 50)
    p90_first, p90_final = _ms(first, 90), _ms(final, 90)
    return {
        "images": len(records),
        "first_event_ms": {"p50": p50_first, "p90": p90_first},
        "final_event_ms": {"p50": p50_final, "p90": p90_final},
        "done_event_ms": {
            "p50": _ms([r.done_s for r in records], 50),
            "p90": _ms([r.done_s for r in records], 90),
        },
        "first_over_final_p50": None if not p50_final else round((p50_first or 0.0) / p50_final, 3),
        "first_over_final_p90": None if not p90_final else round((p90_first or 0.0) / p90_final, 3),
        "first_over_final_median_per_image": round(
            statistics.median(r.first_s / r.final_s for r in records if r.final_s > 0), 3
        ),
        "mean_events_per_image": round(sum(len(r.exits) for r in records) / len(records), 2),
        "mean_final_exit": round(sum(r.final_exit for r in records) / len(records), 3),
        "accuracy_first_event": round(sum(r.first_correct for r in records) / len(records), 4),
        "accuracy_final_event": round(sum(r.final_correct for r in records) / len(records), 4),
        "out_of_order": sum(not r.in_order for r in records),
    }


async def part_a(url: str, samples: Sequence[Sample], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"clients": args.stream_clients, "deep_exit": args.deep_exit}
    problems: list[str] = []
    # A few streams first: connections, the first batches and the runtime's first calls are not measured.
    await stream_images(
        url, samples[: 2 * args.stream_clients], FULL_DEPTH, args.stream_clients, args.timeout
    )
    for name, knobs in (("full_depth", FULL_DEPTH), ("default_point", {})):
        records, seconds, cpu = await stream_images(url, samples, knobs, args.stream_clients, args.timeout)
        records.sort(key=lambda r: r.index)
        deep = [r for r in records if r.final_exit >= args.deep_exit]
        out[name] = {
            "knobs": knobs,
            "wall_s": round(seconds, 2),
            "client_cpu_us_per_image": round(1e6 * cpu / max(1, len(records)), 0),
            "final_exit_counts": {
                str(k): v for k, v in sorted(Counter(r.final_exit for r in records).items())
            },
            **stream_summary(records),
        }
        if name == "default_point":
            out[name]["deep"] = {"share": round(len(deep) / max(1, len(records)), 4), **stream_summary(deep)}
        problems += [f"{name}, image {r.index}: {r.problem}" for r in records if r.problem]
    out["order_problems"] = problems[:20]
    out["in_order"] = not problems
    return out


# -- Part B: deadlines under overload ---------------------------------------------------------------------


@dataclass
class Outcome:
    scheduled: float
    finished: float
    status: str  # the HTTP status, or "timeout" / "connection_error" / "client_dropped"
    correct: bool = False
    exit: int | None = None
    flops: int | None = None
    deadline_limited: bool = False


@dataclass
class Config:
    name: str
    knobs: dict[str, str]
    deadline_ms: float | None
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    rate: float | None = None
    client_cpu_s: float = 0.0

    def summary(self, deadline_ms: float) -> dict[str, Any]:
        """Shares of the five outcomes (they sum to 1), accuracy three ways, cost, deadline_limited."""
        outcomes = self.outcomes
        total = max(1, len(outcomes))
        ok = [o for o in outcomes if o.status == "200"]
        latency = {id(o): 1000.0 * (o.finished - o.scheduled) for o in outcomes}
        within = [o for o in ok if latency[id(o)] <= deadline_ms]
        counts = {
            "within_deadline": len(within),
            "late_200": len(ok) - len(within),
            "deadline_504": sum(o.status == "504" for o in outcomes),
            "shed_429": sum(o.status == "429" for o in outcomes),
        }
        counts["other"] = len(outcomes) - sum(counts.values())
        limited = [o for o in ok if o.deadline_limited]
        return {
            "name": self.name,
            "knobs": self.knobs,
            "deadline_ms": self.deadline_ms,
            "offered_rps": None if self.rate is None else round(self.rate, 1),
            "requests": len(outcomes),
            "seconds": round(self.seconds, 2),
            "counts": counts,
            "shares": {key: round(count / total, 4) for key, count in counts.items()},
            "other_statuses": dict(
                Counter(o.status for o in outcomes if o.status not in ("200", "504", "429"))
            ),
            "within_deadline_per_s": round(len(within) / max(self.seconds, 1e-9), 1),
            "accuracy_answered": None if not ok else round(sum(o.correct for o in ok) / len(ok), 4),
            "accuracy_within_deadline": None
            if not within
            else round(sum(o.correct for o in within) / len(within), 4),
            "accuracy_all_requests": round(sum(o.correct for o in within) / total, 4),
            "mean_exit": None if not ok else round(sum(o.exit or 0 for o in ok) / len(ok), 3),
            "mean_mflops": None if not ok else round(sum(o.flops or 0 for o in ok) / len(ok) / 1e6, 3),
            "deadline_limited_share": None if not ok else round(len(limited) / len(ok), 4),
            "latency_200_ms": {"p50": _ms_of(ok, latency, 50), "p99": _ms_of(ok, latency, 99)},
            # How far past D the best-effort answers arrive: the engine answers at the first stage
            # boundary after the server's deadline, then the answer travels back.
            "deadline_limited_late_ms": {
                "p50": _late(limited, latency, deadline_ms, 50),
                "p99": _late(limited, latency, deadline_ms, 99),
            },
            "client_cpu_us_per_request": round(1e6 * self.client_cpu_s / total, 0),
        }


def _ms_of(outcomes: Sequence[Outcome], latency: dict[int, float], q: float) -> float | None:
    found = percentile([latency[id(o)] for o in outcomes], q)
    return None if found is None else round(found, 1)


def _late(
    outcomes: Sequence[Outcome], latency: dict[int, float], deadline_ms: float, q: float
) -> float | None:
    found = percentile([latency[id(o)] - deadline_ms for o in outcomes], q)
    return None if found is None else round(found, 1)


class Shooter:
    """Pre-encoded one-image requests for one configuration, sent on stress.py's pool."""

    def __init__(self, pool: Pool, host: str, port: int, samples: Sequence[Sample], query: dict[str, str]):
        path = "/v1/classify" + (f"?{urlencode(query)}" if query else "")
        self.pool = pool
        self.requests = [encode_classify(host, port, path, s) for s in samples]
        self.labels = [s.class_index for s in samples]

    async def shoot(self, config: Config, timeout: float, index: int, scheduled: float) -> None:
        which = index % len(self.requests)
        outcome = Outcome(scheduled, 0.0, "connection_error")
        try:
            async with asyncio.timeout(timeout):
                answer = await self.pool.request(self.requests[which])
        except TimeoutError:
            outcome.status = "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        else:
            outcome.status = str(answer.status)
            if answer.status == 200:
                result = json.loads(answer.body)["results"][0]
                outcome.correct = result["class_index"] == self.labels[which]
                outcome.exit = int(result["exit"])
                outcome.flops = int(result["flops"])
                outcome.deadline_limited = bool(result.get("deadline_limited", False))
        outcome.finished = time.perf_counter()
        config.outcomes.append(outcome)


async def part_b(url: str, samples: Sequence[Sample], args: argparse.Namespace) -> dict[str, Any]:
    host, port_text = url.removeprefix("http://").split(":")
    port = int(port_text)
    pool = Pool(host, port)
    pending: set[asyncio.Task[None]] = set()

    def shooter(query: dict[str, str]) -> Shooter:
        return Shooter(pool, host, port, samples, query)

    async def closed(config: Config, query: dict[str, str], clients: int, seconds: float) -> Config:
        started, cpu = time.perf_counter(), time.process_time()
        shoot = partial(shooter(query).shoot, config, args.timeout)
        await closed_loop(shoot, clients, started + seconds)
        config.seconds, config.client_cpu_s = time.perf_counter() - started, time.process_time() - cpu
        return config

    try:
        full = shooter(FULL_DEPTH)
        await closed_loop(
            partial(full.shoot, Config("warmup", FULL_DEPTH, None), args.timeout),
            4,
            time.perf_counter() + args.warmup_seconds,
        )
        capacity = await closed(
            Config("capacity", FULL_DEPTH, None), FULL_DEPTH, CAPACITY_CLIENTS, args.capacity_seconds
        )
        rate = sum(o.status == "200" for o in capacity.outcomes) / capacity.seconds
        if rate <= 0:
            raise SystemExit("the capacity phase got no 200 answers")
        unloaded = await closed(Config("unloaded", FULL_DEPTH, None), FULL_DEPTH, 1, args.unloaded_seconds)
        unloaded_ms = [1000.0 * (o.finished - o.scheduled) for o in unloaded.outcomes if o.status == "200"]
        p50 = percentile(unloaded_ms, 50) or 1.0
        deadline_ms = args.deadline_ms or round(args.deadline_factor * p50, 1)
        deadline = {"deadline_ms": f"{deadline_ms:g}"}
        plans = [
            (
                "full depth, on_deadline=error",
                {**FULL_DEPTH, **deadline, "on_deadline": "error"},
                deadline_ms,
            ),
            ("full depth, on_deadline=best", {**FULL_DEPTH, **deadline, "on_deadline": "best"}, deadline_ms),
        ]
        if args.best_share:
            early = round(args.best_share * deadline_ms, 1)
            plans.append(
                (
                    f"full depth, on_deadline=best, deadline_ms={early:g} ({args.best_share:g} D)",
                    {**FULL_DEPTH, "deadline_ms": f"{early:g}", "on_deadline": "best"},
                    early,
                )
            )
        plans += [
            ("default point, on_deadline=best", {**deadline, "on_deadline": "best"}, deadline_ms),
            ("full depth, no deadline (reference)", FULL_DEPTH, None),
        ]
        offered = args.multiple * rate
        configs = {name: Config(name, knobs, d, rate=offered) for name, knobs, d in plans}
        shooters = {name: shooter(knobs) for name, knobs, _ in plans}
        for _ in range(args.rounds):  # interleaved: drift on a shared machine hits every configuration
            for name, config in configs.items():
                started, cpu = time.perf_counter(), time.process_time()
                shoot = partial(shooters[name].shoot, config, args.timeout)

                def admit(index: int, due: float, config: Config = config) -> bool:
                    if len(pending) < args.max_inflight:
                        return True
                    config.outcomes.append(Outcome(due, due, "client_dropped"))  # bounded client
                    return False

                await open_loop(shoot, offered, started, args.phase_seconds, pending, admit)
                if pending:
                    await asyncio.wait(set(pending), timeout=args.timeout)
                config.seconds += time.perf_counter() - started
                config.client_cpu_s += time.process_time() - cpu
                await asyncio.sleep(args.settle_seconds)  # the adaptive limit and queues settle
    finally:
        for task in pending:
            task.cancel()
        pool.close()
    return {
        "capacity_rps": round(rate, 1),
        "capacity_clients": CAPACITY_CLIENTS,
        "capacity_p50_ms": _ms_of(
            capacity.outcomes, {id(o): 1000.0 * (o.finished - o.scheduled) for o in capacity.outcomes}, 50
        ),
        "unloaded_p50_ms": round(p50, 2),
        "unloaded_requests": len(unloaded_ms),
        "deadline_ms": deadline_ms,
        "deadline_rule": "--deadline-ms"
        if args.deadline_ms
        else f"{args.deadline_factor:g} x the unloaded full-depth p50",
        "multiple": args.multiple,
        "offered_rps": round(offered, 1),
        "mode": "open loop",
        "phase_seconds": args.phase_seconds,
        "rounds": args.rounds,
        "configs": [config.summary(deadline_ms) for config in configs.values()],
    }


# -- the run and the report -------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, samples: list[Sample]) -> dict[str, Any]:
    bundle = args.bundle.resolve()
    server_args = argparse.Namespace(
        model_store=bundle.parents[1],
        model=bundle.parent.name,
        start_timeout=120.0,
        server_env={**SERVER_ENV, **({"RANET_THREADS": str(args.threads)} if args.threads else {})},
    )
    log = Path(tempfile.mkdtemp(prefix="ranet-anytime-")) / "server.log"
    process, url = start_server(server_args, log)
    try:
        streaming = await part_a(url, samples[: args.stream_images], args)
        deadlines = await part_b(url, samples, args)
    finally:
        stop_server(process)
    return {"streaming": streaming, "deadlines": deadlines, "server_env": server_args.server_env}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument(
        "--images", type=int, default=2000, help="Fashion-MNIST test images (part B, cyclically)"
    )
    parser.add_argument(
        "--stream-images", type=int, default=1000, help="images streamed at each point (part A)"
    )
    parser.add_argument("--stream-clients", type=int, default=4)
    parser.add_argument("--deep-exit", type=int, default=3, help="part A: images whose final exit is >= this")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    parser.add_argument("--capacity-seconds", type=float, default=3.0, help="16 clients, full depth")
    parser.add_argument("--unloaded-seconds", type=float, default=2.0, help="one client, full depth")
    parser.add_argument(
        "--multiple", type=float, default=2.0, help="open-loop rate as a multiple of capacity"
    )
    parser.add_argument("--deadline-factor", type=float, default=2.5, help="D = this x the unloaded p50")
    parser.add_argument("--deadline-ms", type=float, help="D itself (instead of --deadline-factor)")
    parser.add_argument(
        "--best-share",
        type=float,
        default=0.5,
        help="one more configuration: full depth, on_deadline=best with deadline_ms = this x D, judged "
        "against D (0: none)",
    )
    parser.add_argument(
        "--phase-seconds", type=float, default=5.0, help="open loop, per configuration and round"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the four configurations")
    parser.add_argument("--settle-seconds", type=float, default=1.0, help="idle between configurations")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, s")
    parser.add_argument(
        "--max-inflight", type=int, default=2000, help="open loop: pending requests before dropping"
    )
    parser.add_argument("--threads", type=int, default=0, help="RANET_THREADS (0: the server's own split)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    samples = fmnist_samples(max(args.images, args.stream_images))
    manifest = load_bundle(args.bundle).manifest
    started = time.monotonic()
    report = asyncio.run(measure(args, samples))
    report.update(
        {
            "bundle": f"{manifest.name}/{manifest.version}",
            "exits": len(manifest.exits),
            "last_exit_mflops": round(manifest.exits[-1].cumulative_flops / 1e6, 3),
            "wall_s": round(time.monotonic() - started, 1),
            "command": " ".join(["benchmarks/anytime.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_facts(),
            "versions": versions(),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anytime.json").write_text(json.dumps(report, indent=1) + "\n")
    text = render(report)
    (args.out / "anytime.md").write_text(text)
    print(text)
    if not report["streaming"]["in_order"]:
        print(
            "events out of exit order:\n" + "\n".join(report["streaming"]["order_problems"]), file=sys.stderr
        )
        return 1
    return 0


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render(report: dict[str, Any]) -> str:
    streaming, deadlines = report["streaming"], report["deadlines"]
    in_order = "yes" if streaming["in_order"] else "NO"
    lines = [
        "## Anytime prediction: streamed exits and deadlines under overload (issue 18)",
        "",
        f"Bundle {report['bundle']} ({report['exits']} exits, {report['last_exit_mflops']} MFLOPs at the "
        "last), one Fashion-MNIST test image per request, `ranet serve` with the server's own split of "
        "the cores.",
        "",
        f"### Streaming (`stream=true`, {streaming['clients']} clients, the project's async client)",
        "",
        "Time from sending to the first `exit` event and to the final one (the answer), per image. "
        f"Events in exit order for every image: **{in_order}**.",
        "",
        "| point | images | first event p50 / p90 ms | final event p50 / p90 ms | first / final (p50, p90) "
        "| events per image | accuracy first / final % |",
        "|---|---|---|---|---|---|---|",
    ]
    default = streaming["default_point"]
    rows = [
        ("full depth (`confidence=1`)", streaming["full_depth"]),
        ("default point", default),
        (f"default point, images with final exit >= {streaming['deep_exit']}", default["deep"]),
    ]
    for name, row in rows:
        if not row.get("images"):
            lines.append(f"| {name} | 0 | - | - | - | - | - |")
            continue
        first, final = row["first_event_ms"], row["final_event_ms"]
        cells = [
            name,
            str(row["images"]),
            f"{first['p50']} / {first['p90']}",
            f"{final['p50']} / {final['p90']}",
            f"{row['first_over_final_p50']} / {row['first_over_final_p90']}",
            str(row["mean_events_per_image"]),
            f"{_pct(row['accuracy_first_event'])} / {_pct(row['accuracy_final_event'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Images that go deep at the default point: {_pct(default['deep']['share'])}% of those streamed. "
        f"Client CPU per streamed image: {streaming['full_depth']['client_cpu_us_per_image']:.0f} us "
        f"(full depth), {default['client_cpu_us_per_image']:.0f} us (default point).",
        "",
        f"### Deadlines under {deadlines['multiple']:g}x overload ({deadlines['mode']})",
        "",
        f"Capacity at full depth R = {deadlines['capacity_rps']} req/s ({deadlines['capacity_clients']} "
        f"clients, closed loop); unloaded full-depth p50 {deadlines['unloaded_p50_ms']} ms (one client); "
        f"deadline D = {deadlines['deadline_ms']:g} ms ({deadlines['deadline_rule']}); offered "
        f"{deadlines['offered_rps']} req/s open loop (latency from each request's scheduled start), "
        f"{deadlines['phase_seconds']:g} s per configuration x {deadlines['rounds']} round(s), "
        "interleaved. Every configuration is judged against D (client-measured); shares of all requests "
        "sent; accuracy over all requests counts every request not answered within D as wrong.",
        "",
        "| configuration | requests | 200 within D % | 200 late % | 504 % | 429 % | other % "
        "| accuracy of 200s % | accuracy within D % | accuracy, all requests % | mean exit | MFLOPs/img "
        "| deadline-limited % | p50 / p99 ms (200s) | deadline-limited answers past D, p50 / p99 ms "
        "| client CPU us/request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in deadlines["configs"]:
        shares, late, latency = c["shares"], c["deadline_limited_late_ms"], c["latency_200_ms"]
        cells = [
            c["name"],
            str(c["requests"]),
            *(_pct(shares[key]) for key in STATUSES),
            _pct(c["accuracy_answered"]),
            _pct(c["accuracy_within_deadline"]),
            _pct(c["accuracy_all_requests"]),
            str(c["mean_exit"]),
            str(c["mean_mflops"]),
            _pct(c["deadline_limited_share"]),
            f"{latency['p50']} / {latency['p99']}",
            f"{_or_dash(late['p50'])} / {_or_dash(late['p99'])}",
            f"{c['client_cpu_us_per_request']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
