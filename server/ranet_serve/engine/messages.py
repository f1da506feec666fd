"""The messages between front-end processes and the engine process: small typed records (msgspec).

Pixels never travel in these messages when they fit the front-end's shared-memory page pool
(`engine.shm`): an `ImageRef` names the pool and the pages, and the engine copies the rows out. Only
when the pool is full does a request carry its float32 bytes inline (`ImageRef.data`), which is
slower but never fails. Nothing here is pickled: msgpack with a fixed schema, so a message cannot
construct arbitrary objects in the engine.

Front-end -> engine: `Infer`, `Cancel`, `Reload`, `Shed`, `MetricsRequest`, and the repository
extension's `IndexRequest`, `LoadModel`, `UnloadModel`.
Engine -> front-end: `Catalog` (on connect and after every change of what is served), `Answer`,
`Failure`, `Reloaded` (also the answer to `LoadModel` and `UnloadModel`), `MetricsText`,
`RepositoryIndex`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ranet_serve.cascade.results import ImageResult
from ranet_serve.engine.records import EngineRequest, RepositoryEntry


class ImageRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a request's float32 [N, C, H, W] images are: pages of a shared pool, or inline bytes."""

    shape: tuple[int, ...]
    pool: str | None = None
    pages: tuple[int, ...] = ()
    data: bytes | None = None


class Infer(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The engine's own request record travels as it is (msgspec encodes dataclasses and rebuilds them
    by type); its `received` and `deadline` are CLOCK_MONOTONIC values, the same in every process."""

    id: int
    request: EngineRequest
    images: ImageRef


class Cancel(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The front-end stopped waiting (client gone, deadline): skip the request if it has not started."""

    id: int


class Reload(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int


class Shed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Requests for `model` the front-end's admission gate shed since its last notice (load signal)."""

    model: str
    count: int


class MetricsRequest(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int


class CatalogVersion(msgspec.Struct, frozen=True, array_like=True):
    name: str
    version: str
    state: str  # "ready" | "failed"
    manifest_json: bytes | None = None
    device: str = ""
    default_point: str | None = None
    error: str | None = None


class Catalog(msgspec.Struct, frozen=True, tag=True, array_like=True):
    loaded: bool
    closed: bool
    versions: tuple[CatalogVersion, ...]
    unloaded: tuple[str, ...] = ()  # models the repository API unloaded


class Answer(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int
    model: str
    version: str
    operating_point: str
    images: tuple[ImageResult, ...]
    queue_seconds: float
    inference_seconds: float


class Exited(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """An image of a streamed request passed an exit (`final`: the one that answers it). Sent before
    the request's `Answer`, in the order the exits happened."""

    id: int
    image: int
    result: ImageResult
    final: bool


class Failure(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A domain error raised in the engine, rebuilt in the front-end by class name."""

    id: int
    error: str  # the RanetServeError subclass's name
    message: str
    details: dict[str, Any] = {}


class Reloaded(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int
    loaded: tuple[str, ...]
    kept: tuple[str, ...]
    failed: tuple[str, ...]
    removed: tuple[str, ...]


class MetricsText(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int
    text: bytes


class IndexRequest(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int


class LoadModel(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int
    name: str


class UnloadModel(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int
    name: str


class RepositoryIndex(msgspec.Struct, frozen=True, tag=True, array_like=True):
    id: int
    entries: tuple[RepositoryEntry, ...]


ToEngine = Infer | Cancel | Reload | Shed | MetricsRequest | IndexRequest | LoadModel | UnloadModel
ToFrontend = Catalog | Answer | Exited | Failure | Reloaded | MetricsText | RepositoryIndex

encoder = msgspec.msgpack.Encoder()
to_engine = msgspec.msgpack.Decoder(ToEngine)
to_frontend = msgspec.msgpack.Decoder(ToFrontend)
