"""Every fenced code block of README.md and docs/*.md is run here, or marked as not runnable with why.

A block is marked by an HTML comment on the line before its fence, `<!-- not-run: REASON -->`. Any
other block must be something this module can run, or the first test fails naming it:

- shell (`bash`, `sh`): every command is `curl`, `ranet` or `python`, run with bash (`-euo pipefail`)
  from the repository root with the virtualenv first on PATH. `curl` fails on HTTP errors
  (`--fail-with-body` is added), so an example that gets a 4xx fails here.
- `python`: run with this interpreter from the repository root.
- `promql`: each query is checked by promtool, and every metric it selects must be one the live
  server exports.

Substitutions, and the only ones: `http://127.0.0.1:8080` and `http://localhost:8080` become the live
server's URL, `127.0.0.1:8081` and `localhost:8081` its gRPC address; lines that start the server
(`make serve &`, `ranet serve`) are dropped, because that server is the one the `live_server` fixture
starts: `ranet serve` from the repository root, on the committed model store, on free ports (one
front-end and one runtime thread, to spare the test machine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy_helpers import find_promtool, promql_metric_names, promtool_check_expressions
from helpers.process import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAMPLE = ROOT / "clients" / "python" / "ranet_client" / "samples" / "fmnist_test_00000.png"

NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
SHELL = {"bash", "sh", "shell"}
PROGRAMS = {"curl", "ranet", "python"}  # what a shell block may run
FILTERS = {"grep", "head", "python"}  # and pipe its output through
SERVER_LINES = {"make serve &", "ranet serve", "ranet serve &"}  # the live server stands for these
DOCUMENTED_URLS = ("http://127.0.0.1:8080", "http://localhost:8080")
DOCUMENTED_GRPC = ("127.0.0.1:8081", "localhost:8081")
BLOCK_SECONDS = 120


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text, and the not-run reason if marked."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{index + 1}: unclosed code block"
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(
            Block(
                path=path,
                line=index + 1,
                language=opening.group(1).lower(),
                code="\n".join(lines[index + 1 : end]) + "\n",
                not_run=marker.group(1) if marker else None,
            )
        )
        index = end + 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def why_not_runnable(block: Block) -> str | None:
    """None when this module can run the block, else what stops it."""
    if block.language in SHELL:
        others = [
            command
            for command in shell_commands(block.code)
            if command not in SERVER_LINES and not _runnable_pipeline(command)
        ]
        return f"runs {others}, not only {sorted(PROGRAMS)} (piped to {sorted(FILTERS)})" if others else None
    if block.language in {"python", "promql"}:
        return None
    return f"a {block.language or 'plain'} block"


def _runnable_pipeline(command: str) -> bool:
    first, *rest = [part.split() for part in command.split("|")]
    return bool(first) and first[0] in PROGRAMS and all(part and part[0] in FILTERS for part in rest)


ALL_BLOCKS = [block for path in DOCUMENTS for block in code_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.not_run is None and why_not_runnable(block) is None]


def with_server(code: str, url: str, grpc_target: str | None = None) -> str:
    for documented in DOCUMENTED_URLS:
        code = code.replace(documented, url)
    for documented in DOCUMENTED_GRPC if grpc_target is not None else ():
        code = code.replace(documented, grpc_target)
    return code


def test_every_example_runs_here_or_says_why_not() -> None:
    assert {path.name for path in DOCUMENTS} >= {"README.md", "operations.md"}
    problems = []
    for block in ALL_BLOCKS:
        if block.not_run is not None:
            if not block.not_run:
                problems.append(f"{block.where}: not-run marker without a reason")
            continue
        reason = why_not_runnable(block)
        if reason is not None:
            problems.append(f"{block.where}: {reason}; make it runnable or mark it <!-- not-run: why -->")
    assert not problems, "\n".join(problems)
    assert len(RUNNABLE) >= 4  # the parser found the examples


def test_the_block_parser_sees_markers_commands_and_substitutions(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(
        "Intro\n\n<!-- not-run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "```bash\nmake serve &\ncurl -s http://127.0.0.1:8080/readyz  # ready?\n"
        "ranet inspect \\\n  model_store/x/1 | python -m json.tool\n```\n\n```yaml\na: 1\n```\n"
    )
    marked, shell, other = code_blocks(document)
    assert (marked.not_run, marked.line, shell.not_run) == ("needs a GPU", 4, None)
    assert shell_commands(shell.code) == [
        "make serve &",
        "curl -s http://127.0.0.1:8080/readyz",
        "ranet inspect model_store/x/1 | python -m json.tool",
    ]
    assert why_not_runnable(shell) is None
    assert why_not_runnable(marked) is not None and why_not_runnable(other) == "a yaml block"
    assert "http://127.0.0.1:9/readyz" in with_server(shell.code, "http://127.0.0.1:9")
    assert with_server('Client("127.0.0.1:8081")', "http://x", "127.0.0.1:9") == 'Client("127.0.0.1:9")'


@pytest.fixture(scope="module")
def live_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`ranet serve` from the repository root (the committed model store) on a free port."""
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANET_")}
    env.update(RANET_FRONTENDS="1", RANET_THREADS="1")
    server = ServeProcess([], log=log, env=env, cwd=ROOT)
    try:
        server.wait_ready()
        # One classification first, so every per-request series exists for the PromQL checks.
        answer = httpx.post(f"{server.url}/v1/classify", files={"file": SAMPLE.read_bytes()}, timeout=30)
        assert answer.status_code == 200, answer.text
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live_server(live_process: ServeProcess) -> str:
    return live_process.url


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the front of PATH: `curl` that fails on HTTP errors, then the virtualenv's bin."""
    real_curl = shutil.which("curl")
    if real_curl is None:
        pytest.skip("curl is not installed")
    folder = tmp_path_factory.mktemp("tools")
    shim = folder / "curl"
    shim.write_text(f'#!/bin/sh\nexec {real_curl} --fail-with-body --show-error "$@"\n')
    shim.chmod(0o755)
    return folder


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.where for block in RUNNABLE])
def test_documented_example_runs(
    block: Block, live_server: str, live_process: ServeProcess, tools: Path
) -> None:
    if block.language == "promql":
        check_promql(block, live_server)
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANET_")}
    env["PATH"] = os.pathsep.join([str(tools), str(Path(sys.executable).parent), env.get("PATH", "")])
    code = with_server(block.code, live_server, live_process.grpc_target)
    if block.language in SHELL:
        script = "\n".join(
            line for line in code.splitlines() if line.split("#")[0].strip() not in SERVER_LINES
        )
        command = ["bash", "-euo", "pipefail", "-c", script]
    else:
        command = [sys.executable, "-c", code]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BLOCK_SECONDS, check=False
    )
    assert done.returncode == 0, f"{block.where} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{block.where} printed nothing"


def check_promql(block: Block, url: str) -> None:
    promtool = find_promtool()
    if promtool is None:
        pytest.skip("promtool is not installed")
    queries = [line for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # A query may continue on the next line (an indented operator).
    expressions: list[str] = []
    for line in queries:
        if line.startswith((" ", "\t")) and expressions:
            expressions[-1] += " " + line.strip()
        else:
            expressions.append(line.strip())
    assert promtool_check_expressions(promtool, expressions) == {}, block.where
    exposed = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
        if line and not line.startswith("#")
    }
    for expr in expressions:
        missing = promql_metric_names(expr) - exposed
        assert not missing, f"{block.where}: {expr} selects {missing}, which the server does not export"
