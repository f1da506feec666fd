"""A well-behaved client beside an overload: what a client that honours Retry-After is answered, and how fast.

Why: hey's 400 closed-loop clients resend the moment they are answered, so by Little's law their
latencies add up to 400 client-seconds per second whatever the server does. With about 55 of them
admitted, the other 345 are waiting for 429s: answering those in 5 ms would take 69,000 429s a second,
several times what two cores can parse, answer and resend (measured with holding switched off: about
13,000 429/s, and goodput fell to a tenth of what it is with holding on). So hey's 429 latency measures
the storm, not the server's answer. This probe measures the answer: a few keep-alive connections, each
sending the same request as the storm, waiting the answer's `Retry-After` after a 429 (and a short pause
after a 200), as HTTP asks a client to, and timing every answer. Its traffic is a few requests per
second per connection, too little to change the load.

Runs its own asyncio loop in a thread (the benchmark's main thread is waiting on hey meanwhile), on
`ranet_client.rawhttp`'s pre-encoded requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

from ranet_client.rawhttp import Connection, encode_request

from hey import STEADY_AFTER_S, nearest_rank

PAUSE_AFTER_OK_S = 0.05  # between a 200 and the next request on a connection
DEFAULT_RETRY_AFTER_S = 1.0  # when a 429 names no Retry-After


@dataclass(frozen=True)
class ProbeAnswer:
    status: int
    latency_s: float
    offset_s: float  # from the probe's start


@dataclass
class RetryAfterProbe:
    """`with RetryAfterProbe(url, body, content_type, seconds=15):` probes while the block runs (at most
    `seconds`); `answers` holds every answer, `summary()` its figures."""

    url: str
    body: bytes
    content_type: str
    seconds: float
    connections: int = 32
    answers: list[ProbeAnswer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.hostname is None:
            raise ValueError(f"no host in {self.url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = encode_request(self.host, self.port, "POST", target, self.body, self.content_type)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="probe", daemon=True)

    def __enter__(self) -> RetryAfterProbe:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.seconds + 60)

    async def _run(self) -> None:
        started = time.perf_counter()
        await asyncio.gather(*(self._connection(started, i) for i in range(self.connections)))

    async def _connection(self, started: float, index: int) -> None:
        end = started + self.seconds
        connection: Connection | None = None
        # Staggered over the first Retry-After: connections that start together are shed together and
        # come back together every second after, a herd of their own making that queues each of them
        # behind the others (measured: 48 unstaggered connections, every slowest 429 at the same instant).
        await asyncio.sleep(DEFAULT_RETRY_AFTER_S * index / self.connections)
        try:
            while not self._stop.is_set() and time.perf_counter() < end:
                if connection is None or not connection.reusable:
                    connection = await Connection.open(self.host, self.port)
                sent = time.perf_counter()
                try:
                    answer = await connection.send(self.request)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    connection.close()
                    connection = None
                    continue
                now = time.perf_counter()
                self.answers.append(ProbeAnswer(answer.status, now - sent, sent - started))
                if answer.status == 429:
                    pause = _retry_after(answer.headers.get("retry-after"))
                else:
                    pause = PAUSE_AFTER_OK_S
                await asyncio.sleep(max(0.0, min(pause, end - time.perf_counter())))
        finally:
            if connection is not None:
                connection.close()

    def summary(self) -> dict[str, object]:
        """Counts per status and the p50 / p99 of 429s and of 200s, in ms (None when there were none)."""

        def ms(status: int) -> list[float]:
            return [1000.0 * a.latency_s for a in self.answers if a.status == status]

        statuses: dict[str, int] = {}
        for answer in self.answers:
            statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
        rejected, ok = ms(429), ms(200)
        # Past the first second, as the admitted p99's steady figure: without the burst of the storm's
        # 400 clients all connecting at once.
        steady = [
            1000.0 * a.latency_s for a in self.answers if a.status == 429 and a.offset_s >= STEADY_AFTER_S
        ]
        return {
            "connections": self.connections,
            "status_codes": statuses,
            "rejected_p50_ms": nearest_rank(rejected, 50),
            "rejected_p99_ms": nearest_rank(rejected, 99),
            "rejected_max_ms": max(rejected) if rejected else None,
            "rejected_p99_steady_ms": nearest_rank(steady, 99),
            "ok_p50_ms": nearest_rank(ok, 50),
            "ok_p99_ms": nearest_rank(ok, 99),
            "errors": len(self.errors),
        }


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (the delta-seconds form; the server never sends a date)."""
    try:
        return max(0.0, float(value)) if value is not None else DEFAULT_RETRY_AFTER_S
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
