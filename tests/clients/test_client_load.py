"""The load generator against the real server: it stops by itself, and its report agrees with the
server's own /metrics (requests, images, exit distribution, FLOPs)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families
from ranet_client import AsyncRanetClient, ModelInfo, RanetClient
from ranet_client.image_sets import Sample
from ranet_client.load import LoadConfig, parse_budget_mix, run_load, run_load_sync

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> Series:
    with RanetClient(url) as client:
        text = client.metrics()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _delta(before: Series, after: Series, name: str, **labels: str) -> float:
    """The change of the sum of `name`'s series carrying `labels` (others, such as protocol, summed)."""
    wanted = frozenset(labels.items())

    def total(series: Series) -> float:
        return sum(v for (n, found), v in series.items() if n == name and wanted <= found)

    return total(after) - total(before)


def test_load_report_matches_the_servers_metrics(
    server_url: str, tiny_info: ModelInfo, samples: list[Sample]
):
    latest = tiny_info.latest
    assert latest is not None
    cap = latest.exits[2].cumulative_flops
    fast = next(p for p in latest.operating_points if p.name == "fast").expected_flops
    mix = parse_budget_mix(f"none:0.5,max_flops={cap}:0.3,target_flops={fast:g}:0.2")
    config = LoadConfig(url=server_url, requests=40, concurrency=4, batch=2, mix=mix, seed=7)

    before = _scrape(server_url)
    report = run_load_sync(config, samples)
    after = _scrape(server_url)

    assert (report.requests_sent, report.requests_ok, report.requests_failed) == (40, 40, 0)
    assert report.images_ok == 80 and report.labelled_images == 80 and report.accuracy is not None
    assert _delta(before, after, "ranet_requests_total", model="tiny", status="200") == report.requests_ok
    assert _delta(before, after, "ranet_images_total", model="tiny") == report.images_ok
    for k in range(len(latest.exits)):
        assert _delta(before, after, "ranet_exit_total", model="tiny", exit=str(k)) == report.exit_counts.get(
            k, 0
        )
    assert sum(report.exit_counts.values()) == report.images_ok
    assert _delta(before, after, "ranet_flops_total", model="tiny") == report.total_flops
    assert report.mean_flops_per_image == report.total_flops / report.images_ok
    assert _delta(before, after, "ranet_budget_limited_total", model="tiny") == report.budget_limited_images
    assert sum(entry.requests for entry in report.by_budget.values()) == 40
    capped = report.by_budget[f"max_flops={cap}"]
    assert (
        capped.requests > 0 and capped.mean_flops_per_image is not None and capped.mean_flops_per_image <= cap
    )
    targeted = report.by_budget[f"target_flops={fast:g}"]
    assert targeted.mean_flops_per_image == latest.exits[0].cumulative_flops  # `fast` leaves at exit 0
    latency = report.latency_ms
    assert latency["p50"] is not None and latency["max"] is not None
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]  # type: ignore[operator]


def test_errors_are_counted_by_status_like_the_server_counts_them(server_url: str, samples: list[Sample]):
    mix = parse_budget_mix("none:1,max_flops=1:1")
    config = LoadConfig(url=server_url, requests=16, concurrency=2, mix=mix, seed=3)
    before = _scrape(server_url)
    report = run_load_sync(config, samples)
    after = _scrape(server_url)
    refused = report.by_budget["max_flops=1"].requests
    assert refused > 0 and report.errors_by_status == {"422": refused}
    assert report.errors_by_code == {"invalid_budget": refused}
    assert _delta(before, after, "ranet_requests_total", model="tiny", status="422") == refused
    assert (
        _delta(before, after, "ranet_requests_total", model="tiny", status="200")
        == report.requests_ok
        == 16 - refused
    )


def test_a_duration_run_stops_by_itself(server_url: str, samples: list[Sample]) -> None:
    started = time.monotonic()
    report = run_load_sync(LoadConfig(url=server_url, duration=0.5, concurrency=2), samples)
    elapsed = time.monotonic() - started
    assert report.requests_ok > 0 and report.requests_failed == 0
    assert elapsed < 0.5 + 5.0 and report.duration_s >= 0.5


def test_open_loop_sends_on_schedule_with_a_shared_async_client(
    server_url: str, samples: list[Sample]
) -> None:
    async def run() -> tuple[float, int, int]:
        async with AsyncRanetClient(server_url, retry=1) as client:
            started = time.monotonic()
            report = await run_load(
                LoadConfig(url=server_url, requests=15, rate=50.0), samples, client=client
            )
            return time.monotonic() - started, report.requests_ok, report.requests_dropped

    elapsed, ok, dropped = asyncio.run(run())
    assert ok == 15 and dropped == 0
    assert elapsed >= 14 / 50.0  # the 15th request is due 0.28 s after the first


def test_the_load_generator_runs_on_uvloop_when_it_is_installed(monkeypatch, samples: list[Sample]):
    """Its client CPU is taken from the server it measures: uvloop's loop where available (the `fast`
    extra), asyncio's own otherwise, and the run is the same either way."""
    import sys

    import pytest
    import ranet_client.load as load

    uvloop = pytest.importorskip("uvloop")
    loops: list[type] = []

    async def fake_run_load(config, given, **kwargs):
        loops.append(type(asyncio.get_running_loop()))
        return (config, len(given), kwargs)

    monkeypatch.setattr(load, "run_load", fake_run_load)
    config = LoadConfig(url="http://127.0.0.1:1", requests=1)
    assert load.event_loop_factory() is uvloop.new_event_loop
    assert run_load_sync(config, samples, on_request=None) == (config, len(samples), {"on_request": None})
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: the import fails
    assert load.event_loop_factory() is None
    run_load_sync(config, samples)
    assert loops[0] is uvloop.Loop and not issubclass(loops[1], uvloop.Loop)
