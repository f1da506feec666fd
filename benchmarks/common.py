"""What the benchmark scripts share: the test images every server receives, and the machine facts.

Every HTTP comparison sends the same Fashion-MNIST test images (from Debian's dataset-fashion-mnist via
ranet_serve.data), PNG-encoded once, with their true labels, so accuracy is judged on identical inputs.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import subprocess
import sys
from pathlib import Path

from PIL import Image
from ranet_client.image_sets import Sample

from hey import hey_version
from ranet_serve.data.datasets import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "model_store" / "ranet-fmnist" / "1"


def fmnist_samples(count: int) -> list[Sample]:
    """The first `count` Fashion-MNIST test images as PNG files with their labels (at most 10,000)."""
    data = load_fashion_mnist("test")
    count = min(count, len(data))
    samples = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(data.images[i, 0]).save(buffer, "PNG")
        label = int(data.labels[i])
        samples.append(Sample(f"fmnist_test_{i:05d}.png", buffer.getvalue(), label, data.class_names[label]))
    return samples


def _first_line(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_facts() -> dict[str, object]:
    """CPU model, cores, memory, OS and load: what a reader needs to weigh the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / (1 << 20), 1)
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cpu": cpu,
        "architecture": platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": os_name,
        "load_average_at_start": list(os.getloadavg()),
    }


def versions() -> dict[str, str | None]:
    """Versions of everything on the measured path (None: not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in (
        "ranet-serve",
        "ranet-client",
        "torch",
        "onnxruntime",
        "numpy",
        "fastapi",
        "uvicorn",
        "httpx",
        "torchserve",
        "torch-model-archiver",
        "litserve",
    ):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    out["java"] = _first_line(["java", "-version"])
    out["hey"] = hey_version()
    return out
