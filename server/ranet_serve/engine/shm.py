"""Shared memory between the processes of one server: image page pools and the engine's status block.

Files in the server's run directory (on /dev/shm where there is one), mapped by every process that
needs them; the supervisor deletes the directory when the server stops, so a crashed process leaks
nothing.

- `PagePool` (one per front-end process and image size): fixed-size pages, one image each. A
  front-end writes a request's preprocessed images into free pages and sends the engine the page
  numbers; the engine copies the rows out (`PoolReader`) and the pages are freed when the answer
  comes back. A request that finds too few free pages travels inline instead (see
  `engine.messages.ImageRef`).
- `StatusBlock`: a few numbers the engine publishes for the front-ends' admission gates (requests
  queued, seconds of queued work), read without any message.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np

# Names in the run directory.
SOCKET_NAME = "engine.sock"  # the engine's Unix socket
STATUS_NAME = "status"  # the StatusBlock
PID_NAME = "engine.pid"


def _map(path: Path, size: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class PagePool:
    """Pages of `page_floats` float32 values in one shared file; allocation is the front-end's alone."""

    def __init__(self, path: Path, page_floats: int, pages: int):
        self.path = path
        self.page_floats = page_floats
        self.pages = pages
        self._map = _map(path, max(1, page_floats * pages * 4), create=True)
        self._view = np.frombuffer(self._map, dtype=np.float32, count=page_floats * pages).reshape(
            pages, page_floats
        )
        self._free = list(range(pages - 1, -1, -1))

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def put(self, images: np.ndarray) -> tuple[int, ...] | None:
        """Copy `images` [N, ...] float32 into N free pages; None when fewer than N are free."""
        count = images.shape[0]
        if count > len(self._free):
            return None
        pages = tuple(self._free.pop() for _ in range(count))
        self._view[list(pages)] = images.reshape(count, self.page_floats)
        return pages

    def release(self, pages: tuple[int, ...]) -> None:
        self._free.extend(pages)

    def close(self) -> None:
        del self._view
        self._map.close()
        self.path.unlink(missing_ok=True)


class PoolReader:
    """The engine's read-only use of the front-ends' pools, mapped on first use."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._views: dict[str, np.ndarray] = {}

    def take(self, pool: str, pages: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the images in `pages` of `pool`, shaped `shape` (float32)."""
        view = self._views.get(pool)
        if view is None:
            if "/" in pool or pool.startswith("."):
                raise ValueError(f"bad pool name {pool!r}")
            path = self.run_dir / pool
            mapping = _map(path, path.stat().st_size, create=False)
            view = np.frombuffer(mapping, dtype=np.float32)
            self._views[pool] = view
        page_floats = math.prod(shape[1:])
        rows = view.reshape(-1, page_floats)
        return rows[list(pages)].reshape(shape)

    def forget(self, prefix: str) -> None:
        """Drop the mappings of a front-end that went away (its files are deleted by then)."""
        for name in [n for n in self._views if n.startswith(prefix)]:
            del self._views[name]


class StatusBlock:
    """Numbers the engine writes and the front-ends read: [queued requests, queued work in seconds]."""

    QUEUED_REQUESTS = 0
    QUEUED_SECONDS = 1
    SIZE = 4

    def __init__(self, path: Path, create: bool):
        self.path = path
        self._map = _map(path, self.SIZE * 8, create=create)
        self.values = np.frombuffer(self._map, dtype=np.float64, count=self.SIZE)

    @property
    def queued_requests(self) -> float:
        return float(self.values[self.QUEUED_REQUESTS])

    @property
    def queued_seconds(self) -> float:
        return float(self.values[self.QUEUED_SECONDS])

    def publish(self, queued_requests: int, queued_seconds: float) -> None:
        self.values[self.QUEUED_REQUESTS] = queued_requests
        self.values[self.QUEUED_SECONDS] = queued_seconds
