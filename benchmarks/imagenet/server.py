"""Step d: `ranet serve --model-store` started as a user starts it, timed to ready, and its memory.

The process itself is peers/servers.py's `ManagedServer` (own process group, readiness bounded in
time, stopped by group), polled every 0.1 s so the time to ready has that resolution, with ranet
serve's `stop_with_parent`: the server gets SIGTERM however this process dies (a test's timeout kills
it with SIGKILL), and its children follow it. serving.py's `start_ranet` is not used: it places the
run directory under the work folder, and the engine's Unix socket lives there, which fails to bind past
107 bytes (a deep pytest folder); this run directory is a short path of its own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import ROOT
from imagenet.ranet_cli import ranet_command

if TYPE_CHECKING:
    from serving import Running

READY_POLL_SECONDS = 0.1


@contextmanager
def serving_store(store: Path, model: str, log: Path, timeout: float) -> Iterator[Running]:
    """`ranet serve --model-store` on a free loopback port with the server's own split of the cores,
    ready (its `server.ready_seconds`: from just before the process starts to the first /readyz 200);
    stopped, and its run directory removed, on leaving."""
    from servers import ManagedServer, free_port, http_ok

    from ranet_serve.api.server import stop_with_parent
    from serving import Running

    port = free_port()
    command = ranet_command("serve", "--port", str(port), "--grpc-port", "0")
    command += ["--model-store", str(store), "--default-model", model]
    run_dir = Path(tempfile.mkdtemp(prefix="ranet-in-"))
    url = f"http://127.0.0.1:{port}"
    server = ManagedServer(
        "ranet serve",
        command,
        http_ok(f"{url}/readyz"),
        cwd=ROOT,
        env={"RANET_RUN_DIR": str(run_dir)},
        log=log,
        start_timeout=timeout,
        url=url,
        poll_interval=READY_POLL_SECONDS,
        preexec_fn=stop_with_parent,
    )
    try:
        yield Running(server.start(), run_dir)
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def server_roles(running: Running) -> dict[int, str]:
    """pid -> role, from the pid files the engine and front-ends write in the server's run directory
    (their command lines are all multiprocessing's); the rest is multiprocessing's resource tracker."""
    roles = {running.pid: "supervisor"}
    for path in running.run_root.glob("*/engine.pid"):
        roles[int(path.read_text())] = "engine"
    for pid in running.frontend_pids():
        roles[pid] = "front-end"
    return roles


def rss_breakdown(running: Running) -> dict[str, Any]:
    """RSS of every process in the server's tree (MiB) and their sum. Shared pages count once per
    process, so the sum overstates what the tree holds, as `ps` users read it."""
    from serving import process_tree, rss_kib

    roles = server_roles(running)
    sizes = {pid: round(rss_kib(pid) / 1024, 1) for pid in process_tree(running.pid)}
    processes = [{"pid": pid, "role": roles.get(pid, "helper"), "rss_mib": mib} for pid, mib in sizes.items()]
    return {"total_mib": round(sum(sizes.values()), 1), "processes": processes}
