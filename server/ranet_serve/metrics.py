"""Prometheus metrics, in registries of their own (two servers in one process never collide).

Two sets, because they live in different processes when the engine runs in its own:
- `EngineMetrics` (the engine: the schedulers' observers on their worker threads, the registry):
  exits, per-exit latency and confidence, FLOPs spent and saved, stage timings and batch sizes, queue
  wait, loaded models, the operating point, exit agreement.
- `RequestMetrics` (each front-end, on its event loop): status, duration, in-flight count, rejections.
  With several front-end processes these are kept in prometheus_client's multiprocess files, and
  `/metrics` on any front-end shows every front-end's requests beside the engine's own set (fetched
  from the engine), so a scrape sees one coherent set whichever process answers it.

Every label is bounded: model names come from the store, `status` is an HTTP code, `protocol` is
http or grpc, `exit` and `stage` are small integers, `reason` is an error code; nothing
request-supplied becomes a label. A gRPC request's `status` is the HTTP status the same error answers
over HTTP (`api.errors` maps each domain error to both), so error-ratio panels and alerts cover both
protocols without knowing gRPC's codes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ranet_serve.cascade.results import BatchResult
from ranet_serve.export.manifest import Manifest

# From 0.5 ms: a tiny model's stage takes well under the client library's smallest 5 ms bucket.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# 1-2-5 steps from 100 kFLOPs (tiny CIFAR exits) to 100 GFLOPs (beyond ImageNet RANets).
FLOPS_BUCKETS = (*(m * 10.0**e for e in range(5, 11) for m in (1, 2, 5)), 1e11)

UNKNOWN_MODEL = "unknown"
PROTOCOLS = ("http", "grpc")  # the `protocol` label of the per-request series
UNSERVED_STATUSES = (401, 429)  # answered without being served: not in the latency histogram


def model_label(name: str, is_known: Callable[[str], bool]) -> str:
    """`name` as a `model` label: itself when the store has it, else "unknown". Names come from
    request paths, so anything else would let any client add label values without bound."""
    return name if is_known(name) else UNKNOWN_MODEL


SAVED_RATIO_HALF_LIFE_IMAGES = 1024


class RequestMetrics:
    """Per inference request, counted by the front-end that answered it."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ranet_requests_total",
            "Inference requests by final HTTP status (gRPC: the HTTP status of the same error) and protocol.",
            ["model", "status", "protocol"],
            registry=r,
        )
        self.request_duration = Histogram(
            "ranet_request_duration_seconds",
            "Inference request time from arrival to answer, decoding included.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # livesum: with several front-end processes, the in-flight count is the sum of the live ones.
        self.inflight = Gauge(
            "ranet_inflight_requests",
            "Inference requests being served.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "ranet_rejected_total",
            "Inference requests answered with an error, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self._children: dict[tuple[str, int, str], tuple[Counter, Histogram | None]] = {}
        self._inflight_children: dict[str, Gauge] = {}

    def request_finished(
        self, model: str, status: int, seconds: float, reason: str | None = None, protocol: str = "http"
    ) -> None:
        """Count an answered request. Shed (429) and refused (401) requests stay out of the latency
        histogram: a flood of instant 429s would otherwise pull the p99 down exactly when the server is
        overloaded, and the latency panels, alerts and objective describe requests that were served."""
        count, duration = self._finished_children(model, status, protocol)
        count.inc()
        if duration is not None:
            duration.observe(seconds)
        if reason is not None:
            self.rejected.labels(model, reason).inc()

    def inflight_child(self, model: str) -> Gauge:
        """The in-flight gauge of `model`, looked up once per label (every request touches it twice)."""
        child = self._inflight_children.get(model)
        if child is None:
            child = self._inflight_children[model] = self.inflight.labels(model)
        return child

    def _finished_children(self, model: str, status: int, protocol: str) -> tuple[Counter, Histogram | None]:
        """The counter and histogram children of (model, status, protocol), looked up once: `labels()`
        takes a lock and builds a key on every call. Bounded, as the labels are (known models, our
        statuses, two protocols)."""
        key = (model, status, protocol)
        children = self._children.get(key)
        if children is None:
            duration = None if status in UNSERVED_STATUSES else self.request_duration.labels(model, protocol)
            children = self._children[key] = (self.requests.labels(model, str(status), protocol), duration)
        return children

    def request_refused(self, model: str, status: int, reason: str, protocol: str = "http") -> None:
        """An inference request answered before it was served (bad credentials): counted by status and
        reason, but not in the latency histogram, which describes requests that were served."""
        self.requests.labels(model, str(status), protocol).inc()
        self.rejected.labels(model, reason).inc()


class EngineMetrics:
    """Per batch and per model, recorded where the batches run."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.queue_duration = Histogram(
            "ranet_queue_duration_seconds",
            "Time a request waited in the batcher's queue.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "ranet_stage_duration_seconds",
            "Time one stage took on one batch.",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.exits = Counter(
            "ranet_exit_total",
            "Images answered by each exit (the exit distribution).",
            ["model", "exit"],
            registry=r,
        )
        self.exit_latency = Histogram(
            "ranet_exit_latency_seconds",
            "Time from the start of a batch to an image leaving at this exit.",
            ["model", "exit"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.exit_confidence = Histogram(
            "ranet_exit_confidence",
            "Softmax confidence of the images answered by each exit.",
            ["model", "exit"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.flops_per_image = Histogram(
            "ranet_flops_per_image",
            "FLOPs spent on each image.",
            ["model"],
            buckets=FLOPS_BUCKETS,
            registry=r,
        )
        self.flops = Counter("ranet_flops_total", "FLOPs spent on all images.", ["model"], registry=r)
        self.full_depth_flops = Counter(
            "ranet_full_depth_flops_total",
            "FLOPs the same images would have cost at the last exit.",
            ["model"],
            registry=r,
        )
        self.flops_saved_ratio = Gauge(
            "ranet_flops_saved_ratio",
            "Share of FLOPs saved versus running every image to the last exit, over the recent images.",
            ["model"],
            registry=r,
        )
        self.budget_limited = Counter(
            "ranet_budget_limited_total",
            "Images whose FLOPs cap stopped the cascade before they were confident.",
            ["model"],
            registry=r,
        )
        self.cancelled = Counter(
            "ranet_cancelled_total",
            "Requests withdrawn by their caller (client gone, stream closed, deadline) before their "
            "answer: where='queue' never ran, where='cascade' had its images dropped mid-cascade.",
            ["model", "where"],
            registry=r,
        )
        self.deadline_limited = Counter(
            "ranet_deadline_limited_total",
            "Images answered with their deepest exit so far as their deadline passed (on_deadline=best).",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "ranet_batch_size",
            "Images each stage ran on.",
            ["model", "stage"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "ranet_model_info",
            "1 for every model version loaded and ready.",
            ["model", "version", "config", "exits"],
            registry=r,
        )
        self.images = Counter("ranet_images_total", "Images classified.", ["model"], registry=r)
        self.operating_point = Gauge(
            "ranet_operating_point",
            "Expected FLOPs per image of the operating point a request without knobs gets.",
            ["model"],
            registry=r,
        )
        self.exit_agreement = Gauge(
            "ranet_exit_agreement_ratio",
            "Share of sampled early-exited images whose class matches the last exit's (idle-time check).",
            ["model", "exit"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._spent: dict[str, tuple[float, float]] = {}  # model -> (flops, full-depth flops)
        self._agreement: dict[tuple[str, int], tuple[int, int]] = {}  # (model, exit) -> (agreed, checked)

    # -- models --------------------------------------------------------------------------------

    def set_models(self, served: Iterable[tuple[Manifest, float]]) -> None:
        """Publish the ready model versions (manifest, default point's expected FLOPs per image).

        Called after every (re)load; label sets of versions no longer served disappear.
        """
        self.model_info.clear()
        self.operating_point.clear()
        for manifest, expected_flops in served:
            exits = len(manifest.exits)
            self.model_info.labels(manifest.name, manifest.version, manifest.config.name, str(exits)).set(1)
            self.operating_point.labels(manifest.name).set(expected_flops)
            # Create every bounded series up front so dashboards show zeros rather than gaps.
            for k in range(exits):
                self.exits.labels(manifest.name, str(k))
                self.stage_duration.labels(manifest.name, str(k))
                self.batch_size.labels(manifest.name, str(k))
            for metric in (self.flops, self.full_depth_flops, self.budget_limited, self.images):
                metric.labels(manifest.name)

    # -- per batch (worker thread) ----------------------------------------------------------------

    def agreement_observer(self, model: str) -> Callable[[int, bool], None]:
        """The AgreementMonitor observer for one model: updates the per-exit agreement ratio."""

        def observe(exit_index: int, agreed: bool) -> None:
            with self._lock:
                hits, checked = self._agreement.get((model, exit_index), (0, 0))
                hits, checked = hits + int(agreed), checked + 1
                self._agreement[(model, exit_index)] = (hits, checked)
            self.exit_agreement.labels(model, str(exit_index)).set(hits / checked)

        return observe

    def batch_observer(self, model: str, full_depth_flops: int) -> Callable[[BatchResult], None]:
        """The Batcher observer for one model: records a finished batch."""

        def observe(result: BatchResult) -> None:
            self.observe_batch(model, full_depth_flops, result)

        return observe

    def observe_batch(self, model: str, full_depth_flops: int, result: BatchResult) -> None:
        for stage, (seconds, size) in enumerate(
            zip(result.stage_seconds, result.stage_batch_sizes, strict=True)
        ):
            if size > 0:
                self.stage_duration.labels(model, str(stage)).observe(seconds)
                self.batch_size.labels(model, str(stage)).observe(size)
        spent = 0.0
        limited = 0
        for image in result.images:
            exit_label = str(image.exit)
            self.exits.labels(model, exit_label).inc()
            self.exit_latency.labels(model, exit_label).observe(image.seconds)
            if math.isfinite(image.confidence):
                self.exit_confidence.labels(model, exit_label).observe(image.confidence)
            self.flops_per_image.labels(model).observe(image.flops)
            spent += image.flops
            limited += int(image.budget_limited)
        count = len(result.images)
        full = float(full_depth_flops * count)
        self.images.labels(model).inc(count)
        self.flops.labels(model).inc(spent)
        self.full_depth_flops.labels(model).inc(full)
        if limited:
            self.budget_limited.labels(model).inc(limited)
        with self._lock:
            # Exponentially decayed sums: the ratio follows the recent images (half-life
            # SAVED_RATIO_HALF_LIFE_IMAGES), not everything since start; the counters keep the totals.
            decay = 0.5 ** (count / SAVED_RATIO_HALF_LIFE_IMAGES)
            total_spent, total_full = self._spent.get(model, (0.0, 0.0))
            total_spent, total_full = total_spent * decay + spent, total_full * decay + full
            self._spent[model] = (total_spent, total_full)
        if total_full > 0:
            self.flops_saved_ratio.labels(model).set(1.0 - total_spent / total_full)

    # -- per request (where the request completes) ----------------------------------------------

    def queued(self, model: str, seconds: float) -> None:
        self.queue_duration.labels(model).observe(seconds)
