"""`ranet serve` needs only the core dependencies: the tools' extras stay out of the serving image.

The images install `ranet-serve[cpu]` (or `[gpu]`) and nothing else; training, plotting and ONNX
export live in the `train` and `export` extras, and httpx only in `dev` (onnx itself is a core
dependency: the CPU onnxruntime runtime reads stage weights with it). The test environment has all of
them installed, so this test makes them unimportable in a real `ranet serve` (supervisor, front-end
and engine processes, as in the image) and checks that it serves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from helpers.bundles import make_store
from helpers.images import png_bytes

REPO = Path(__file__).resolve().parents[2]
# Import names of the packages that only tools use (pyproject's train, export and dev extras).
TOOL_ONLY_MODULES = ("matplotlib", "tqdm", "onnxscript", "onnx_ir", "httpx")

BLOCKER = """
import importlib.abc, sys

BLOCKED = {blocked!r}
LOG = {log!r}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open(LOG, "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not a serving dependency)")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def project() -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return table


def test_tool_packages_are_extras_not_core_dependencies() -> None:
    core = {Requirement(r).name.lower() for r in project()["dependencies"]}
    extras = project()["optional-dependencies"]
    tools = {"matplotlib", "tqdm", "onnxscript", "httpx"}
    assert not core & tools, f"serving would install {core & tools}"
    names = {extra: {Requirement(r).name.lower() for r in reqs} for extra, reqs in extras.items()}
    assert {"matplotlib", "tqdm"} <= names["train"]
    assert "onnxscript" in names["export"]
    assert "onnx" in core, "the CPU onnxruntime runtime reads stage weights with onnx"
    dev = [Requirement(r) for r in extras["dev"]]
    assert any(r.name == "ranet-serve" and {"train", "export"} <= r.extras for r in dev), (
        "dev must install the tools' extras: the tests train, plot and export"
    )


def test_serve_runs_with_the_tool_only_packages_unimportable(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", tiny_bundle_dir)
    site = tmp_path / "site"
    site.mkdir()
    attempts = tmp_path / "blocked-imports.log"
    # sitecustomize runs at start-up in this process and in every process it spawns (PYTHONPATH).
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(BLOCKER.format(blocked=set(TOOL_ONLY_MODULES), log=str(attempts)))
    )
    paths = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    check = subprocess.run(
        [sys.executable, "-c", "import matplotlib"], env=env, capture_output=True, text=True, check=False
    )
    assert check.returncode != 0 and "blocked" in check.stderr, "the blocker must be active"
    attempts.unlink()

    port = free_port()
    command = [sys.executable, "-m", "ranet_serve.cli", "serve", "--model-store", str(store)]
    # Two threads: the engine then builds both CPU session sets, reading the weights with onnx.
    command += ["--port", str(port), "--default-model", "tiny", "--threads", "2", "--frontends", "1"]
    command += ["--grpc-port", str(free_port())]  # gRPC is core too: it must serve without the extras
    log = tmp_path / "server.log"
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "server did not become ready:\n" + log.read_text()
            time.sleep(0.1)
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + png_bytes(0)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{url}/v1/classify",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
            assert b"ranet_requests_total" in answer.read()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    # Optional imports that fall back cleanly are fine; nothing may need them to serve.
    tried = sorted(set(attempts.read_text().split())) if attempts.exists() else []
    print("tool-only imports attempted (and refused) while serving:", tried)
