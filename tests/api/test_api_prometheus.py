"""The Grafana dashboard against a real Prometheus scraping a real server.

Debian's `prometheus` (installed by scripts/setup.sh) runs on loopback with the repository's scrape
configuration pointed at a test server; after real traffic, every query of every dashboard panel is
evaluated through Prometheus's HTTP API and must return data, and the exit distribution it reports
must agree with the responses the test received.
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from helpers.bundles import make_store
from helpers.server import RunningServer, settings_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deploy_helpers import dashboard_queries, substitute_variables

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def monitored(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A fresh server (fresh counters) and a Prometheus scraping it every second."""
    work = tmp_path_factory.mktemp("prometheus")
    store = make_store(work / "store", tiny_bundle_dir)
    # Every early-exited image is re-checked against the last exit, so the agreement panel has data.
    server = RunningServer(settings_for(store, agreement_sample_fraction=1.0)).start()
    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ranet-serve")
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{server.port}"]}]
    config["scrape_configs"] = [job]
    shutil.copy(ROOT / "docker" / "prometheus" / "alerts.yml", work / "alerts.yml")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield server.url, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        server.stop()


def query(prometheus: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()  # 503 "Service Unavailable" (plain text) while Prometheus starts up
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def wait_for(prometheus: str, expr: str, expected: float, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(prometheus, expr)
        except httpx.HTTPError:
            result = []
        if result and float(result[0]["value"][1]) == expected:
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus never saw {expr} == {expected}")


def wait_for_scrape(prometheus: str, after: float, timeout: float = 40) -> None:
    """Until Prometheus has scraped the server at or after wall-clock time `after` (the timestamp of its
    last sample of `up`), so that scrape saw everything the server did before then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(prometheus, 'timestamp(up{job="ranet-serve"})')
        except httpx.HTTPError:
            result = []
        if result and float(result[0]["value"][1]) >= after:
            return
        time.sleep(0.1)
    pytest.fail(f"Prometheus did not scrape the server after {after}")


def test_every_dashboard_query_returns_data_from_a_real_scrape(monitored, images: list[bytes]) -> None:
    server_url, prometheus = monitored
    wait_for(prometheus, 'sum(ranet_images_total{model="tiny"})', 0)  # scraped once before any traffic
    exits: collections.Counter[int] = collections.Counter()
    sent = 0
    with httpx.Client(base_url=server_url, timeout=30) as client:
        for round_ in range(6):  # spread over a few scrapes so rates have two samples
            for i, knobs in enumerate(
                ({}, {"max_flops": "6M"}, {"confidence": "1.0"}, {"target_flops": "1e18"})
            ):
                response = client.post(
                    "/v1/classify",
                    params=knobs,
                    files=[("files", (f"{i}.png", images[(round_ + i) % len(images)]))],
                )
                assert response.status_code == 200, response.text
                for result in response.json()["results"]:
                    exits[result["exit"]] += 1
                    sent += 1
            assert (
                client.post(
                    "/v1/classify", params={"max_flops": "1"}, files=[("files", ("x.png", images[0]))]
                ).status_code
                == 422
            )
            assert (
                client.post("/v1/models/nope/classify", files=[("files", ("x.png", images[0]))]).status_code
                == 404
            )
            wait_for_scrape(prometheus, after=time.time())  # each round in a scrape of its own
    wait_for(prometheus, 'sum(ranet_images_total{model="tiny"})', sent)
    # Two more scrapes (1 s apart) after the last request, so every series has samples after the traffic.
    wait_for_scrape(prometheus, after=time.time() + 1.0)

    empty = []
    for q in dashboard_queries():
        expr = substitute_variables(
            q.expr, {"model": "tiny", "version": "1"}, rate_interval="1m", range_="5m"
        )
        if not query(prometheus, expr):
            empty.append(f"{q.panel_title} [{q.ref_id}]: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # The exit distribution Prometheus holds agrees with what the responses said, exactly.
    counted = {
        int(r["metric"]["exit"]): float(r["value"][1])
        for r in query(prometheus, 'sum by (exit) (ranet_exit_total{model="tiny"})')
    }
    assert {k: v for k, v in counted.items() if v} == {k: float(v) for k, v in exits.items()}
    shares = {
        int(r["metric"]["exit"]): float(r["value"][1])
        for r in query(
            prometheus,
            substitute_variables(
                next(q.expr for q in dashboard_queries() if q.panel_title == "Exit distribution"),
                {"model": "tiny", "version": "1"},
                rate_interval="1m",
            ),
        )
    }
    for exit_, count in exits.items():
        assert shares[exit_] == pytest.approx(count / sent, abs=0.05)
