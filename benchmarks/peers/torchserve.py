"""TorchServe serving the bundle's model at full depth: archive, configuration and process.

- The model: the bundle's checkpoint as one traced TorchScript file (`full_depth.export_torchscript`),
  packed with `torchserve_handler.py` and `preprocess.json` by `torch-model-archiver` into a .mar.
- Batching configured like ranet serve's defaults (`max_batch_size`, `max_queue_delay_ms` from
  ranet_serve.settings), so each server gets the same chance to fill batches; one worker, since the
  machine has 2 cores and the worker uses both through torch's intra-op threads.
- Started on loopback with `--ncs --disable-token-auth` and `--foreground` in its own process group;
  its pid file and logs go to a private directory, so it never meets another TorchServe on the machine.
- Metrics in Prometheus mode, so the benchmark reads TorchServe's own queue and inference time.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from ranet_serve.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_depth import export_torchscript
from servers import ManagedServer, free_port

HERE = Path(__file__).resolve().parent
MODEL_NAME = "ranet-fmnist"


def missing_requirements() -> list[str]:
    """What TorchServe needs that this machine lacks (empty when it can run)."""
    missing = []
    if shutil.which("java") is None:
        missing.append("java (Debian openjdk-17-jre-headless)")
    for tool in ("torchserve", "torch-model-archiver"):
        if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
            missing.append(f"{tool} (pip install -e '.[bench]')")
    return missing


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def build_archive(bundle_dir: Path, workdir: Path, model_name: str = MODEL_NAME) -> Path:
    """Export the full-depth TorchScript model and pack it with the handler into `<model_name>.mar`."""
    export_dir = workdir / "export"
    model_path, preprocess_path = export_torchscript(bundle_dir, export_dir)
    store = workdir / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            _tool("torch-model-archiver"),
            "--model-name",
            model_name,
            "--version",
            "1.0",
            "--serialized-file",
            str(model_path),
            "--handler",
            str(HERE / "torchserve_handler.py"),
            "--extra-files",
            str(preprocess_path),
            "--export-path",
            str(store),
            "--force",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed ({done.returncode}): {done.stderr[-2000:]}")
    return store / f"{model_name}.mar"


def write_config(
    workdir: Path,
    store: Path,
    ports: dict[str, int],
    *,
    batch_size: int,
    max_batch_delay_ms: int,
    model_name: str = MODEL_NAME,
) -> Path:
    """config.properties: loopback addresses, one worker, server-side batching, Prometheus metrics."""
    models = {
        model_name: {
            "1.0": {
                "defaultVersion": True,
                "marName": f"{model_name}.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": batch_size,
                "maxBatchDelay": max_batch_delay_ms,
                "responseTimeout": 120,
            }
        }
    }
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        "metrics_mode=prometheus",
        "disable_system_metrics=true",
        f"model_store={store}",
        f"load_models={model_name}.mar",
        "default_workers_per_model=1",
        "install_py_dep_per_model=false",
        "enable_envvars_config=false",
        f"models={json.dumps(models)}",
    ]
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def torchserve_server(
    bundle_dir: Path, workdir: Path, *, threads: int, model_name: str = MODEL_NAME
) -> tuple[ManagedServer, dict[str, object]]:
    """A ready-to-start TorchServe for the bundle, and the facts the report quotes about its setup."""
    defaults = Settings()
    # TorchServe's maxBatchDelay is whole milliseconds: round ours up so it never waits less.
    delay_ms = max(1, math.ceil(defaults.max_queue_delay_ms))
    workdir.mkdir(parents=True, exist_ok=True)
    archive = build_archive(bundle_dir, workdir, model_name)
    ports = {"inference": free_port(), "management": free_port(), "metrics": free_port()}
    config = write_config(
        workdir,
        archive.parent,
        ports,
        batch_size=defaults.max_batch_size,
        max_batch_delay_ms=delay_ms,
        model_name=model_name,
    )
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{ports['inference']}"
    with (HERE.parents[1] / "clients/python/ranet_client/samples/fmnist_test_00000.png").open("rb") as f:
        probe_image = f.read()

    def ready() -> bool:
        response = httpx.post(f"{url}/predictions/{model_name}", content=probe_image, timeout=5.0)
        return response.is_success

    server = ManagedServer(
        "torchserve",
        [
            _tool("torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(archive.parent),
            "--ts-config",
            str(config),
        ],
        ready,
        cwd=workdir,
        # A private TMPDIR keeps TorchServe's pid file away from any other TorchServe on the machine.
        env={
            "TMPDIR": str(tmp),
            "LOG_LOCATION": str(workdir / "logs"),
            "RANET_PEER_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
        },
        log=workdir / "torchserve.log",
        start_timeout=180.0,
        url=url,
    )
    setup = {
        "url": url,
        "path": f"/predictions/{model_name}",
        "metrics_url": f"http://127.0.0.1:{ports['metrics']}/metrics",
        "batch_size": defaults.max_batch_size,
        "max_batch_delay_ms": delay_ms,
        "workers": 1,
        "threads": threads,
        "handler": "benchmarks/peers/torchserve_handler.py (TorchScript, Pillow + numpy preprocessing)",
    }
    return server, setup


def queue_and_inference_us(metrics_url: str) -> dict[str, float]:
    """TorchServe's own counters (Prometheus text): total queue and inference microseconds, requests.

    Read before and after a run; the differences divided by the requests give the mean split. Missing
    counters (another TorchServe version) yield an empty dict rather than wrong numbers.
    """
    text = httpx.get(metrics_url, timeout=5.0).text
    wanted = {
        "ts_queue_latency_microseconds": "queue_us",
        "ts_inference_latency_microseconds": "inference_us",
        "ts_inference_requests_total": "requests",
    }
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            totals[wanted[name]] = totals.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return totals if len(totals) == len(wanted) else {}
