"""Concurrent large uploads are held in memory: nothing reaches the temporary directory.

The Kubernetes pod runs on a read-only root filesystem with a 64 MiB emptyDir at /tmp
(deploy/k8s/deployment.yaml). Starlette's form parser used to spool every multipart file over 1 MB to
the temp directory, so a handful of concurrent uploads near the 16 MiB body limit could fill /tmp and
fail every request. This test sends uploads near the body limit, several at once, to a live server,
and checks that they are answered properly and that no temporary file was ever created.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import starlette.formparsers

from helpers.bundles import make_store
from helpers.images import png_bytes
from helpers.server import RunningServer, settings_for

BODY_LIMIT = 4 << 20
URL = "/v1/models/tiny/classify"
CONCURRENT = 8


@pytest.fixture(scope="module")
def uploads_server(
    tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    store = make_store(tmp_path_factory.mktemp("uploads"), tiny_bundle_dir)
    settings = settings_for(store, max_body_bytes=BODY_LIMIT, max_image_bytes=BODY_LIMIT)
    running = RunningServer(settings).start()
    yield running
    running.stop()


@pytest.fixture
def watched_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """An empty temp directory for the process, and a record of every temp file or folder created.

    A spooled or unnamed temporary file is unlinked as soon as it is made (O_TMPFILE on Linux), so
    an empty folder afterwards proves nothing by itself: the tempfile entry points are wrapped too.
    """
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    created: list[str] = []
    lock = threading.Lock()

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                created.append(name)
            return real(*args, **kwargs)

        return wrapper

    for name in (
        "SpooledTemporaryFile",
        "TemporaryFile",
        "NamedTemporaryFile",
        "mkstemp",
        "mkdtemp",
        "TemporaryDirectory",
    ):
        monkeypatch.setattr(tempfile, name, spy(name, getattr(tempfile, name)))
    # Starlette's form parser bound its own name at import (what the server used to call).
    monkeypatch.setattr(
        starlette.formparsers,
        "SpooledTemporaryFile",
        spy("starlette SpooledTemporaryFile", starlette.formparsers.SpooledTemporaryFile),
    )
    return folder, created


def multipart_png(size: int, seed: int) -> dict[str, tuple[str, bytes, str]]:
    # Random RGB pixels do not compress: the PNG is about size * size * 3 bytes.
    return {"file": (f"{seed}.png", png_bytes(seed, size=size, mode="RGB"), "image/png")}


def test_concurrent_uploads_near_the_body_limit_never_touch_the_temp_directory(
    uploads_server: RunningServer, watched_tempdir: tuple[Path, list[str]]
) -> None:
    folder, created = watched_tempdir
    near = [multipart_png(1150, seed) for seed in range(CONCURRENT)]  # about 3.97 MB each
    over = [multipart_png(1250, seed) for seed in range(2)]  # about 4.69 MB: past the 4 MiB limit
    assert all(BODY_LIMIT * 0.9 < len(f["file"][1]) < BODY_LIMIT - 4096 for f in near)
    assert all(len(f["file"][1]) > BODY_LIMIT for f in over)
    start = threading.Barrier(len(near) + len(over))

    def send(files: dict[str, tuple[str, bytes, str]]) -> httpx.Response:
        with uploads_server.client() as client:
            start.wait(30)  # every upload in flight at once
            return client.post(URL, files=files)

    with ThreadPoolExecutor(len(near) + len(over)) as pool:
        answers = list(pool.map(send, near + over))

    for response in answers[: len(near)]:
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["exit"] >= 0
    for response in answers[len(near) :]:
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"
    assert created == [], f"temporary files created while serving uploads: {created}"
    assert list(folder.iterdir()) == []
