"""Server settings: environment variables with the `RANET_` prefix, overridable by `ranet serve` options.

Nothing reads settings at import time: `create_app(settings)` receives them, and `get_settings` is the
cached default for the command line and for FastAPI dependencies.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ranet_serve.cascade.threads import SINGLE_THREAD_BELOW

# The devices a setting may name (parsed by cascade.devices.parse_device, which imports torch).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"

MIB = 1 << 20


class Settings(BaseSettings):
    """Every knob of the server; the defaults serve `model_store/` on loopback."""

    model_config = SettingsConfigDict(env_prefix="RANET_", extra="ignore", frozen=True)

    host: str = Field(
        "127.0.0.1",
        description="address to listen on: loopback by default; 0.0.0.0 listens on every interface (what a "
        "container needs)",
    )
    port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="TCP port to listen on; every manifest, probe and scrape config of the deployment files "
        "assumes 8080",
    )
    grpc_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="TCP port of the KServe v2 gRPC API (inference.GRPCInferenceService, its repository "
        "RPCs and grpc.health.v1), on the same host; 8081 as KServe; 0 turns gRPC off. Every front-end "
        "process serves it (they share the port through SO_REUSEPORT)",
    )
    model_store: Path = Field(
        Path("model_store"),
        description="folder of bundles, one <model>/<version>/manifest.json each (a relative path starts "
        "from the working directory)",
    )
    default_model: str = Field(
        "ranet-fmnist",
        description="the model POST /v1/classify serves when a request names none (v2 requests always "
        "name theirs); left unset on a store holding exactly one model, that model is the default",
    )

    frontends: int = Field(
        0,
        ge=0,
        le=256,
        description="front-end processes sharing the port: each parses HTTP, decodes and preprocesses "
        "images and encodes answers, and one engine process batches across all of them; 0: the CPUs this "
        "process may use (its affinity, capped by a cgroup CPU quota such as a pod's CPU limit) less the "
        "engine's threads, at least one",
    )
    engine_process: bool = Field(
        True,
        description="run the engine (schedulers and stage runtimes) in a process of its own, batching "
        "across every front-end; false (ranet serve --one-process) serves from one process, front-end and "
        "engine together, for tests and very small deployments (needs RANET_FRONTENDS 0 or 1)",
    )
    shared_memory_mib: int = Field(
        16,
        ge=0,
        description="per front-end process: shared memory (on /dev/shm) for images on their way to the "
        "engine; a request that finds it full sends its pixels in the message instead (slower, never "
        "fails). Docker's default /dev/shm is 64 MiB: keep front-ends x this below it",
    )
    run_dir: Path | None = Field(
        None,
        description="where the processes of one server meet (the engine's Unix socket, shared memory, pid "
        "files, the front-ends' metrics files); a fresh directory in /dev/shm (else the temp directory) "
        "when unset. Removed when the server stops",
    )

    backend: Literal["onnxruntime", "torchscript", "eager"] = Field(
        "onnxruntime",
        description="stage runtime: onnxruntime (fastest on CPU and GPU), torchscript, or eager PyTorch",
    )
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="where the stages run: cpu, cuda (the first visible GPU) or cuda:N; auto picks CUDA "
        "when a GPU is visible and the backend can use it, else the CPU",
    )
    io_binding: Literal["auto", "always"] = Field(
        "auto",
        description="onnxruntime binds torch tensors as stage inputs and outputs: auto on CUDA only; always "
        "on the CPU too, which runs the GPU's binding code where there is no GPU (for tests and diagnosis; "
        "plain numpy calls are cheaper on the CPU)",
    )
    cudnn_conv_search: Literal["exhaustive", "heuristic", "default"] = Field(
        "heuristic",
        description="how onnxruntime's CUDA provider picks a convolution algorithm for each new input "
        "shape: exhaustive times every candidate (fastest kernels, seconds of warm-up over the batch "
        "sizes), heuristic asks cuDNN's heuristics, default takes cuDNN's default algorithm",
    )
    full_depth_graph: Literal["auto", "on", "off"] = Field(
        "auto",
        description="onnxruntime also composes the stages into one graph to the last exit, and runs a batch "
        "on it when none of its images may leave early and none is streamed (confidence=1, the full-depth "
        "point): same answers, without the stage boundaries (bundled model, one thread: 1.5x faster at "
        "batch 1, 1.15x at 16). Its sessions hold another copy of the weights, so auto builds it only "
        "for bundles whose stage files total 64 MiB or less",
    )
    threads: int = Field(
        0,
        ge=0,
        description="intra-op threads of the engine's stage runtimes; 0: a quarter of the CPUs this process "
        "may use, at least one (on this model a second thread saves little time and costs the front-ends "
        "their core: the figures are in the cpus module)",
    )
    single_thread_below: int = Field(
        SINGLE_THREAD_BELOW,
        ge=0,
        description="onnxruntime on the CPU runs batches (and survivor batches) smaller than this on a "
        "second, single-threaded set of stage sessions: on few cores, waking a second thread for every "
        "operator of a small batch costs more than it saves (2 cores, default model at batch 1: 0.81 ms on "
        "one thread, 1.04 ms on two; two win from batch 8). The two sets share the stages' weights; the "
        "second set costs its own working memory only (imagenet-model1, runtime built in a bare process: "
        "0.91-0.94 GB resident with it, 0.85-0.88 GB without) and about 2 s more to load; measure before "
        "keeping it on many cores; 0 or 1 turns it off",
    )

    max_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="largest batch the scheduler forms, in images: larger batches raise throughput under "
        "load and cost latency; on a GPU per-call overhead dominates, so larger is better",
    )
    max_queue_delay_ms: float = Field(
        2.0,
        ge=0.0,
        le=10_000.0,
        description="longest an open batch waits to fill while requests are on their way (queued, or "
        "being decoded); with RANET_BATCH_CLOSE_WHEN_IDLE it closes at once when none are",
    )
    batch_close_when_idle: bool = Field(
        True,
        description="close a batch before RANET_MAX_QUEUE_DELAY_MS when nothing is queued and no request "
        "is being decoded: at low load nobody waits for requests that do not exist (at one client this "
        "halves the latency); false always waits out the delay (fuller batches, more latency)",
    )
    max_queue_size: int = Field(
        256,
        ge=1,
        description="requests waiting per model version; beyond it requests are answered 429 with "
        "Retry-After (reason queue_full). Every front-end reads the engine's queue length before reading "
        "a body, so the bound is global; it bounds memory and tail latency",
    )
    rebatch: bool = Field(
        True,
        description="survivor re-batching: park each stage's survivors and run them with other batches' "
        "survivors, so late stages run at useful batch sizes under load; false runs every batch through "
        "all its stages before the next one",
    )
    rebatch_delay_ms: float = Field(
        2.0,
        ge=0.0,
        le=10_000.0,
        description="longest a parked survivor waits for company while other work is queued (when the "
        "worker has nothing else to do, parked survivors run at once); larger values fill late stages more "
        "at high load and add up to this much latency to images that run past the first exits",
    )
    # The batcher's queue only bounds work that reached it; when reading, parsing and decoding are the
    # bottleneck (small models on CPU), requests pile up before it and latency grows without bound.
    max_inflight_requests: int = Field(
        256,
        ge=1,
        description="ceiling of each front-end's adaptive in-flight limit (requests being read, decoded, "
        "queued or running). The limit needs no tuning: it follows the latency of served requests so "
        "admitted requests wait about a target (half of RANET_SLO_P99_MS when set, else the larger of "
        "50 ms and 4x the engine's shortest recent inference time), and without an objective never "
        "below the front-end's share of two full batches (2 x RANET_MAX_BATCH_SIZE over the front-ends: "
        "shedding below that costs throughput, in smaller batches and shed clients held idle); beyond it "
        "429 with Retry-After (reason inflight_limit) before the body is read",
    )
    hold_early_retries: bool = Field(
        True,
        description="a request back on a connection within 0.25-0.375 s of its last 429 (sooner than the "
        "Retry-After of 1 s), and shed again, gets its 429 only when that while is over; the while "
        "doubles, up to the Retry-After, while the connection keeps coming back early (closed-loop "
        "clients that ignore Retry-After cannot take the CPU admitted requests need; a request that "
        "finds room is admitted at once); turn off behind a proxy that sends many clients' requests over "
        "shared upstream connections",
    )
    agreement_sample_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="share of early-exited images kept (at most 256 pending) and re-run to the last exit "
        "when the worker is idle, feeding ranet_exit_agreement_ratio; never delays a request",
    )
    default_operating_point: str | None = Field(
        None,
        description="the calibrated operating point requests without budget knobs get, instead of each "
        "bundle's own default; a bundle without a point of this name keeps its default (logged)",
    )
    slo_p99_ms: float | None = Field(
        None,
        gt=0.0,
        description="a p99 latency objective per model: the default operating point (requests without "
        "knobs) moves down the calibrated accuracy/FLOPs curve while the recent p99 is above 80% of it, "
        "while requests are shed, while the worker is busy 75% of the time or more, or as soon as a "
        "request arrives behind more queued work than 80% of it; back up (never above the default) while "
        "the p99 is below 50% of it and the dearer point would keep the worker under 40% busy. Queued "
        "requests run at the point of the moment their batch forms; requests with knobs are never moved. "
        "Every move is logged; the current point is ranet_operating_point",
    )
    slo_window_s: float = Field(
        2.0,
        gt=0.0,
        description="how far back the objective's p99 looks (only samples since the last move count)",
    )
    slo_dwell_s: float = Field(
        0.5,
        ge=0.0,
        description="minimum time between two moves of the operating point (4x that before a move up)",
    )

    inline_decode_max_pixels: int = Field(
        128 * 128,
        ge=0,
        description="requests whose images declare at most this many pixels in all (and at most 64 KiB "
        "encoded) are decoded on the event loop, which is cheaper than a worker thread for small images; "
        "0 decodes every request in a worker thread",
    )
    max_body_bytes: int = Field(
        16 * MIB,
        ge=1024,
        description="request bodies beyond this answer 413 (checked while the body streams; compressed "
        "bodies after inflating)",
    )
    max_image_bytes: int = Field(8 * MIB, ge=64, description="one encoded image beyond this answers 413")
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="decoded pixels per image beyond this answer 413, checked from the image header before "
        "any pixel is decoded (decompression bombs cost nothing)",
    )
    max_images_per_request: int = Field(64, ge=1, description="images in one request beyond this answer 413")
    jpeg_draft: bool = Field(
        True,
        description="decode a JPEG whose shorter side is at least 4x the side the model's resize needs "
        "(1024 pixels for the ImageNet 256/224 crop: phone photos) at 1/2, 1/4 or 1/8 scale, keeping at "
        "least twice the pixels the resize needs: a 12 M pixel photo decodes 2-3x faster, the model input "
        "within about a JPEG compression error of a full decode (mean 0.003-0.012 in normalised units); "
        "false decodes every pixel (the input bit-exact with a full decode)",
    )
    request_timeout_ms: float = Field(
        30_000.0,
        gt=0.0,
        description="deadline of a request that sets no deadline_ms; a request not answered by its deadline "
        "answers 504 (deadline_exceeded)",
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="a request body still arriving this long after reading began answers 408 "
        "(request_timeout) and the connection is closed: slow or stalled uploads cannot hold connections",
    )

    warmup: bool = Field(
        True, description="run a batch through every stage before a bundle is ready (no slow first request)"
    )
    verify_checksums: bool = Field(
        True, description="check the SHA-256 of every bundle file the backend reads, on load"
    )
    graceful_shutdown_seconds: float = Field(
        30.0,
        gt=0.0,
        description="on SIGTERM or SIGINT, how long the front-ends finish their requests in flight before "
        "the engine drains its queues and exits",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="the lowest level of log message written"
    )

    # Off by default (the server binds to loopback); a blank value counts as unset, so a compose file
    # that passes `RANET_API_KEY: ${RANET_API_KEY:-}` through does not enable a key nobody can send.
    api_key: SecretStr | None = Field(
        None,
        description="bearer token required for inference and model metadata (unset or blank: open); "
        "ranet serve --api-key-file reads it from a file instead",
    )
    admin_api_key: SecretStr | None = Field(
        None,
        description="bearer token required for /v1/admin (unset: RANET_API_KEY, if any); ranet serve "
        "--admin-api-key-file reads it from a file instead",
    )

    @field_validator("api_key", "admin_api_key", mode="after")
    @classmethod
    def _blank_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @model_validator(mode="after")
    def _one_process_has_one_front_end(self) -> Settings:
        """Several front-ends need the engine in its own process: asking for both is a contradiction,
        refused rather than resolved by ignoring one of them."""
        if not self.engine_process and self.frontends > 1:
            raise ValueError(
                f"RANET_FRONTENDS={self.frontends} needs the engine in its own process; with "
                "RANET_ENGINE_PROCESS=false (--one-process) it must be 0 or 1"
            )
        return self

    @property
    def default_model_explicit(self) -> bool:
        """Whether default_model was set (environment variable or option), not left at its default: only
        then is it the default on a store holding one other model (`Catalog.default_model`)."""
        return "default_model" in self.model_fields_set

    @property
    def effective_admin_key(self) -> SecretStr | None:
        """The token admin routes require: their own, else the inference key, else none."""
        return self.admin_api_key or self.api_key


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached: the environment is read once)."""
    return Settings()
