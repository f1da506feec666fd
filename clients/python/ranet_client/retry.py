"""When to send a request again and how long to wait first.

Only failures that say "not now" are retried: 429 and 503 answers (the server's bounded queue is full
or it is still loading) and failures to connect. Every classify call is side-effect free, so resending
is safe. Waits grow exponentially with jitter so many clients that failed together do not come back
together; a server's Retry-After is a floor, never shortened, and a Retry-After beyond
`max_retry_after` ends the retries instead of blocking the caller for longer than it allowed.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass, field

from ranet_client.errors import ConnectionFailedError, RanetError, RequestTimeoutError


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    `max_attempts` counts every send (1 = never retry). The n-th retry (n = 0, 1, ...) waits
    `min(backoff_max, backoff_initial * backoff_multiplier**n)`, minus up to `jitter` of it at random;
    when the server sent Retry-After, the wait is that many seconds plus up to `jitter` of the backoff.
    """

    max_attempts: int = 4
    backoff_initial: float = 0.1
    backoff_multiplier: float = 2.0
    backoff_max: float = 5.0
    jitter: float = 0.5
    max_retry_after: float = 30.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    retry_connection_errors: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("backoff times must not be negative")

    @classmethod
    def never(cls) -> RetryPolicy:
        """Send once; report every failure (what a load test wants: it counts 429s, not hides them)."""
        return cls(max_attempts=1)

    def backoff(self, retry: int) -> float:
        """The un-jittered wait before the `retry`-th retry (0-based)."""
        return min(self.backoff_max, self.backoff_initial * self.backoff_multiplier**retry)

    def is_retryable(self, error: RanetError) -> bool:
        if isinstance(error, ConnectionFailedError):
            return self.retry_connection_errors
        if isinstance(error, RequestTimeoutError):
            return False  # the server may still be working on it; resending would double the load
        return error.status in self.retry_statuses

    def delay(self, attempt: int, error: RanetError, rng: random.Random) -> float | None:
        """Seconds to wait before sending again after `attempt` sends failed with `error`; None: give up."""
        if attempt >= self.max_attempts or not self.is_retryable(error):
            return None
        backoff = self.backoff(attempt - 1)
        if error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            return error.retry_after + rng.uniform(0.0, self.jitter * backoff)
        return backoff * (1.0 - self.jitter * rng.random())


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
