"""KServe's own Python client (`kserve.InferenceGRPCClient`) against our gRPC front-end, unchanged.

KServe's client lives in a venv of its own (`scripts/setup.sh` puts it in .deploy-tools/kserve-client:
its pins clash with ours), so it runs as a subprocess; the test compares what it printed with what the
server answers over v2 REST for the same tensor and knobs. A machine without that venv fails the test
unless RANET_ALLOW_SKIPS is set, as the deployment checks do.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers.bundles import make_store
from helpers.process import free_port
from helpers.server import RunningServer, settings_for
from ranet_serve.api.images import ImageLimits, preprocess_batch
from ranet_serve.export.defaults import default_input_spec
from ranet_serve.model.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = ROOT / ".deploy-tools" / "kserve-client" / "bin" / "python"
SCRIPT = Path(__file__).with_name("kserve_grpc_client.py")
ALLOW_SKIPS = os.environ.get("RANET_ALLOW_SKIPS", "") not in ("", "0")


def test_kserve_grpc_client_works_unchanged(
    tiny_bundle_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    if not KSERVE_PYTHON.exists():
        message = f"KServe's client is not installed at {KSERVE_PYTHON} (scripts/setup.sh installs it)"
        if ALLOW_SKIPS:
            pytest.skip(message)
        pytest.fail(message)
    spec = default_input_spec(load_config("fmnist-default", n_channels=4, growth_rate=4))
    tensor = np.asarray(preprocess_batch(images[:3], spec, ImageLimits()), dtype=np.float32)
    np.save(tmp_path / "tensor.npy", tensor)
    store = make_store(tmp_path / "store", tiny_bundle_dir)
    server = RunningServer(settings_for(store, grpc_port=free_port())).start()
    try:
        done = subprocess.run(
            [str(KSERVE_PYTHON), str(SCRIPT), server.grpc_target, "tiny", str(tmp_path / "tensor.npy")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        with server.client() as client:
            rest = client.post(
                "/v2/models/tiny/infer",
                json={
                    "inputs": [
                        {
                            "name": "image",
                            "shape": list(tensor.shape),
                            "datatype": "FP32",
                            "data": tensor.ravel().tolist(),
                        }
                    ],
                    "parameters": {"confidence": 1.0},
                },
            ).json()
    finally:
        server.stop()
    assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True)
    assert (answer["id"], answer["model_name"]) == ("kserve-1", "tiny")
    expected = {output["name"]: output["data"] for output in rest["outputs"]}
    outputs = answer["outputs"]
    assert outputs["exit"] == expected["exit"] == [5, 5, 5]  # confidence=1 reached the last exit
    for name in ("label", "class_index", "flops", "budget_limited"):
        assert outputs[name] == expected[name], name
    np.testing.assert_allclose(outputs["confidence"], expected["confidence"], atol=1e-6)
