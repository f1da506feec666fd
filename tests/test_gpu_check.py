"""`make gpu-check` without a GPU: one line and exit 0; its report path on the CPU (benchmarks/gpu.py
--device cpu --quick through scripts/gpu_check.py), with the tables checked for consistency; the
wheel parts of scripts/gpu_wheels.py joined and verified as the GPU machine joins them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "model_store" / "ranet-fmnist" / "1"
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(
    not (BUNDLE / "manifest.json").is_file() or not FASHION_TEST.is_file(),
    reason="needs the default bundle and Debian's dataset-fashion-mnist (scripts/setup.sh installs both)",
)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
gpu_wheels = _load("gpu_wheels")


def no_gpu_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", **extra}


# -- without a CUDA device ---------------------------------------------------------------------------------


def test_gpu_check_without_cuda_prints_one_line_and_exits_0() -> None:
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh"],
        cwd=ROOT,
        env=no_gpu_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        "gpu-check: no CUDA device (CUDA_VISIBLE_DEVICES='' hides every device); nothing to do"
    ]


def test_make_gpu_check_without_cuda_is_one_line() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "gpu-check"],
        cwd=ROOT,
        env=no_gpu_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device (")
    assert lines[0].endswith("; nothing to do")


def test_no_driver_is_reported_without_importing_torch(tmp_path: Path) -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA driver")
    # An interpreter that cannot start proves torch is never asked.
    reason = gpu_check.no_cuda_reason({"PATH": str(tmp_path)}, python=str(tmp_path / "no-python"))
    assert reason == "no NVIDIA driver: no nvidia-smi, no /dev/nvidiactl"


# -- the report path on the CPU ---------------------------------------------------------------------------


def fake_gpu_tests(tmp_path: Path, failing: bool = False, twin: bool = True) -> Path:
    """A test file as the GPU tests are written: GPU tests (one passes or fails, one skips as without
    CUDA), their CPU twin (runs on the CPU; `twin=False` leaves it out) and a slow test (never run by
    the check: it would fail)."""
    path = tmp_path / "test_fake_gpu.py"
    body = [
        "import pytest",
        "",
        "@pytest.mark.gpu",
        "def test_runs():",
        f"    assert {not failing}, 'made to fail'",
        "",
        "@pytest.mark.gpu",
        "def test_skips():",
        "    pytest.skip('no CUDA device')",
        "",
        "@pytest.mark.slow",
        "def test_slow():",
        "    assert False, 'the check ran a slow test'",
        "",
    ]
    if twin:
        body += ["def test_cpu_twin():", "    pass", ""]
    path.write_text("\n".join(body))
    return path


def fake_skipping_tests(tmp_path: Path) -> Path:
    """A test file whose every test skips, as the GPU tests do without CUDA."""
    path = tmp_path / "test_fake_gpu.py"
    path.write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_skips():\n    pytest.skip('no CUDA device')\n"
    )
    return path


def run_check(tmp_path: Path, tests: Path, bench_args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    report = tmp_path / "GPU_REPORT.md"
    command = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--setup", "none"]
    command += ["--tests", str(tests), "--bench-args", bench_args, "--report", str(report)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.is_file(), done.stdout + done.stderr
    return done, report.read_text()


def table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first table after the heading that contains `heading`, as rows of {column: cell}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    rows: list[dict[str, str]] = []
    header: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            if header:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
        elif not set(line) <= set("|-"):
            rows.append(dict(zip(header, cells, strict=True)))
    assert rows, f"no table under {heading!r}"
    return rows


def close(printed: float, computed: float, digits: int) -> bool:
    """`printed` (rounded to `digits`) equals `computed` from other printed figures, allowing for their
    rounding (a relative 1e-3 at most here, where rates are printed to 0.1 and are above 100)."""
    return abs(printed - computed) <= 0.5 * 10**-digits + 2e-3 * abs(computed)


def check_inprocess(report: str) -> None:
    rows = table(report, "Default operating point vs full depth")
    assert [int(r["batch"]) for r in rows] == [1, 64]
    for r in rows:
        default, full = float(r["default point img/s"]), float(r["full depth img/s"])
        assert default > 0 and full > 0
        assert close(float(r["speedup"]), default / full, 2)
        assert float(r["speedup"]) > 1.5  # the default point leaves most images at early exits
    line = next(line for line in report.splitlines() if line.startswith("Operating point"))
    mflops, last = map(float, re.findall(r"([\d.]+) MFLOPs per image vs ([\d.]+)", line)[0])
    assert close(float(re.findall(r"FLOPs ratio ([\d.]+)", line)[0]), last / mflops, 2)
    for accuracy in re.findall(r"([\d.]+)%", line):
        assert 80 < float(accuracy) <= 100


def check_imagenet_section(report: str) -> None:
    rows = table(report, "ImageNet-shaped model")
    assert [int(r["batch"]) for r in rows] == [1, 4]
    for r in rows:
        full, mix = float(r["full depth img/s"]), float(r["mix img/s"])
        assert close(float(r["speedup"]), mix / full, 2)
        assert 1.0 < float(r["FLOPs ratio"]) < 10.0


def check_header_and_tests(report: str, passed: bool) -> None:
    assert report.startswith("# GPU check\n")
    assert ("Result: PASSED." in report) == passed
    assert "device `cpu`" in report
    assert "| Python | 3." in report and "| onnxruntime providers | " in report
    counts = table(report, "GPU tests")[0]
    total = sum(int(counts[k]) for k in ("passed", "failed", "errors", "skipped"))
    assert total == int(counts["total"]) == 3  # the slow test is not run
    # JUnit names the fake file by its path from pytest's rootdir: a dotted prefix that depends on where
    # the checkout and the temporary folder are.
    assert re.search(r"^- skipped (\S+\.)?test_fake_gpu::test_skips: no CUDA device", report, re.MULTILINE)


@needs_data
def test_report_path_on_the_cpu_has_consistent_tables(tmp_path: Path) -> None:
    bench = f"--skip split http --imagenet-bundle {BUNDLE}"  # any bundle runs the ImageNet section's code
    done, report = run_check(tmp_path, fake_gpu_tests(tmp_path), bench)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("gpu-check: PASSED in ")
    check_header_and_tests(report, passed=True)
    counts = table(report, "GPU tests")[0]
    assert (counts["passed"], counts["failed"], counts["skipped"]) == ("2", "0", "1")  # with the CPU twin
    assert "-m 'not slow'" in report  # on the CPU the files' fast tests run, not only the GPU ones
    assert report.count("Skipped (--skip).") == 2  # split and HTTP
    check_inprocess(report)
    check_imagenet_section(report)
    assert "### GPU benchmark (cpu, quick)" in report  # the benchmark's headings one level down


@needs_data
def test_a_failing_gpu_test_fails_the_check_and_is_named(tmp_path: Path) -> None:
    bench = "--skip split inprocess http imagenet"
    done, report = run_check(tmp_path, fake_gpu_tests(tmp_path, failing=True), bench)
    assert done.returncode == 1
    assert "Result: FAILED: GPU tests failed (pytest exit 1)." in report
    assert re.search(
        r"^- failure (\S+\.)?test_fake_gpu::test_runs: AssertionError: made to fail", report, re.MULTILINE
    )
    check_header_and_tests(report, passed=False)


def test_a_check_in_which_no_test_passed_fails(tmp_path: Path) -> None:
    done, report = run_check(tmp_path, fake_skipping_tests(tmp_path), "--skip split inprocess http imagenet")
    assert done.returncode == 1
    assert "Result: FAILED: no test passed on the cpu." in report


def test_the_check_runs_gpu_tests_on_a_gpu_and_the_fast_tests_on_the_cpu() -> None:
    assert gpu_check.test_marker("cuda") == gpu_check.test_marker("cuda:1") == "gpu"
    assert gpu_check.test_marker("cpu") == "not slow"


@pytest.mark.slow
@needs_data
def test_report_path_on_the_cpu_with_every_section(tmp_path: Path) -> None:
    done, report = run_check(tmp_path, fake_gpu_tests(tmp_path), f"--imagenet-bundle {BUNDLE}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_header_and_tests(report, passed=True)
    split = table(report, "Stage-split cascade vs one monolithic ONNX graph")
    assert [int(r["batch"]) for r in split] == [1, 64]
    for r in split:
        batch, stages, mono = int(r["batch"]), float(r["stages ms"]), float(r["monolithic ms"])
        assert close(float(r["stages / monolithic"]), stages / mono, 2)
        assert close(float(r["stages img/s"]), 1000 * batch / stages, 1)
        assert close(float(r["monolithic img/s"]), 1000 * batch / mono, 1)
    assert "within the verify tolerance" in report
    check_inprocess(report)
    http = table(report, "HTTP: ranet serve with RANET_DEVICE=cpu")
    assert [r["point"] for r in http] == ["default point", "full depth"]
    assert all(r["errors"] == "0" and float(r["img/s"]) > 0 for r in http)
    assert float(http[1]["MFLOPs/img"]) > float(http[0]["MFLOPs/img"])
    ratio = float(re.findall(r"Default point / full depth: ([\d.]+)\.", report)[0])
    assert close(ratio, float(http[0]["img/s"]) / float(http[1]["img/s"]), 2)
    assert "the model's versions report device cpu" in report
    check_imagenet_section(report)


# -- the wheels and their parts --------------------------------------------------------------------------


def fake_wheel(tmp_path: Path, size: int) -> Path:
    wheel = tmp_path / "src" / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(os.urandom(size))
    return wheel


def test_wheel_parts_join_back_to_the_same_sha256(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, 10_000)
    out = tmp_path / "wheels"
    sizes = gpu_wheels.part_sizes(10_000, 2_500, 4_000)
    assert sizes == [2_500, 4_000, 3_500]
    description = gpu_wheels.split_wheel(wheel, out, sizes)
    assert [p["folder"] for p in description["parts"]] == ["ort1", "ort2", "ort3"]
    assert all(json.loads((out / f"ort{i}" / "ORT.json").read_text()) == description for i in (1, 2, 3))
    found, present, missing = gpu_check.parts_status(out)
    assert found == description and present == ["ort1", "ort2", "ort3"] and missing == []
    joined = gpu_check.join_parts(description, out, tmp_path / "joined")
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == description["sha256"]
    assert joined.read_bytes() == wheel.read_bytes()


def test_a_missing_or_damaged_part_is_named_and_never_installed(tmp_path: Path) -> None:
    out = tmp_path / "wheels"
    description = gpu_wheels.split_wheel(fake_wheel(tmp_path, 9_000), out, [3_000, 3_000, 3_000])
    part2 = out / "ort2" / description["parts"][1]["file"]
    data = bytearray(part2.read_bytes())
    data[0] ^= 0xFF
    part2.write_bytes(bytes(data))
    (out / "ort3" / description["parts"][2]["file"]).unlink()
    _, present, missing = gpu_check.parts_status(out)
    assert present == ["ort1"] and missing == ["ort2", "ort3"]
    (out / "ort3" / description["parts"][2]["file"]).write_bytes(b"\0" * 3_000)  # right size, wrong bytes
    with pytest.raises(RuntimeError, match="SHA-256"):
        gpu_check.join_parts(description, out, tmp_path / "joined")
    assert not (tmp_path / "joined" / description["wheel"]).exists()


def test_call_plan_fits_every_call_in_the_limit() -> None:
    mib = gpu_wheels.MIB
    tree = 12 * mib
    room = gpu_wheels.CALL_BYTES - tree - 3 * mib
    base = 20 * mib
    sizes = gpu_wheels.part_sizes(256 * mib, room - base, room)
    parts = [{"folder": f"ort{i}"} for i in range(1, len(sizes) + 1)]
    folders = {".gpuwheels/base": base} | {f".gpuwheels/ort{i}": s for i, s in enumerate(sizes, start=1)}
    plan = gpu_wheels.call_plan("base", parts, folders, tree)
    assert plan[0]["carry"] == [".gpuwheels/base", ".gpuwheels/ort1"]
    assert [c["carry"] for c in plan[1:]] == [[f".gpuwheels/ort{i}"] for i in range(2, len(sizes) + 1)]
    assert all(c["with_tree_mib"] <= 64 - 3 for c in plan)
    assert all(c["command"] == gpu_wheels.PARTS_COMMAND for c in plan[:-1])
    assert "make gpu-check" in plan[-1]["command"] and "GPU_REPORT.md" in plan[-1]["command"]


def test_wheels_are_brought_always_when_the_image_lacks_them_else_only_below_the_bound() -> None:
    from packaging.specifiers import SpecifierSet

    bounds = {
        "fastapi": SpecifierSet(">=0.110"),
        "grpcio": SpecifierSet(">=1.81.1"),
        "torch": SpecifierSet(">=2.6,<2.15"),
        "ranet-client": SpecifierSet(),
    }
    pins = {"fastapi": "0.165.0", "grpcio": "1.85.4", "torch": "2.13.0"}
    chosen = {w["name"]: w for w in gpu_wheels.select(bounds, pins)}
    assert set(chosen) == {"fastapi", "grpcio"}  # torch never travels; the project's own packages neither
    assert chosen["fastapi"]["when"] == "always"
    assert chosen["grpcio"] == {
        "name": "grpcio",
        "version": "1.85.4",
        "when": "unsatisfied",
        "requirement": "grpcio>=1.81.1",
    }


def test_every_package_serving_needs_is_pinned_and_the_gpu_build_too() -> None:
    pins = gpu_wheels.read_pins()
    bounds = gpu_wheels.closure(gpu_wheels.ROOTS)
    wheels = {w["name"] for w in gpu_wheels.select(bounds, pins)}
    # What the GPU image lacks and ranet serve imports.
    assert {"fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "msgspec", "httptools"} <= wheels
    assert {"python-multipart", "pydantic-settings", "grpcio-health-checking", "sniffio"} <= wheels
    assert pins[gpu_wheels.ORT_GPU] == "1.31.1"


def test_satisfied_reads_the_installed_version() -> None:
    import numpy

    assert gpu_check.satisfied(f"numpy=={numpy.__version__}")
    assert not gpu_check.satisfied("numpy<1")
    assert not gpu_check.satisfied("surely-not-installed-package>=1")


def test_registry_setup_pins_only_what_it_adds(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "# header\nnumpy==1.0.0\nsurely-not-installed-package==1.2\nonnxruntime-gpu==1.31.1\n"
    )
    assert gpu_check.filtered_constraints(constraints).splitlines() == [
        "surely-not-installed-package==1.2",
        "onnxruntime-gpu==1.31.1",
    ]


def test_gpu_tests_are_found_by_their_marker(tmp_path: Path) -> None:
    marked = {
        "test_decorated.py": "import pytest\n\n\n@pytest.mark.gpu\ndef test_a():\n    pass\n",
        "test_module.py": "import pytest\n\npytestmark = [pytest.mark.gpu, pytest.mark.slow]\n",
        "test_devices.py": "from helpers.devices import BINDING_DEVICES, require_device\n",
    }
    unmarked = {
        "test_plain.py": "def test_a():\n    pass\n",
        "test_text.py": 'BODY = ["@pytest.mark.gpu"]  # a marker inside a string\n',
        "helper.py": "import pytest\n\n\n@pytest.mark.gpu\ndef test_a():\n    pass\n",
    }
    (tmp_path / "sub").mkdir()
    for name, text in {**marked, **unmarked}.items():
        (tmp_path / "sub" / name).write_text(text)
    assert gpu_check.gpu_test_files(tmp_path) == sorted(tmp_path / "sub" / name for name in marked)
    found = gpu_check.gpu_test_files()
    assert Path(__file__).resolve() not in found  # its marked tests are strings
    tests = Path(__file__).resolve().parent
    assert {tests / "test_stage_devices.py", tests / "api" / "test_api_devices.py"} <= set(found)


def test_cuda_wheel_libraries_are_found_for_ld_library_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import site

    for package, library in (("cudnn", "libcudnn.so.9"), ("cu13", "libcublas.so.13")):
        (tmp_path / "nvidia" / package / "lib").mkdir(parents=True)
        (tmp_path / "nvidia" / package / "lib" / library).write_bytes(b"")
    (tmp_path / "nvidia" / "empty" / "lib").mkdir(parents=True)  # no library in it: left out
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path)])
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path / "user"))
    assert gpu_check.nvidia_library_dirs() == [
        str(tmp_path / "nvidia" / "cu13" / "lib"),
        str(tmp_path / "nvidia" / "cudnn" / "lib"),
    ]


def test_the_wheel_folder_counts_as_ignored_before_it_exists(tmp_path: Path) -> None:
    """A fresh checkout has no .gpuwheels/ yet; its ignore rule (`/.gpuwheels/`) matches directories only."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    folder = repo / ".gpuwheels"
    assert not gpu_wheels.ignored_by_git(folder, repo)
    (repo / ".gitignore").write_text("/.gpuwheels/\n")
    assert not folder.exists() and gpu_wheels.ignored_by_git(folder, repo)
    assert gpu_wheels.ignored_by_git(tmp_path / "elsewhere", repo)


# -- which onnxruntime: the parts, or the image's own ----------------------------------------------------


def fake_interpreter(tmp_path: Path, providers: list[str]) -> str:
    """An interpreter whose own onnxruntime (as an image's would be) reports `providers`."""
    package = tmp_path / "image-site" / "onnxruntime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"__version__ = '1.30.0'\n\ndef get_available_providers():\n    return {providers!r}\n"
    )
    script = tmp_path / "python3"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={package.parent} exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_parts_report_names_the_image_onnxruntime_and_says_when_the_parts_are_not_needed(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    gpu_wheels.split_wheel(fake_wheel(tmp_path, 6_000), wheels, [3_000, 3_000])
    (wheels / "base").mkdir()
    (wheels / "base" / "MANIFEST.json").write_text('{"wheels": []}')
    status, lines = gpu_check.arrivals(wheels, fake_interpreter(tmp_path, ["CPUExecutionProvider"]))
    assert status == 0
    assert lines[0].endswith("parts here ['ort1', 'ort2'], missing none; base present")
    assert lines[1:] == ["the image's onnxruntime 1.30.0: providers ['CPUExecutionProvider']"]
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    status, lines = gpu_check.arrivals(wheels, fake_interpreter(tmp_path / "cuda", cuda))
    assert status == 0 and "RANET_GPU_ONNXRUNTIME=image" in lines[-1]
    status, lines = gpu_check.arrivals(tmp_path / "nothing", fake_interpreter(tmp_path / "none", []))
    assert status == 1 and lines[0].startswith("no onnxruntime-gpu part")


@needs_data
def test_the_image_onnxruntime_is_kept_without_parts_and_shadowed_by_nothing(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    (wheels / "base").mkdir(parents=True)
    (wheels / "base" / "MANIFEST.json").write_text('{"wheels": []}')
    python = fake_interpreter(tmp_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    done = gpu_check.setup_from_wheels(python, wheels, site, 60, onnxruntime="parts")
    assert not done.ok and "parts missing: all" in done.lines[-1]
    # An earlier run with the parts left the GPU build in the site folder, first on PYTHONPATH.
    (site / "onnxruntime").mkdir(parents=True)
    (site / "onnxruntime_gpu-1.31.1.dist-info").mkdir()
    (site / ".ranet-gpu-check").write_text("the stamp of that run")
    done = gpu_check.setup_from_wheels(python, wheels, site, 60, onnxruntime="image")
    assert done.ok
    assert (
        "onnxruntime: the image's onnxruntime 1.30.0: providers ['CUDAExecutionProvider', " in done.lines[0]
    )
    assert done.lines[0].endswith("kept (no parts)")
    assert not list(site.glob("onnxruntime*"))
    assert not (site / ".ranet-gpu-check").exists()  # a later run with the parts installs them again


def pure_wheel(folder: Path, name: str, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel of one package `name` (pip installs it on any interpreter)."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@needs_data
def test_wheels_setup_installs_base_and_the_joined_parts_once(tmp_path: Path) -> None:
    """The path the last device call takes, with pip for real: base/'s wheels and the wheel joined from
    its parts land in the site folder; a second run on the same machine installs nothing again."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    base = pure_wheel(wheels / "base", "ranet_fake_base")
    entry = {"name": "ranet-fake-base", "version": "1.0", "when": "always", "requirement": "ranet-fake-base"}
    (wheels / "base" / "MANIFEST.json").write_text(json.dumps({"wheels": [{**entry, "file": base.name}]}))
    gpu_build = pure_wheel(tmp_path / "build", "ranet_fake_ort")
    size = gpu_build.stat().st_size
    gpu_wheels.split_wheel(gpu_build, wheels, gpu_wheels.part_sizes(size, size // 2, size // 3 + 1))
    assert len(list(wheels.glob("ort*"))) == 3
    done = gpu_check.setup_from_wheels(sys.executable, wheels, site, 120)
    assert done.ok, done.lines
    assert (site / "ranet_fake_base" / "__init__.py").is_file()
    assert (site / "ranet_fake_ort" / "__init__.py").is_file()
    assert "onnxruntime-gpu: 3 parts joined" in done.lines[0]
    assert f"installed 2 wheels into {site} (first on PYTHONPATH)" in done.lines
    assert done.env["PYTHONPATH"].split(os.pathsep)[0] == str(site)
    again = gpu_check.setup_from_wheels(sys.executable, wheels, site, 120)
    assert again.ok and f"2 wheels already in {site} (an earlier run on this machine)" in again.lines
