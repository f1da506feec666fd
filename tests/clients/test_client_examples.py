"""The shipped examples run against the real server: curl.sh (every endpoint, both protocols) and
python_example.py (sync and async client)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "clients" / "examples"


def test_kserve_v2_request_example_is_a_valid_bytes_request() -> None:
    document = json.loads((EXAMPLES / "kserve_v2_request.json").read_text())
    (tensor,) = document["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == (
        "image_bytes",
        "BYTES",
        [len(tensor["data"])],
    )
    assert document["parameters"]["max_flops"] == "20M"


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("base64") is None, reason="needs curl")
def test_curl_example_runs_every_request(server_url: str) -> None:
    done = subprocess.run(
        ["bash", str(EXAMPLES / "curl.sh"), server_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count('"results"') == 3  # multipart, raw and JSON classify
    assert '"invalid_budget"' in out  # the deliberate 422
    assert '"model_name":"tiny"' in out.replace(" ", "") and '"outputs"' in out  # KServe v2
    assert "ranet_exit_total" in out


def test_python_example_runs(server_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "python_example.py"), server_url],
        env={**os.environ, "PYTHONPATH": str(ROOT / "clients" / "python")},  # works installed or not
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "model tiny v2: 6 exits" in done.stdout
    assert "refused:" in done.stdout and "async: 8 concurrent requests" in done.stdout
