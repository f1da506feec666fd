"""Configuration and request preparation common to `RanetClient` and `AsyncRanetClient`."""

from __future__ import annotations

import random
from collections.abc import Sequence

import httpx

from ranet_client._protocol import DEFAULT_URL, ENCODINGS, Encoding, Prepared, normalize_url, prepare_classify
from ranet_client.budget import FlopsValue, Knobs, OnDeadline
from ranet_client.images import ImageInput, encode_images
from ranet_client.retry import RetryPolicy

USER_AGENT = "ranet-client/0.1"


def default_headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    """Headers sent with every request: the user agent, the bearer token if any, then the caller's own.

    The token goes in `Authorization: Bearer`, which the server checks when it has an API key; an
    explicit `Authorization` in `headers` wins, for servers behind a gateway with its own scheme.
    """
    base = {"User-Agent": USER_AGENT}
    if api_key:
        base["Authorization"] = f"Bearer {api_key}"
    return {**base, **(headers or {})}


def _retry_policy(retry: RetryPolicy | int | None) -> RetryPolicy:
    if retry is None:
        return RetryPolicy()
    if isinstance(retry, RetryPolicy):
        return retry
    return RetryPolicy(max_attempts=int(retry))


class ClientBase:
    """Shared settings: where the server is, which model and encoding by default, timeouts, retries.

    `url`: the server's base URL. `model`: the model `classify` uses when a call names none (None: the
    server's default model; stored as `default_model`, since `model()` is a method). `timeout`: seconds
    per attempt, or an `httpx.Timeout`. `retry`: a `RetryPolicy`, or an int for the number of attempts
    (1 disables retries). `encoding`: "multipart", "json" or "raw". `rng`: the jitter's random source
    (seed it for reproducible waits).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | int | None = None,
        encoding: Encoding = "multipart",
        rng: random.Random | None = None,
    ):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
        self.url = normalize_url(url)
        self.default_model = model
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retry = _retry_policy(retry)
        self.encoding: Encoding = encoding
        self.rng = rng or random.Random()

    def _prepare_classify(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        *,
        model: str | None,
        encoding: Encoding | None,
        max_flops: FlopsValue | None,
        target_flops: FlopsValue | None,
        confidence: float | None,
        thresholds: Sequence[float] | str | None,
        operating_point: str | None,
        top_k: int | None,
        version: str | None,
        deadline_ms: float | None,
        on_deadline: OnDeadline | None = None,
        stream: bool = False,
    ) -> Prepared:
        knobs = Knobs(
            max_flops=max_flops,
            target_flops=target_flops,
            confidence=confidence,
            thresholds=thresholds,
            operating_point=operating_point,
            top_k=top_k,
            version=version,
            deadline_ms=deadline_ms,
            on_deadline=on_deadline,
        )
        chosen_model = model or self.default_model
        return prepare_classify(
            encode_images(images), knobs, chosen_model, encoding or self.encoding, stream=stream
        )
