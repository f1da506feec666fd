"""`ranet serve` as a real process: refuses an empty store, serves, reloads on SIGHUP, stops on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from helpers.bundles import make_store
from helpers.images import png_bytes
from helpers.process import ServeProcess
from ranet_serve.cascade.runtimes import SINGLE_THREAD_BELOW, OnnxRuntime
from ranet_serve.cli import app
from ranet_serve.engine.registry import default_runtime_factory
from ranet_serve.export.bundle import load_bundle
from ranet_serve.settings import Settings


def test_serve_refuses_an_empty_or_missing_store(tmp_path: Path) -> None:
    runner = CliRunner()
    for store in (tmp_path / "missing", tmp_path):
        result = runner.invoke(app, ["serve", "--model-store", str(store)])
        assert result.exit_code == 1
        assert "no bundles" in result.output


def test_serve_rejects_an_invalid_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model-store", str(tmp_path), "--backend", "tensorflow"])
    assert result.exit_code == 2
    assert "backend" in result.output


def test_settings_come_from_ranet_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANET_PORT", "9123")
    monkeypatch.setenv("RANET_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("RANET_DEFAULT_OPERATING_POINT", "fast")
    settings = Settings()
    assert (settings.port, settings.max_batch_size, settings.default_operating_point) == (9123, 4, "fast")
    assert settings.host == "127.0.0.1" and settings.model_store == Path("model_store")


def test_runtime_threads_follow_the_settings(tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    runtime = default_runtime_factory(bundle, Settings(backend="onnxruntime", device="cpu", threads=2))
    assert isinstance(runtime, OnnxRuntime)
    assert (runtime.threads, runtime.single_thread_below) == (2, SINGLE_THREAD_BELOW)
    assert runtime.threads_for(SINGLE_THREAD_BELOW - 1) == 1 and runtime.threads_for(SINGLE_THREAD_BELOW) == 2
    monkeypatch.setenv("RANET_SINGLE_THREAD_BELOW", "0")
    runtime = default_runtime_factory(bundle, Settings(device="cpu", threads=2))
    assert isinstance(runtime, OnnxRuntime) and runtime.threads_for(1) == 2


def test_serve_process_reloads_on_sighup_and_stops_on_sigterm(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)
    args = ["--model-store", str(store), "--default-model", "tiny", "--threads", "1", "--log-level", "info"]
    server = ServeProcess(args, log=tmp_path / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            image = {"file": ("a.png", png_bytes(0), "image/png")}
            assert client.post("/v1/classify", files=image).json()["version"] == "1"

            make_store(store, tiny_bundle_dir, versions=("2",))
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while client.post("/v1/classify", files=image).json()["version"] != "2":
                assert time.monotonic() < deadline, "SIGHUP did not reload the store"
                time.sleep(0.1)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
        assert server.stop() in (0, -signal.SIGTERM)
        output = server.log.read_text()
        assert "SIGHUP: reloading the model store" in output
        assert "model store closed" in output
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
