"""`ranet serve` with front-end processes and an engine process: one server whatever process answers.

Real processes on loopback: requests spread over the front-ends and come back right, `/metrics` is
one coherent set, a killed front-end is replaced, a killed engine turns readiness to 503 (and
inference to 503, never a hang) until its replacement is ready, and SIGTERM stops every process and
removes the run directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers.bundles import make_store
from helpers.images import png_bytes
from helpers.process import ServeProcess

READY_SECONDS = 90


@dataclass
class Served:
    server: ServeProcess
    client: httpx.Client
    runs: Path  # the parent of the server's run directory

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.server.process

    @property
    def log(self) -> Path:
        return self.server.log

    @property
    def run_dir(self) -> Path:
        (found,) = list(self.runs.glob("ranet-serve-*"))
        return found

    def engine_pid(self) -> int:
        return int((self.run_dir / "engine.pid").read_text())

    def frontend_pids(self) -> set[int]:
        return {int(p.read_text()) for p in self.run_dir.glob("frontend-*.pid")}

    def wait_ready(self, frontends: int = 2) -> None:
        """Until readiness is 200 and every front-end process has started."""
        self.server.wait_ready(READY_SECONDS, also=lambda: len(self.frontend_pids()) == frontends)


@pytest.fixture
def served(tiny_bundle_dir: Path, tmp_path: Path) -> Iterator[Served]:
    store = make_store(tmp_path / "store", tiny_bundle_dir)
    runs = tmp_path / "runs"
    args = ["--model-store", str(store), "--default-model", "tiny", "--threads", "1", "--frontends", "2"]
    env = {**os.environ, "RANET_RUN_DIR": str(runs), "RANET_GRACEFUL_SHUTDOWN_SECONDS": "5"}
    server = ServeProcess(args, log=tmp_path / "server.log", env=env)
    client = httpx.Client(base_url=server.url, timeout=30)
    served = Served(server, client, runs)
    try:
        served.wait_ready()
        yield served
    finally:
        client.close()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def classify(client: httpx.Client, index: int) -> httpx.Response:
    return client.post("/v1/classify", files={"file": ("a.png", png_bytes(index), "image/png")})


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_front_end_answers_and_metrics_are_one_set(served: Served) -> None:
    assert len(served.frontend_pids()) == 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: classify(served.client, i), range(48)))
    assert [a.status_code for a in answers] == [200] * 48
    single = classify(served.client, 0).json()
    assert single["model"] == "tiny" and single["results"][0]["exit"] >= 0
    # Any front-end's /metrics counts every front-end's requests and the engine's images.
    for _ in range(4):
        text = served.client.get("/metrics").text
        assert counter(text, "ranet_requests_total", model="tiny", status="200") == 49
        assert counter(text, "ranet_images_total", model="tiny") == 49
        assert counter(text, "ranet_exit_total", model="tiny") == 49
        assert counter(text, "ranet_inflight_requests", model="tiny") == 0


def test_a_killed_front_end_is_replaced(served: Served) -> None:
    before = served.frontend_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + READY_SECONDS
    while len(served.frontend_pids() - {victim}) < 2:
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.05)
    assert victim not in served.frontend_pids()
    served.wait_ready()
    assert all(classify(served.client, i).status_code == 200 for i in range(8))


def test_a_killed_engine_means_503_until_it_is_back(served: Served) -> None:
    engine = served.engine_pid()
    os.kill(engine, signal.SIGKILL)
    deadline = time.monotonic() + READY_SECONDS
    statuses: set[int] = set()
    while True:  # every answer meanwhile is 503 with a JSON error, or 200 once the new engine serves
        started = time.monotonic()
        response = classify(served.client, 1)
        assert time.monotonic() - started < 10, "a request waited for a dead engine"
        statuses.add(response.status_code)
        if response.status_code == 200 and served.engine_pid() != engine:
            break
        if response.status_code != 200:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "not_ready"
            assert served.client.get("/readyz").status_code in (200, 503)
        assert time.monotonic() < deadline, served.log.read_text()
    assert 503 in statuses, "the engine's death went unseen"
    assert served.client.get("/readyz").status_code == 200
    assert "engine process" in served.log.read_text() and "restarting it" in served.log.read_text()


def test_sigterm_stops_every_process_and_removes_the_run_directory(served: Served) -> None:
    run_dir = served.run_dir
    children = served.frontend_pids() | {served.engine_pid()}
    assert classify(served.client, 2).status_code == 200
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not run_dir.exists()
    assert "model store closed" in served.log.read_text()


def test_a_supervisor_killed_outright_takes_its_children_with_it(served: Served) -> None:
    children = served.frontend_pids() | {served.engine_pid()}
    run_dir = served.run_dir
    served.process.kill()  # SIGKILL: the supervisor cannot stop anyone
    served.process.wait(30)
    deadline = time.monotonic() + 30
    alive = set(children)
    while alive:  # each child hears SIGTERM from the kernel and drains
        assert time.monotonic() < deadline, f"still running after their supervisor died: {alive}"
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.05)
    # The last child out removed the run directory the supervisor could not (the children have exited).
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie waits for its reaper, it no longer runs
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_front_ends_default_to_the_cpus_a_container_may_use(tmp_path: Path) -> None:
    from ranet_serve.cpus import available_cpus

    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert available_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1


def test_a_front_end_process_loads_neither_torch_nor_onnxruntime() -> None:
    """Front-ends only parse, decode and encode: without torch a replacement starts fast and each of
    them holds a fraction of the memory (82 MB resident instead of about 300 MB on the dev machine)."""
    code = (
        "import sys\n"
        "import ranet_serve.api.app, ranet_serve.api.server, ranet_serve.engine.remote\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_the_supervisor_and_front_ends_never_map_torch(served: Served) -> None:
    """Only the engine process loads torch and onnxruntime (the supervisor holds a few MB)."""
    light = [served.process.pid, *served.frontend_pids()]
    for pid in light:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" not in maps, pid
    assert "libtorch" in Path(f"/proc/{served.engine_pid()}/maps").read_text()
