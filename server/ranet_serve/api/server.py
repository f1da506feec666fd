"""Run the server: one process, or a supervisor with N front-end processes and one engine process.

Why several processes: with one process, a single Python event loop parses, decodes and encodes
every request and the model waits for it (over HTTP the server delivered about 5% of what its engine
computes in process). Front-end processes share the listening socket and do all per-request work
that is not the model; the engine process owns the schedulers and stage runtimes and batches across
all of them (`engine.process`).

The supervisor binds the socket, creates the run directory (Unix socket, shared memory, metrics
files), starts the engine and the front-ends, replaces a front-end that dies, restarts a dead engine
(front-ends answer 503 meanwhile), and on SIGTERM/SIGINT stops the front-ends first (uvicorn lets
their requests finish) and the engine last (it drains its queues). SIGHUP is passed to the engine,
which reloads the model store.

gRPC (`api/grpc`, `RANET_GRPC_PORT`) is served by every front-end process too: grpc binds its own
listening sockets, so each front-end binds the port with SO_REUSEPORT, and the supervisor holds a
bound, non-listening socket on it (`_reserve_grpc_port`).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ranet_serve.cpus import frontend_count
from ranet_serve.engine.catalog import NAME_PATTERN
from ranet_serve.logs import configure_logging
from ranet_serve.settings import Settings

logger = logging.getLogger(__name__)

METRICS_DIR = "metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_PAUSE_SECONDS = 0.5  # between restarts of a process that keeps dying
PR_SET_PDEATHSIG = 1  # prctl(2)
ALIVE_LOCK = "alive.lock"  # in the run directory: a shared flock per running child


def find_bundles(settings: Settings) -> list[str]:
    """`name/version` of every directory in the store holding a manifest (no loading)."""
    from ranet_serve.export.manifest import VERSION_PATTERN as version_pattern

    versioned = re.compile(version_pattern)
    root = settings.model_store
    if not root.is_dir():
        return []
    return sorted(
        f"{model.name}/{version.name}"
        for model in root.iterdir()
        if model.is_dir() and NAME_PATTERN.match(model.name)
        for version in model.iterdir()
        if version.is_dir() and versioned.match(version.name) and (version / "manifest.json").is_file()
    )


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    configure_logging(settings.log_level)
    if not settings.engine_process:  # Settings refuses RANET_FRONTENDS > 1 with it
        _serve_one_process(settings)
        return
    Supervisor(settings).run()


def _serve_one_process(settings: Settings) -> None:
    import uvicorn

    from ranet_serve.api.app import create_app
    from ranet_serve.api.http_protocol import CoalescingHttpToolsProtocol

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
        log_config=None,  # keep the logging configured above
        proxy_headers=False,  # see run_frontend
        http=CoalescingHttpToolsProtocol,
    )
    uvicorn.Server(config).run(sockets=[_bind(settings.host, settings.port)])


def run_frontend(settings: Settings, sock: socket.socket, run_dir: Path) -> None:
    """Front-end process entry point: uvicorn on the shared socket, the engine over IPC."""
    configure_logging(settings.log_level)
    stop_with_parent()
    with last_one_out_removes(run_dir):
        _serve_frontend(settings, sock, run_dir)


def _serve_frontend(settings: Settings, sock: socket.socket, run_dir: Path) -> None:
    import uvicorn

    from ranet_serve.api.app import create_app
    from ranet_serve.api.http_protocol import CoalescingHttpToolsProtocol
    from ranet_serve.engine.remote import RemoteEngine
    from ranet_serve.heap import freeze_heap
    from ranet_serve.metrics import RequestMetrics

    (run_dir / f"frontend-{os.getpid()}.pid").write_text(f"{os.getpid()}\n")  # for operators and tests
    engine = RemoteEngine(run_dir, settings.shared_memory_mib << 20)
    app = create_app(settings, engine=engine, request_metrics=RequestMetrics(), grpc_reuse_port=True)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
        log_config=None,
        access_log=False,
        # X-Forwarded-* rewriting cost 8% of a front-end's time per request (py-spy), and the admin
        # routes trust the socket's client address (the loopback rule in api/auth.py): rewriting it from
        # X-Forwarded-For would let a remote request pass as local.
        proxy_headers=False,
        http=CoalescingHttpToolsProtocol,
    )
    freeze_heap()  # imports and app: a full collection would stop the event loop (ranet_serve.heap)
    uvicorn.Server(config).run(sockets=[sock])


def run_engine(settings: Settings, run_dir: Path) -> None:
    """Engine process entry point. Imported only in the child: the supervisor never loads torch or
    onnxruntime (it holds 2 MB instead of about 280 MB)."""
    from ranet_serve.engine.process import run_engine as run

    stop_with_parent()
    with last_one_out_removes(run_dir):
        run(settings, run_dir)


@contextmanager
def last_one_out_removes(run_dir: Path) -> Iterator[None]:
    """Around a child's life: if the supervisor died without removing the run directory (SIGKILL, an
    OOM kill), the last of its children to exit removes it, so crash loops do not fill /dev/shm.

    Every child holds a shared `flock` on `alive.lock` while it runs (the kernel drops it with the
    process, however it ends); an orphaned child leaving takes the lock exclusively, which succeeds only
    when no other child holds it, and then removes the directory. A child of a live supervisor leaves
    the directory to it.
    """
    supervisor = os.getppid()
    # uvicorn re-raises the SIGTERM it drained on, once it has put back the handler it found: with the
    # default one the process died there and this block's cleanup never ran.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    lock = os.open(run_dir / ALIVE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield
    finally:
        if os.getppid() != supervisor:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # another child still runs: the last one out removes it
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
        os.close(lock)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the shell's code for death by that signal, cleanup on the way


def stop_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor dies (`PR_SET_PDEATHSIG`), whatever kills it.

    A supervisor killed with SIGKILL (an OOM kill, `kill -9`, a test's cleanup) cannot stop its
    children; without this, front-ends kept serving the port with no engine behind them and no one to
    replace them. SIGTERM lets them drain as on an ordinary stop. The engine also polls its parent
    (`engine.process`), which covers systems without prctl.
    """
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the engine's poll is all there is
        return
    if os.getppid() != parent:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Starts, watches and stops the engine and front-end processes of one server."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.count = frontend_count(settings)
        self.context = multiprocessing.get_context("spawn")
        self.stopping = False
        self.engine: BaseProcess | None = None
        self.frontends: list[BaseProcess] = []

    def run(self) -> None:
        run_dir = _make_run_dir(self.settings.run_dir)
        sock = _bind(self.settings.host, self.settings.port)
        grpc_reservation = _reserve_grpc_port(self.settings)
        try:
            self._run(run_dir, sock)
        finally:
            sock.close()
            if grpc_reservation is not None:
                grpc_reservation.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(self, run_dir: Path, sock: socket.socket) -> None:
        from ranet_serve.engine.shm import STATUS_NAME, StatusBlock

        (run_dir / METRICS_DIR).mkdir()
        StatusBlock(run_dir / STATUS_NAME, create=True)
        previous = {sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGHUP, self._on_hangup)
        host, port = sock.getsockname()[:2]
        logger.info(
            "supervisor %d: %d front-end processes on http://%s:%d%s, one engine process (run dir %s)",
            os.getpid(),
            self.count,
            host,
            port,
            f" and gRPC port {self.settings.grpc_port}" if self.settings.grpc_port else "",
            run_dir,
        )
        self.engine = self._start_engine(run_dir)
        self.frontends = [self._start_frontend(sock, run_dir) for _ in range(self.count)]
        try:
            while not self.stopping:
                processes = [self.engine, *self.frontends]
                wait([p.sentinel for p in processes], timeout=1.0)
                if self.stopping:
                    break
                if not self.engine.is_alive():
                    logger.error(
                        "engine process %s exited (code %s); restarting it",
                        self.engine.pid,
                        self.engine.exitcode,
                    )
                    time.sleep(RESTART_PAUSE_SECONDS)
                    self.engine = self._start_engine(run_dir)
                for index, frontend in enumerate(self.frontends):
                    if not frontend.is_alive():
                        logger.error(
                            "front-end process %s exited (code %s); starting another",
                            frontend.pid,
                            frontend.exitcode,
                        )
                        _forget_frontend(run_dir, frontend.pid)
                        self.frontends[index] = self._start_frontend(sock, run_dir)
        finally:
            sock.close()  # our copy: once the front-ends close theirs, nothing listens any more
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start_engine(self, run_dir: Path) -> BaseProcess:
        process = self.context.Process(target=run_engine, args=(self.settings, run_dir), name="ranet-engine")
        with _environment(MULTIPROC_ENV, None):  # the engine keeps its metrics in memory
            process.start()
        return process

    def _start_frontend(self, sock: socket.socket, run_dir: Path) -> BaseProcess:
        process = self.context.Process(
            target=run_frontend, args=(self.settings, sock, run_dir), name="ranet-frontend"
        )
        with _environment(MULTIPROC_ENV, str(run_dir / METRICS_DIR)):
            process.start()
        return process

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _on_hangup(self, signum: int, frame: Any) -> None:
        if self.engine is not None and self.engine.pid is not None and self.engine.is_alive():
            logger.info("SIGHUP: reloading the model store")
            os.kill(self.engine.pid, signal.SIGHUP)

    def _stop_all(self) -> None:
        """Front-ends first (they finish their requests), then the engine (it drains its queues)."""
        grace = self.settings.graceful_shutdown_seconds + 5.0
        for process in self.frontends:
            _terminate(process)
        for process in self.frontends:
            _join(process, grace)
        if self.engine is not None:
            _terminate(self.engine)
            _join(self.engine, grace)
        logger.info("supervisor %d: every process stopped", os.getpid())


def _terminate(process: BaseProcess) -> None:
    if process.is_alive() and process.pid is not None:
        os.kill(process.pid, signal.SIGTERM)


def _join(process: BaseProcess, timeout: float) -> None:
    process.join(timeout)
    if process.is_alive():
        logger.error("%s %s did not stop within %.0f s; killing it", process.name, process.pid, timeout)
        process.kill()
        process.join(5.0)


def _forget_frontend(run_dir: Path, pid: int | None) -> None:
    """A dead front-end's shared pools go, and its in-flight gauge stops counting."""
    if pid is None:
        return
    for path in (*run_dir.glob(f"pool-{pid}-*"), run_dir / f"frontend-{pid}.pid"):
        path.unlink(missing_ok=True)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(run_dir / METRICS_DIR))


def _make_run_dir(wanted: Path | None) -> Path:
    if wanted is not None:
        wanted.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="ranet-serve-", dir=wanted))
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="ranet-serve-", dir=parent))


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here (not by uvicorn) so a taken port or unknown host ends the
    command with one line naming the setting, in every process layout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen on {host} port {port} ({exc.strerror}); set RANET_HOST / RANET_PORT "
            "(ranet serve --host / --port)"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _reserve_grpc_port(settings: Settings) -> socket.socket | None:
    """Hold the gRPC port for the server's life: bound with SO_REUSEPORT but not listening.

    grpc cannot serve an inherited listening socket, so each front-end binds the port itself with
    SO_REUSEPORT and the kernel spreads connections over them. A socket that only binds takes no
    connections, but a port already taken by another program fails here, once, with a clear message,
    instead of in every front-end as it is (re)started; and the port stays ours while a front-end is
    being replaced.
    """
    if not settings.grpc_port:
        return None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    try:
        # First without SO_REUSEPORT: another server of the same user that holds the port with it
        # would otherwise let this bind succeed and share the port, taking part of its connections.
        # (SO_REUSEADDR lets it past connections of a stopped server still in TIME_WAIT, not a listener.)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((settings.host, settings.grpc_port))
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((settings.host, settings.grpc_port))
    except OSError as exc:
        reservation.close()
        raise SystemExit(
            f"cannot use port {settings.grpc_port} for gRPC on {settings.host} ({exc.strerror}); "
            "set RANET_GRPC_PORT (ranet serve --grpc-port), or 0 to serve without gRPC"
        ) from exc
    return reservation


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """Set (or unset) one variable while a child process is spawned: it inherits the environment."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
