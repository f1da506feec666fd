#!/usr/bin/env python3
"""`make gpu-check`: on a CUDA machine, set up the GPU path, run the GPU tests and the short GPU
benchmark, and write benchmarks/GPU_REPORT.md, in under 8 minutes. Without a CUDA device it says so
in one line and exits 0.

Steps, each bounded in time (the whole run by --budget-seconds, 470 by default):

1. setup: from `.gpuwheels/` when it is there (scripts/gpu_wheels.py made it on a machine with a
   registry; the device calls of benchmarks/README.md's "GPU check" carried it): join the
   onnxruntime-gpu parts and check their SHA-256, install the wheels the image lacks (and those whose
   version misses the project's bound) with `pip install --no-index --no-deps --target` into a site
   folder first on PYTHONPATH, which also shadows the image's CPU onnxruntime, and put the
   Fashion-MNIST test set where ranet_serve.data reads it (`--onnxruntime image`: the image's own
   onnxruntime kept instead of the parts, where `--parts` showed it has the CUDA provider). Otherwise
   from a registry, into this interpreter's environment: the CPU onnxruntime out, then `pip install
   -e .[gpu] -e clients/python` with the constraints of whatever it adds (installed packages, torch
   above all, stay as they are).
   The project itself is never installed there: `server/` and `clients/python/` go on PYTHONPATH
   (tests and benchmarks start servers as `python -m ranet_serve.cli`, no console script needed);
2. probe: versions, the onnxruntime build that loads and its providers, the GPU (benchmarks/gpu.py
   --probe);
3. tests: `pytest -m gpu` over the test files that use the marker (collecting only those keeps the
   suite's other test dependencies out of the setup); pytest's cache goes to a temporary folder, as
   tests/api/conftest.py keeps its exported bundle in it. With `--device cpu` (a rehearsal of the path
   on a machine without a GPU, scripts/gpu_rehearsal.sh) the same files run with `-m "not slow"`
   instead: the GPU tests skip there, and their CPU twins (the same binding code, fixtures and servers)
   are what shows that the interpreter, the wheels and the exporter of the target image work;
4. benchmark: benchmarks/gpu.py on the device with the time that is left;
5. the report: machine, versions, providers, setup, test counts, the benchmark's tables.

Exit status: 0 when every step passed (at least one test must pass), 1 otherwise. `--parts`
only reports which onnxruntime-gpu parts have arrived and the image's own onnxruntime with its providers
(the device calls before the last one run it).

    make gpu-check                                   # scripts/gpu_check.sh: picks the interpreter
    python3 scripts/gpu_check.py --parts             # after each device call that carries a part
    .venv/bin/python scripts/gpu_check.py --device cpu --quick --setup none   # the path, on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpuwheels"
REPORT = ROOT / "benchmarks" / "GPU_REPORT.md"
BUDGET_SECONDS = 470.0  # the bar is 8 minutes
SETUP_SECONDS = 150.0
PROBE_SECONDS = 90.0
TESTS_SECONDS = 180.0
REPORT_SECONDS = 10.0  # kept for writing the report after the benchmark
MIN_BENCH_SECONDS = 60.0
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # ranet_serve.data.datasets' default
PREFIX = "gpu-check:"


# -- is there a CUDA device? ---------------------------------------------------------------------------


def no_cuda_reason(env: Mapping[str, str] = os.environ, python: str = sys.executable) -> str | None:
    """Why there is no CUDA device to check, or None when there is one.

    Cheap signs first: CUDA_VISIBLE_DEVICES hiding every device, no NVIDIA driver (neither nvidia-smi
    nor /dev/nvidiactl). Only then torch, in a child process, so this process stays light.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every device"
    if shutil.which("nvidia-smi", path=env.get("PATH")) is None and not Path("/dev/nvidiactl").exists():
        return "no NVIDIA driver: no nvidia-smi, no /dev/nvidiactl"
    code = "import torch; print(torch.__version__, int(torch.cuda.is_available()))"
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=120, env=dict(env)
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"torch could not be asked ({exc})"
    if done.returncode != 0:
        return f"{python} cannot import torch"
    version, available = done.stdout.split()[-2:]
    return None if available == "1" else f"torch {version} sees none"


# -- setup ----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What the setup did: the environment the next steps run in, and lines for the report."""

    mode: str
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def base_env(site: Path | None = None) -> dict[str, str]:
    """This environment with the site folder (if any), server/ and clients/python/ first on PYTHONPATH."""
    paths = [str(site)] if site is not None else []
    paths += [str(ROOT / "server"), str(ROOT / "clients" / "python")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def ort_description(wheels: Path = WHEELS) -> dict[str, Any] | None:
    """ORT.json from whichever part folder has arrived (each holds the same description)."""
    for path in sorted(wheels.glob("ort*/ORT.json")):
        return json.loads(path.read_text())
    return None


def parts_status(
    wheels: Path = WHEELS, verify: bool = True
) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """(description, parts present and intact, parts missing or damaged) of the onnxruntime-gpu wheel."""
    description = ort_description(wheels)
    if description is None:
        return None, [], []
    present: list[str] = []
    missing: list[str] = []
    for part in description["parts"]:
        path = wheels / part["folder"] / part["file"]
        intact = path.is_file() and path.stat().st_size == part["bytes"]
        if intact and verify:
            intact = sha256_of(path) == part["sha256"]
        (present if intact else missing).append(part["folder"])
    return description, present, missing


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def join_parts(description: Mapping[str, Any], wheels: Path, dest: Path) -> Path:
    """The whole onnxruntime-gpu wheel in `dest`, from its parts; raises if its SHA-256 is wrong."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / description["wheel"]
    digest = hashlib.sha256()
    with wheel.open("wb") as out:
        for part in description["parts"]:
            with (wheels / part["folder"] / part["file"]).open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != description["sha256"]:
        wheel.unlink()
        raise RuntimeError(
            f"{wheel.name}: joined parts have SHA-256 {digest.hexdigest()}, not {description['sha256']}"
        )
    return wheel


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfied(requirement: str) -> bool:
    """Whether the installed distribution meets `requirement` (a name and a specifier)."""
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    version = installed_version(parsed.name)
    return version is not None and parsed.specifier.contains(version, prereleases=True)


def image_onnxruntime(python: str) -> dict[str, Any] | None:
    """The onnxruntime `python` imports without the site folder (the image's own): its version,
    providers and file, or None when none imports. The GPU machine's documentation leaves open whether
    its build has the CUDA provider; where it has, the onnxruntime-gpu parts need not be carried."""
    code = (
        "import json, onnxruntime as o; "
        "print(json.dumps({'version': o.__version__, 'providers': o.get_available_providers(), "
        "'file': o.__file__}))"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    try:
        done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def describe_onnxruntime(found: dict[str, Any] | None) -> str:
    if found is None:
        return "the image's onnxruntime: none imports"
    return f"the image's onnxruntime {found['version']}: providers {found['providers']}"


def setup_from_wheels(
    python: str, wheels: Path, site: Path, timeout: float, onnxruntime: str = "parts"
) -> Setup:
    """Install base/'s wheels (those needed here) and, with `onnxruntime="parts"`, the joined
    onnxruntime-gpu wheel into `site`; with `"image"` the image's own onnxruntime is kept (a build with
    the CUDA provider: no parts carried) and any onnxruntime an earlier run put in `site` is removed."""
    setup = Setup("wheels", base_env(site))
    manifest = json.loads((wheels / "base" / "MANIFEST.json").read_text())
    chosen, kept = [], []
    for wheel in manifest["wheels"]:
        if wheel["when"] == "always" or not satisfied(wheel["requirement"]):
            chosen.append(wheels / "base" / wheel["file"])
        else:
            kept.append(f"{wheel['name']} {installed_version(wheel['name'])}")
    stamp_file = site / ".ranet-gpu-check"  # names the wheels the site holds
    if onnxruntime == "image":
        stale = [*site.glob("onnxruntime"), *site.glob("onnxruntime*.dist-info")]
        for old in stale:
            shutil.rmtree(old)
        if stale:
            stamp_file.unlink(missing_ok=True)  # it named the GPU build just removed
        setup.lines.append(f"onnxruntime: {describe_onnxruntime(image_onnxruntime(python))}, kept (no parts)")
    else:
        description, present, missing = parts_status(wheels, verify=False)
        if description is None or missing:
            setup.ok = False
            setup.lines.append(
                f"onnxruntime-gpu parts missing: {', '.join(missing) or 'all'} (the machine was given back "
                "between calls, or a call did not carry its part): carry them again"
            )
            return setup
        staging = Path(tempfile.gettempdir()) / "ranet-gpu-wheels"
        chosen.append(join_parts(description, wheels, staging))
        setup.lines.append(
            f"onnxruntime-gpu: {len(present)} parts joined, SHA-256 {description['sha256'][:16]}... verified"
        )
    stamp = hashlib.sha256("\n".join(sorted(p.name for p in chosen)).encode()).hexdigest()
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        setup.lines.append(f"{len(chosen)} wheels already in {site} (an earlier run on this machine)")
    elif chosen:
        command = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        command += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, chosen)]
        done = run_step(command, os.environ, timeout, capture=True)
        if done.returncode != 0:
            setup.ok = False
            setup.lines.append(
                f"pip install --target {site} failed ({done.returncode}): {done.output[-1500:]}"
            )
            return setup
        stamp_file.write_text(stamp)
        setup.lines.append(f"installed {len(chosen)} wheels into {site} (first on PYTHONPATH)")
    if chosen:
        setup.lines.append("installed: " + ", ".join(sorted(p.name.split("-")[0] for p in chosen)))
    if kept:
        setup.lines.append("the image's own, meeting the project's bounds: " + ", ".join(kept))
    setup.lines.extend(install_fashion_mnist(wheels / "base" / "fashion-mnist"))
    return setup


def install_fashion_mnist(source: Path, target: Path = FASHION_MNIST_DIR) -> list[str]:
    """The carried test set where ranet_serve.data reads it, unless it is there."""
    names = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    if all((target / n).is_file() for n in names):
        return [f"Fashion-MNIST test set: {target} (already there)"]
    if not all((source / n).is_file() for n in names):
        return [f"Fashion-MNIST test set: not in {target} and not carried; the benchmark cannot run"]
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy2(source / name, target / name)
    except OSError as exc:
        return [f"Fashion-MNIST test set: cannot write {target} ({exc})"]
    return [f"Fashion-MNIST test set: copied to {target}"]


def filtered_constraints(path: Path, keep: str = "onnxruntime-gpu") -> str:
    """The pins of requirements/constraints.txt for what is not installed here (plus `keep`): a
    registry setup adds what is missing at the tested versions and moves nothing already there."""
    lines = []
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if "==" not in spec:
            continue
        name = spec.split("==", 1)[0].strip()
        if name == keep or installed_version(name) is None:
            lines.append(spec)
    return "\n".join(lines) + "\n"


def setup_from_registry(python: str, timeout: float) -> Setup:
    """The gpu extra and the client into this interpreter's environment, from a package registry."""
    setup = Setup("registry", base_env())
    commands = []
    if installed_version("onnxruntime") is not None:  # the CPU build and the GPU build share files
        commands.append([python, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"])
    constraints = Path(tempfile.gettempdir()) / "ranet-gpu-constraints.txt"
    constraints.write_text(filtered_constraints(ROOT / "requirements" / "constraints.txt"))
    commands.append(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(constraints),
            "-e",
            f"{ROOT}[gpu]",
            "-e",
            str(ROOT / "clients" / "python"),
        ]
    )
    deadline = time.monotonic() + timeout
    for command in commands:
        done = run_step(command, os.environ, max(deadline - time.monotonic(), 1.0), capture=True)
        setup.lines.append(f"`{shlex.join(command[1:])}`: exit {done.returncode}")
        if done.returncode != 0:
            setup.ok = False
            setup.lines.append(done.output[-1500:])
            return setup
    return setup


def nvidia_library_dirs() -> list[str]:
    """The library folders of the CUDA wheels (nvidia-cublas, nvidia-cudnn-cu13, ...) this interpreter
    sees. onnxruntime-gpu's CUDA provider has no RUNPATH to them: it finds them loaded by an earlier
    `import torch` (the runtimes import torch first), else on LD_LIBRARY_PATH, which this fills."""
    import site

    found: list[str] = []
    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        for lib in sorted(Path(root).glob("nvidia/**/lib")):
            if lib.is_dir() and any(lib.glob("lib*.so*")) and str(lib) not in found:
                found.append(str(lib))
    return found


def setup(mode: str, python: str, timeout: float, onnxruntime: str = "parts") -> Setup:
    if mode == "auto":
        mode = "wheels" if (WHEELS / "base" / "MANIFEST.json").is_file() else "registry"
    if mode == "none":
        return Setup("none", base_env(), ["no setup (--setup none): this environment as it is"])
    if mode == "wheels":
        site = Path(os.environ.get("RANET_GPU_SITE", Path(tempfile.gettempdir()) / "ranet-gpu-site"))
        done = setup_from_wheels(python, WHEELS, site, timeout, onnxruntime)
    else:
        done = setup_from_registry(python, timeout)
    libraries = nvidia_library_dirs()
    if libraries:
        previous = done.env.get("LD_LIBRARY_PATH")
        done.env["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, *([previous] if previous else [])])
        done.lines.append(f"LD_LIBRARY_PATH: the {len(libraries)} library folders of the nvidia-* wheels")
    return done


# -- running the steps ----------------------------------------------------------------------------------


@dataclass
class Step:
    returncode: int
    seconds: float
    timed_out: bool = False
    output: str = ""


def run_step(
    command: Sequence[str], env: Mapping[str, str], timeout: float, capture: bool = False, cwd: Path = ROOT
) -> Step:
    """Run `command` in its own process group (servers it starts included); past `timeout` seconds the
    whole group is killed. Output goes to this console unless `capture`."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    # What the step started and left behind (a server after a failed test) goes with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    returncode = -signal.SIGKILL if timed_out else process.returncode
    return Step(returncode, time.monotonic() - started, timed_out, output or "")


# `@pytest.mark.gpu` on a test, `pytestmark = ...mark.gpu...` on a module, or the device parameters
# of tests/helpers/devices.py (a `cuda` case marked gpu beside the bound CPU case), at a line's start.
GPU_MARKER = re.compile(
    r"^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*\bmark\.gpu\b"
    r"|from helpers\.devices import .*\bBINDING_DEVICES\b)",
    re.MULTILINE,
)


def gpu_test_files(tests: Path = ROOT / "tests") -> list[Path]:
    """The test files that use the `gpu` marker."""
    return sorted(p for p in tests.rglob("test_*.py") if GPU_MARKER.search(p.read_text(errors="replace")))


@dataclass
class TestCounts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # failures and errors, with their messages
    skips: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


def read_junit(path: Path) -> TestCounts:
    """Counts and the failing or skipped tests from pytest's JUnit XML."""
    counts = TestCounts()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts.passed += 1
            continue
        message = " ".join((outcome.get("message") or "").split())[:300]
        if outcome.tag == "skipped":
            counts.skipped += 1
            counts.skips.append(f"{name}: {message}")
        else:
            if outcome.tag == "failure":
                counts.failed += 1
            else:
                counts.errors += 1
            counts.problems.append(f"{outcome.tag} {name}: {message}")
    return counts


def test_marker(device: str) -> str:
    """The pytest marker expression the check runs on `device`: the GPU tests on a GPU; on the CPU,
    where every GPU test skips, the fast tests of the same files (their CPU twins)."""
    return "not slow" if device == "cpu" else "gpu"


def run_tests(
    python: str, env: Mapping[str, str], files: Sequence[str], timeout: float, work: Path, marker: str = "gpu"
) -> tuple[Step, TestCounts | None, list[str]]:
    """`pytest -m <marker>` over `files` (paths from the repository root), counted from its JUnit XML."""
    junit = work / "gpu-tests.xml"
    command = [python, "-m", "pytest", "-m", marker, "-q", "-rs", "-o", f"cache_dir={work / 'pytest-cache'}"]
    command += [f"--junitxml={junit}", *files]
    step = run_step(command, env, timeout)
    counts = read_junit(junit) if junit.is_file() else None
    return step, counts, ["python", *command[1:]]


# -- the report ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything the report says; `failures` empty means the check passed."""

    device: str
    budget_seconds: float
    setup: Setup
    probe: dict[str, Any] | None = None
    probe_error: str | None = None
    test_files: list[str] = field(default_factory=list)
    test_command: list[str] = field(default_factory=list)
    test_step: Step | None = None
    tests: TestCounts | None = None
    bench_step: Step | None = None
    bench: dict[str, Any] | None = None
    bench_markdown: str | None = None
    failures: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def render(outcome: Outcome) -> str:
    verdict = "PASSED" if not outcome.failures else "FAILED: " + "; ".join(outcome.failures)
    lines = [
        "# GPU check",
        "",
        f"`make gpu-check` (scripts/gpu_check.py) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, device "
        f"`{outcome.device}`: {outcome.wall_seconds:.0f} s of the {outcome.budget_seconds:.0f} s budget. "
        f"Result: {verdict}.",
        "",
        "## Machine and versions",
        "",
    ]
    probe = outcome.probe
    if probe is None:
        lines += [f"Not probed: {outcome.probe_error}", ""]
    else:
        machine = probe["machine"]
        gpus = ", ".join(probe["gpus"]) or "none"
        lines += [
            "| | |",
            "|---|---|",
            f"| GPU | {gpus} (compute capability {'.'.join(map(str, probe['capability'] or [])) or '-'}) |",
            f"| nvidia-smi | {probe['nvidia_smi'] or '-'} |",
            f"| CPU | {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB |",
            f"| OS | {machine['os']} |",
            f"| Python | {probe['python']} ({probe['python_executable']}) |",
            f"| torch | {probe['torch']} (CUDA {probe['torch_cuda'] or '-'}) |",
            f"| onnxruntime (loaded) | {probe['onnxruntime']} from {probe['onnxruntime_file']} |",
            f"| onnxruntime providers | {', '.join(probe['onnxruntime_providers'])} |",
        ]
        if "cuda_session_providers" in probe:
            lines.append(f"| a stage's CUDA session | {', '.join(probe['cuda_session_providers'])} |")
        elif "cuda_session_error" in probe:
            lines.append(f"| a stage's CUDA session | failed: {probe['cuda_session_error']} |")
        installed = ", ".join(f"{k} {v}" for k, v in probe["distributions"].items() if v is not None)
        lines += [f"| distributions | {installed} |", ""]
    lines += ["## Setup", "", f"Mode `{outcome.setup.mode}`.", ""]
    lines += [f"- {line}" for line in outcome.setup.lines]
    lines += ["", "## GPU tests", ""]
    if outcome.test_step is None:
        lines += ["Not run.", ""]
    else:
        files = ", ".join(f"`{f}`" for f in outcome.test_files) or "none"
        step = outcome.test_step
        state = "timed out" if step.timed_out else f"exit {step.returncode}"
        lines += [f"`{shlex.join(outcome.test_command)}` over {files}: {state} in {step.seconds:.0f} s.", ""]
        counts = outcome.tests
        if counts is None:
            lines += ["No JUnit XML was written: no counts.", ""]
        else:
            lines += [
                "| passed | failed | errors | skipped | total |",
                "|---|---|---|---|---|",
                f"| {counts.passed} | {counts.failed} | {counts.errors} | {counts.skipped} "
                f"| {counts.total} |",
                "",
            ]
            lines += [f"- {p}" for p in counts.problems]
            lines += [f"- skipped {s}" for s in counts.skips]
            if counts.problems or counts.skips:
                lines.append("")
    lines += ["## Benchmark", ""]
    if outcome.bench_step is None:
        lines += ["Not run.", ""]
    else:
        step = outcome.bench_step
        state = "timed out" if step.timed_out else f"exit {step.returncode}"
        lines += [f"`benchmarks/gpu.py`: {state} in {step.seconds:.0f} s.", ""]
        if outcome.bench_markdown:
            lines += [
                "#" + line if line.startswith("#") else line for line in outcome.bench_markdown.splitlines()
            ]
            lines.append("")
    return "\n".join(lines)


# -- the check -----------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> Outcome:
    started = time.monotonic()

    def left() -> float:
        return args.budget_seconds - (time.monotonic() - started)

    python = sys.executable
    print(f"{PREFIX} setup ({args.setup})", flush=True)
    done = setup(args.setup, python, min(SETUP_SECONDS, left()), args.onnxruntime)
    outcome = Outcome(args.device, args.budget_seconds, done)
    for line in done.lines:
        print(f"{PREFIX}   {line}", flush=True)
    if not done.ok:
        outcome.failures.append("setup failed")
        return outcome
    env = done.env
    work = Path(tempfile.mkdtemp(prefix="ranet-gpu-check-"))
    gpu_py = str(ROOT / "benchmarks" / "gpu.py")

    print(f"{PREFIX} probe", flush=True)
    probe_file = work / "probe.json"
    step = run_step(
        [python, gpu_py, "--probe", "--device", args.device, "--out", str(probe_file)],
        env,
        min(PROBE_SECONDS, left()),
        capture=True,
    )
    if step.returncode == 0 and probe_file.is_file():
        outcome.probe = json.loads(probe_file.read_text())
        print(
            f"{PREFIX}   onnxruntime {outcome.probe['onnxruntime']}, "
            f"providers {outcome.probe['onnxruntime_providers']}",
            flush=True,
        )
    else:
        outcome.probe_error = f"exit {step.returncode}: {step.output[-1500:]}"
        outcome.failures.append("probe failed")
        print(step.output[-3000:], flush=True)

    files = [Path(f).resolve() for f in args.tests] if args.tests else gpu_test_files()
    outcome.test_files = [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in files]
    if files:
        marker = test_marker(args.device)
        print(f"{PREFIX} pytest -m {shlex.quote(marker)} ({len(files)} files)", flush=True)
        timeout = min(TESTS_SECONDS, left() - MIN_BENCH_SECONDS)
        step, counts, command = run_tests(python, env, outcome.test_files, timeout, work, marker)
        outcome.test_step, outcome.tests, outcome.test_command = step, counts, command
        if step.timed_out:
            outcome.failures.append("GPU tests timed out")
        elif counts is None or step.returncode not in (0, 5):
            outcome.failures.append(f"GPU tests failed (pytest exit {step.returncode})")
        elif counts.passed == 0:
            outcome.failures.append(f"no test passed on the {args.device}")
    else:
        outcome.failures.append("no test file uses the gpu marker")

    bench_seconds = left() - REPORT_SECONDS
    if bench_seconds < MIN_BENCH_SECONDS:
        outcome.failures.append(f"no time left for the benchmark ({bench_seconds:.0f} s)")
        return outcome
    print(f"{PREFIX} benchmark ({bench_seconds:.0f} s left)", flush=True)
    bench_json, bench_md = work / "gpu.json", work / "gpu.md"
    command = [python, gpu_py, "--device", args.device, "--out", str(bench_json), "--report", str(bench_md)]
    command += ["--budget-seconds", f"{bench_seconds - 20:.0f}", *(["--quick"] if args.quick else [])]
    command += shlex.split(args.bench_args)
    outcome.bench_step = step = run_step(command, env, bench_seconds)
    if bench_json.is_file():
        outcome.bench = json.loads(bench_json.read_text())
    if bench_md.is_file():
        outcome.bench_markdown = bench_md.read_text()
    if step.timed_out:
        outcome.failures.append("benchmark timed out")
    elif step.returncode != 0:
        outcome.failures.append(f"benchmark failed (exit {step.returncode})")
    shutil.rmtree(work, ignore_errors=True)
    return outcome


def arrivals(wheels: Path, python: str) -> tuple[int, list[str]]:
    """What `--parts` says after each device call: the onnxruntime-gpu parts that have arrived intact,
    whether base/ has, and the image's own onnxruntime with its providers (where it has the CUDA
    provider the remaining parts need not be carried). Exit status 1 when no part is here."""
    found = image_onnxruntime(python)
    lines = [describe_onnxruntime(found)]
    if found is not None and "CUDAExecutionProvider" in found["providers"]:
        lines.append(
            "  it has the CUDA provider: the last call may run with RANET_GPU_ONNXRUNTIME=image "
            "and carry no more parts"
        )
    description, present, missing = parts_status(wheels)
    if description is None:
        return 1, [f"no onnxruntime-gpu part in {wheels}", *lines]
    base = "present" if (wheels / "base" / "MANIFEST.json").is_file() else "missing"
    parts = (
        f"{description['wheel']}: parts here {present or 'none'}, missing {missing or 'none'}; base {base}"
    )
    return 0, [parts, *lines]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu runs the path without a GPU")
    parser.add_argument("--setup", choices=("auto", "wheels", "registry", "none"), default="auto")
    parser.add_argument(
        "--onnxruntime",
        choices=("parts", "image"),
        default=os.environ.get("RANET_GPU_ONNXRUNTIME", "parts"),
        help="with --setup wheels: the onnxruntime-gpu parts (default), or the image's own onnxruntime "
        "when --parts showed it has the CUDA provider (also RANET_GPU_ONNXRUNTIME=image)",
    )
    parser.add_argument("--quick", action="store_true", help="the benchmark's quick sizes")
    parser.add_argument("--tests", nargs="*", help="test files instead of those using the gpu marker")
    parser.add_argument("--bench-args", default="", help="more arguments for benchmarks/gpu.py")
    parser.add_argument("--budget-seconds", type=float, default=BUDGET_SECONDS)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument(
        "--parts", action="store_true", help="which onnxruntime-gpu parts are here; nothing else"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.parts:
        status, lines = arrivals(WHEELS, sys.executable)
        for line in lines:
            print(f"{PREFIX} {line}")
        return status
    if args.device != "cpu":
        reason = no_cuda_reason()
        if reason is not None:
            print(f"{PREFIX} no CUDA device ({reason}); nothing to do")
            return 0
    started = time.monotonic()
    outcome = check(args)
    outcome.wall_seconds = time.monotonic() - started
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(render(outcome))
    verdict = "PASSED" if not outcome.failures else "FAILED (" + "; ".join(outcome.failures) + ")"
    print(f"{PREFIX} {verdict} in {outcome.wall_seconds:.0f} s; report {args.report}")
    return 0 if not outcome.failures else 1


if __name__ == "__main__":
    sys.exit(main())
