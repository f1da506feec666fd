"""Server settings: environment variables with the `RANET_` prefix, overridable by `ranet serve` options.

Nothing reads settings at import time: `create_app(settings)` receives them, and `get_settings` is the
cached default for the command line and for FastAPI dependencies.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ranet_serve.cascade.threads import SINGLE_THREAD_BELOW

MIB = 1 << 20


class Settings(BaseSettings):
    """Every knob of the server; the defaults serve `model_store/` on loopback."""

    model_config = SettingsConfigDict(env_prefix="RANET_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    model_store: Path = Path("model_store")
    default_model: str = Field("ranet-fmnist", description="served by POST /v1/classify")

    frontends: int = Field(
        0,
        ge=0,
        le=256,
        description="front-end processes sharing the port (HTTP parsing, decoding, encoding); 0: one per "
        "CPU core",
    )
    engine_process: bool = Field(
        True,
        description="run the engine (schedulers and stage runtimes) in a process of its own, batching "
        "across every front-end; false serves from one process (needs frontends 0 or 1)",
    )
    shared_memory_mib: int = Field(
        16,
        ge=0,
        description="per front-end process: shared memory for images on their way to the engine (a "
        "request that finds it full sends its pixels in the message instead)",
    )
    run_dir: Path | None = Field(
        None,
        description="where the processes of one server meet (socket, shared memory, metrics files); a "
        "fresh directory in /dev/shm (or the temp directory) when unset",
    )

    backend: Literal["onnxruntime", "torchscript", "eager"] = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="intra-op threads per runtime; 0 lets the runtime choose")
    single_thread_below: int = Field(
        SINGLE_THREAD_BELOW,
        ge=0,
        description="onnxruntime on the CPU runs batches smaller than this single-threaded, on a second "
        "set of stage sessions (faster for small batches on few cores; 0 or 1 turns it off)",
    )

    max_batch_size: int = Field(32, ge=1, le=4096)
    max_queue_delay_ms: float = Field(2.0, ge=0.0, le=10_000.0)
    batch_close_when_idle: bool = Field(
        True,
        description="close a batch before max_queue_delay_ms when nothing is queued and no request is "
        "being decoded (no waiting for requests that do not exist)",
    )
    max_queue_size: int = Field(256, ge=1, description="requests waiting per model version before 429")
    rebatch: bool = Field(
        True, description="park each stage's survivors and run them with other batches' survivors"
    )
    rebatch_delay_ms: float = Field(
        2.0, ge=0.0, le=10_000.0, description="longest a parked survivor waits for company (when busy)"
    )
    # The batcher's queue only bounds work that reached it; when reading, parsing and decoding are the
    # bottleneck (small models on CPU), requests pile up before it and latency grows without bound.
    max_inflight_requests: int = Field(
        256,
        ge=1,
        description="inference requests in the server at once (reading, decoding, queued, running); "
        "beyond it 429 before the body is read",
    )
    hold_early_retries: bool = Field(
        True,
        description="a request back on a connection sooner than the Retry-After its last 429 gave, and "
        "shed again, gets its 429 only when that Retry-After is over (closed-loop clients that ignore "
        "Retry-After cannot take the CPU admitted requests need; a request that finds room is admitted "
        "at once); turn off behind a proxy that sends many clients' requests over shared upstream "
        "connections",
    )
    agreement_sample_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="share of early-exited images re-run to the last exit in idle time"
    )
    default_operating_point: str | None = Field(
        None, description="overrides each bundle's calibrated default where the bundle has this point"
    )
    slo_p99_ms: float | None = Field(
        None,
        gt=0.0,
        description="latency objective: when set, the default operating point moves to cheaper calibrated "
        "points while the recent p99 threatens it and back (up to the default) when load falls",
    )
    slo_window_s: float = Field(2.0, gt=0.0, description="how far back the p99 of the objective looks")
    slo_dwell_s: float = Field(
        0.5, ge=0.0, description="minimum time between two moves (4x that before a move up)"
    )

    inline_decode_max_pixels: int = Field(
        128 * 128,
        ge=0,
        description="requests whose images declare at most this many pixels in all (and at most 64 KiB "
        "encoded) are decoded on the event loop, which is cheaper than a worker thread for small images; "
        "0 decodes every request in a worker thread",
    )
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="request bodies beyond this answer 413")
    max_image_bytes: int = Field(8 * MIB, ge=64, description="one encoded image beyond this answers 413")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="decoded pixels per image (decompression-bomb guard)"
    )
    max_images_per_request: int = Field(64, ge=1)
    request_timeout_ms: float = Field(
        30_000.0, gt=0.0, description="deadline of a request that sets no deadline_ms"
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0.0, description="a request body still arriving after this answers 408 (slow clients)"
    )

    warmup: bool = Field(True, description="run a batch through every stage before a bundle is ready")
    verify_checksums: bool = Field(True, description="check every bundle file's SHA-256 on load")
    graceful_shutdown_seconds: float = Field(30.0, gt=0.0, description="how long shutdown drains")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # Off by default (the server binds to loopback); a blank value counts as unset, so a compose file
    # that passes `RANET_API_KEY: ${RANET_API_KEY:-}` through does not enable a key nobody can send.
    api_key: SecretStr | None = Field(
        None, description="bearer token required for inference and model metadata (unset: open)"
    )
    admin_api_key: SecretStr | None = Field(
        None, description="bearer token required for /v1/admin (unset: the api_key, if any)"
    )

    @field_validator("api_key", "admin_api_key", mode="after")
    @classmethod
    def _blank_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @property
    def effective_admin_key(self) -> SecretStr | None:
        """The token admin routes require: their own, else the inference key, else none."""
        return self.admin_api_key or self.api_key


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached: the environment is read once)."""
    return Settings()
