"""Admission control in front of the app: inference requests beyond `max_inflight_requests` get 429.

Why here and not only in the batcher: the batcher's bounded queue bounds work that reached it, but on a
small CPU model reading, parsing and decoding requests are the bottleneck, so under overload requests
pile up before they ever reach the queue, and latency grows without bound while nothing is shed. This
gate counts inference requests from the moment the app sees them until their answer is sent, and
sheds the excess before routing, dependencies or the body: a pure ASGI answer from pre-encoded bytes,
so rejecting costs a small fraction of serving. Shedding through the whole FastAPI stack costs nearly
as much as a real request, and at 2-4x overload the server would spend its time saying no (goodput
collapse). The answer has the same JSON shape, status and `Retry-After` as the batcher's 429.

Admitted requests whose client disconnects after sending the body are cancelled: a queued request is
then skipped by the batcher instead of computed for nobody (Starlette does not cancel handlers when the
client goes away). Clients that time out and leave are common under overload, so this keeps capacity
for the ones still waiting.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ranet_serve.api.errors import error_body
from ranet_serve.api.metrics import ServerMetrics, model_label
from ranet_serve.api.store import ModelStore
from ranet_serve.errors import OVERLOAD_REASONS

REASON = OVERLOAD_REASONS[1]  # "inflight_limit"
RETRY_AFTER_SECONDS = 1
# The inference routes (v1 default model, v1 named model, v2 with or without a version).
_INFERENCE = re.compile(
    r"^/v1/classify$|^/v1/models/([^/]+)/classify$|^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$"
)


def inference_model(method: str, path: str) -> tuple[bool, str | None]:
    """Whether `method path` is an inference request, and the model its path names (None: default)."""
    match = _INFERENCE.match(path) if method == "POST" else None
    if match is None:
        return False, None
    return True, match.group(1) or match.group(2)


class AdmissionGate:
    """Pure ASGI middleware; one per app. Runs on the event loop only, so a plain counter suffices."""

    def __init__(
        self, app: ASGIApp, *, limit: int, store: ModelStore, metrics: ServerMetrics, default_model: str
    ):
        self.app = app
        self.limit = limit
        self.store = store
        self.metrics = metrics
        self.default_model = default_model
        self.active = 0
        message = f"too many requests in flight (limit {limit}); retry after {RETRY_AFTER_SECONDS} s"
        details = {"reason": REASON, "limit": limit, "retry_after_seconds": float(RETRY_AFTER_SECONDS)}
        self._bodies = {
            version: json.dumps(error_body(f"/{version}/", "overloaded", message, details=details)).encode()
            for version in ("v1", "v2")
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_inference, model = (
            inference_model(scope["method"], scope["path"]) if scope["type"] == "http" else (False, None)
        )
        if not is_inference:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await self._shed(scope, send, model)
            return
        self.active += 1
        try:
            await self._run_until_disconnect(scope, receive, send)
        finally:
            self.active -= 1

    async def _run_until_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; cancel it if the client disconnects after its body and before its answer.

        Once the body has been received, nobody else reads `receive`, so a watcher waits on it: the
        server reports `http.disconnect` when the connection drops (or when the answer is complete,
        which the wrapped `send` marks first, so a finished request is never cancelled).
        """
        body_received = asyncio.Event()
        answered = False
        disconnected = False

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_received.set()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        app = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))

        async def watch() -> None:
            nonlocal disconnected
            await body_received.wait()
            if app.done():
                return
            message = await receive()
            if message["type"] == "http.disconnect" and not answered and not app.done():
                disconnected = True
                app.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await app
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not disconnected or (task is not None and task.cancelling()):
                raise  # we were cancelled ourselves, not the app for a vanished client
        finally:
            watcher.cancel()

    async def _shed(self, scope: Scope, send: Send, model: str | None) -> None:
        started = time.perf_counter()
        body = self._bodies["v2" if scope["path"].startswith("/v2/") else "v1"]
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        label = model_label(model or self.default_model, self.store.has_model)
        self.metrics.request_finished(label, 429, time.perf_counter() - started, REASON)
