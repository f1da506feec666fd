#!/usr/bin/env python3
"""Prepare, on a machine with a registry, what `make gpu-check` installs on a GPU machine without one.

The GPU machine (x86_64, CPython 3.12, a CUDA 13 build of torch, no package registry) lacks most of
the serving stack and has the CPU build of onnxruntime. This fills `.gpuwheels/` (git-ignored) with:

* `base/`: the cp312 wheels of every package `ranet serve`, the client, the tests and the benchmark
  need that the GPU image does not hold (installed always), and of the packages it holds that the
  project bounds from below (installed there only when the image's version misses the bound), all at
  the versions of requirements/constraints.txt; `MANIFEST.json` lists them with the bounds, and the
  Fashion-MNIST test set (`fashion-mnist/`, what the benchmark classifies);
* `ort1/`, `ort2`, ...: the onnxruntime-gpu wheel (255.6 MB for 1.31.1) cut into parts, each small
  enough to travel in one device call beside the working tree; `ORT.json` in every part folder names
  the parts and the SHA-256 of each part and of the whole wheel, which scripts/gpu_check.py verifies
  after joining them;
* `PLAN.json`: the device calls in order, each with what it carries and its size.

Each call may carry 64 MiB with the working tree, so the part size is what is left after the tree
(measured here: tracked plus untracked files that git does not ignore) and a margin for files added
before the calls. Call 1 carries base/ and the first part; the last call carries the last part and
runs `make gpu-check` (benchmarks/README.md, "GPU check").

    .venv/bin/python scripts/gpu_wheels.py                 # download (pip's cache helps), split, plan
    .venv/bin/python scripts/gpu_wheels.py --ort-wheel onnxruntime_gpu-1.31.1-cp312-...whl

Which packages: the dependency closure of ranet-serve (core), ranet-client, httpx and pytest, walked
over this virtualenv's installed metadata with markers evaluated for CPython 3.12 on Linux (a package
needed only under 3.12 would have to be pinned and installed here first; none is today), plus
onnxruntime-gpu (pinned by hand in constraints.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
OUT = REPO / ".gpuwheels"
ORT_GPU = "onnxruntime-gpu"
# The dev extra's bounds for the two test tools.
ROOTS = ("ranet-serve", "ranet-client", "httpx>=0.27", "pytest>=8")
LOCAL = {"ranet-serve", "ranet-client"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # ranet_serve.data.datasets' default
FASHION_MNIST_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MIB = 1 << 20
CALL_BYTES = 64 * MIB  # what one device call may carry, working tree included
PYTHON_VERSION = "3.12"
# Accepted manylinux tags, newest first; the image's glibc (2.39) runs all of them.
PLATFORMS = (
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# The Python packages of the GPU machine's image ('cuda', package list read on 2026-11-17), by
# canonical name: what is not here is always brought.
_IMAGE_PACKAGES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
    build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
    cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
    equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
    h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
    interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
    opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
    portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
    pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
    tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
    tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
    transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
    werkzeug wheel wrapt xarray xxhash yarl zipp"""
IMAGE_HAS = frozenset(_IMAGE_PACKAGES.split())
# Held by the image and never brought, whatever the bounds: torch and what it was built with (a second
# copy would shadow the CUDA build's own), and large packages whose bounds any current image meets
# (numpy>=1.26, onnx>=1.17, pillow>=10). scripts/gpu_check.py still reports any bound they miss.
_NEVER_BRING = "torch numpy onnx pillow ml-dtypes sympy mpmath networkx jinja2 markupsafe filelock fsspec"
_NEVER_BRING += " setuptools"
NEVER_BRING = frozenset(_NEVER_BRING.split())


def environment_312() -> dict[str, str]:
    """Marker environment of CPython 3.12 on Linux x86_64 (the GPU machine's)."""
    environment = {key: str(value) for key, value in default_environment().items()}
    return {**environment, "python_version": PYTHON_VERSION, "python_full_version": "3.12.3"}


def applicable(dist: metadata.Distribution, extras: Iterable[str]) -> list[Requirement]:
    """The requirements `dist` declares that apply on the GPU machine with `extras` requested."""
    env = environment_312()
    out = []
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or any(
            requirement.marker.evaluate({**env, "extra": extra}) for extra in ["", *sorted(extras)]
        ):
            out.append(requirement)
    return out


def closure(roots: Iterable[str]) -> dict[str, SpecifierSet]:
    """Every distribution the roots need (by canonical name) with the bounds all its requirers set."""
    bounds: dict[str, SpecifierSet] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        bounds[name] = bounds.get(name, SpecifierSet()) & requirement.specifier
        extras = set(requirement.extras)
        if name in extras_seen and extras <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(extras)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{requirement.name} is required but not installed here: run scripts/setup.sh first")
        todo.extend(applicable(dist, extras_seen[name]))
    return bounds


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """name -> version from a constraints file of `name==version` lines."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def select(bounds: dict[str, SpecifierSet], pins: dict[str, str]) -> list[dict[str, str]]:
    """The wheels for base/: name, pinned version, when to install it, and the bound it must meet."""
    chosen = []
    for name, bound in sorted(bounds.items()):
        if name in LOCAL or name in NEVER_BRING:
            continue
        if name not in pins:
            sys.exit(f"{name} is needed but not pinned in {CONSTRAINTS.relative_to(REPO)}")
        when = "unsatisfied" if name in IMAGE_HAS else "always"
        chosen.append({"name": name, "version": pins[name], "when": when, "requirement": f"{name}{bound}"})
    return chosen


def pip_download(specs: Sequence[str], dest: Path) -> None:
    """cp312 manylinux (or pure-Python) wheels of `specs` into `dest`, without dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, "-d", str(dest), *specs], check=True)


def wheel_for(name: str, version: str, folder: Path) -> Path | None:
    """The wheel of `name` `version` in `folder`, if there is one (file names use the normalised name)."""
    for path in sorted(folder.glob("*.whl")):
        dist, wheel_version = path.name.split("-")[:2]
        if canonicalize_name(dist) == canonicalize_name(name) and wheel_version == version:
            return path
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels with every device call: tracked files, untracked files git does not
    ignore, and a shared/ folder inside the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    total = 0
    for name in listed:
        path = repo / name.decode()
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    shared = repo / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def ignored_by_git(folder: Path, repo: Path = REPO) -> bool:
    """Whether files in `folder` stay out of the working tree that device calls carry (always so for
    a folder outside `repo`). A file inside is asked about, not the folder: a pattern such as
    `/.gpuwheels/` matches only a directory, and on a fresh checkout the folder does not exist yet."""
    if not folder.is_relative_to(repo):
        return True
    probe = folder / "MANIFEST.json"
    return subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=repo).returncode == 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def part_sizes(total: int, first_room: int, room: int) -> list[int]:
    """Sizes of the parts of a `total`-byte file: the first fills `first_room`, the others `room`."""
    if first_room <= 0 or room <= 0:
        raise ValueError("no room left in a device call for the parts: the working tree is too large")
    sizes = [min(total, first_room)]
    while sum(sizes) < total:
        sizes.append(min(room, total - sum(sizes)))
    return sizes


def split_wheel(wheel: Path, out: Path, sizes: Sequence[int]) -> dict[str, Any]:
    """Cut `wheel` into out/ort1, out/ort2, ... of `sizes` bytes; ORT.json in each describes all."""
    for old in out.glob("ort[0-9]*"):
        shutil.rmtree(old)
    parts: list[dict[str, Any]] = []
    with wheel.open("rb") as source:
        for index, size in enumerate(sizes, start=1):
            folder = out / f"ort{index}"
            folder.mkdir(parents=True)
            target = folder / f"{wheel.name}.part{index}"
            data = source.read(size)
            target.write_bytes(data)
            parts.append({"folder": folder.name, "file": target.name, "bytes": len(data)})
            parts[-1]["sha256"] = hashlib.sha256(data).hexdigest()
        if source.read(1):
            raise AssertionError("the parts do not cover the whole wheel")
    description = {
        "wheel": wheel.name,
        "bytes": wheel.stat().st_size,
        "sha256": sha256_of(wheel),
        "parts": parts,
    }
    for part in parts:
        (out / str(part["folder"]) / "ORT.json").write_text(json.dumps(description, indent=1) + "\n")
    return description


def call_plan(
    base_folder: str, parts: Sequence[dict[str, object]], sizes: dict[str, int], tree: int
) -> list[dict[str, object]]:
    """The device calls: call 1 carries base/ and part 1, each next call the next part; the last one
    also runs `make gpu-check` and brings the report back."""
    calls = []
    for index, part in enumerate(parts, start=1):
        carry = [f".gpuwheels/{part['folder']}"]
        if index == 1:
            carry.insert(0, f".gpuwheels/{base_folder}")
        last = index == len(parts)
        calls.append(
            {
                "call": index,
                "carry": carry,
                "carried_mib": round(sum(sizes[c] for c in carry) / MIB, 1),
                "with_tree_mib": round((tree + sum(sizes[c] for c in carry)) / MIB, 1),
                "command": FINAL_COMMAND if last else PARTS_COMMAND,
                "timeout_s": 540 if last else 60,
            }
        )
    return calls


# What the calls run (benchmarks/README.md, "GPU check"). The parts check lists what has arrived so a
# machine given back between calls shows at once; the last call runs the check and brings back the
# report and its log (make may be missing on the image: the script is the same thing).
PARTS_COMMAND = "python3 scripts/gpu_check.py --parts"
FINAL_COMMAND = (
    "export PYTHONUNBUFFERED=1; set -o pipefail; "
    "{ if command -v make >/dev/null; then make gpu-check; else bash scripts/gpu_check.sh; fi; } "
    '2>&1 | tee "$OUT/gpu_check.log"; rc=$?; cp benchmarks/GPU_REPORT.md "$OUT"/; exit $rc'
)


def main(argv: Sequence[str]) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, default=OUT, help="the folder to fill (default .gpuwheels)")
    parser.add_argument("--ort-wheel", type=Path, help="an onnxruntime-gpu wheel already here")
    parser.add_argument(
        "--margin-mib", type=float, default=3.0, help="room left per call for files added to the tree later"
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    base, cache = out / "base", out / "cache"
    if not ignored_by_git(out):
        sys.exit(f"{out} is not ignored by git: it would travel with the tree in every call")
    base.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    pins = read_pins()

    wheels = select(closure(ROOTS), pins)
    missing = [f"{w['name']}=={w['version']}" for w in wheels if not wheel_for(w["name"], w["version"], base)]
    if missing:
        pip_download(missing, base)
    for w in wheels:
        path = wheel_for(w["name"], w["version"], base)
        if path is None:
            sys.exit(f"pip saved no wheel for {w['name']}=={w['version']}")
        w["file"] = path.name
    wanted = {w["file"] for w in wheels}
    for stale in base.glob("*.whl"):  # one version of each package: older downloads go
        if stale.name not in wanted:
            stale.unlink()
    data = base / "fashion-mnist"
    data.mkdir(exist_ok=True)
    for name in FASHION_MNIST_TEST:
        if not (FASHION_MNIST_DIR / name).is_file():
            sys.exit(f"{FASHION_MNIST_DIR / name} missing: install Debian's dataset-fashion-mnist first")
        shutil.copy2(FASHION_MNIST_DIR / name, data / name)
    manifest = {
        "python": PYTHON_VERSION,
        "wheels": wheels,
        "fashion_mnist": {"files": list(FASHION_MNIST_TEST), "install_to": str(FASHION_MNIST_DIR)},
    }
    (base / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")

    version = pins[ORT_GPU]
    wheel = args.ort_wheel.resolve() if args.ort_wheel else wheel_for(ORT_GPU, version, cache)
    if wheel is None:
        pip_download([f"{ORT_GPU}=={version}"], cache)
        wheel = wheel_for(ORT_GPU, version, cache)
    if wheel is None or wheel_for(ORT_GPU, version, wheel.parent) != wheel:  # another version given
        sys.exit(f"no {ORT_GPU} {version} wheel (the pin in {CONSTRAINTS.relative_to(REPO)})")

    tree = tree_bytes()
    room = CALL_BYTES - tree - int(args.margin_mib * MIB)
    base_bytes = folder_bytes(base)
    sizes = part_sizes(wheel.stat().st_size, room - base_bytes, room)
    ort = split_wheel(wheel, out, sizes)
    folder_sizes = {f".gpuwheels/{p.name}": folder_bytes(p) for p in out.iterdir() if p.is_dir()}
    plan = call_plan("base", ort["parts"], folder_sizes, tree)
    summary = {"tree_mib": round(tree / MIB, 1), "limit_mib": CALL_BYTES // MIB, "calls": plan}
    (out / "PLAN.json").write_text(json.dumps(summary, indent=1) + "\n")
    always = sum(1 for w in wheels if w["when"] == "always")
    print(
        f"base: {len(wheels)} wheels ({always} always installed, {len(wheels) - always} only where the "
        f"image misses the bound) + Fashion-MNIST test set, {base_bytes / MIB:.1f} MiB"
    )
    print(f"{ORT_GPU} {version}: {ort['bytes'] / MIB:.1f} MiB in {len(sizes)} parts, sha256 {ort['sha256']}")
    print(f"working tree {tree / MIB:.1f} MiB travels with every call (limit {CALL_BYTES // MIB} MiB)")
    for call in plan:
        print(
            f"call {call['call']}: carry {call['carry']} ({call['carried_mib']} MiB, "
            f"{call['with_tree_mib']} MiB with the tree), timeout_s {call['timeout_s']}: {call['command']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
