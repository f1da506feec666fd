"""Anytime prediction over Server-Sent Events: `POST /v1/classify` with `stream=true` or
`Accept: text/event-stream`.

RANet's first setting is anytime prediction: a prediction is available at every exit, and a later
one is (usually) better. A streamed request gets one `exit` event per exit each image passes, in
order, each with the v1 result fields plus `image` (its index in the request) and `final` (true on
the exit that answers it); the first event of an image leaves as soon as its first exit is computed.
A `done` event (model, version, operating point, timings) closes a stream that succeeded; an `error`
event (the v1 error document plus its HTTP `status`) closes one that failed after it had started.
Errors found before the first exit (bad input, unknown model, shed) are ordinary JSON answers.

A client that closes the stream withdraws its request: its images stop at their next stage boundary
(`ranet_cancelled_total{where="cascade"}`) and its request counts as 499.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping

from starlette.requests import Request
from starlette.responses import StreamingResponse

from ranet_serve.api.errors import error_body, status_for
from ranet_serve.api.knobs import parse_flag
from ranet_serve.api.service import ClassifyResult, ExitUpdate, RequestTracking
from ranet_serve.api.v1.codec import dump_json, image_fields, timings
from ranet_serve.errors import RanetServeError

EVENT_STREAM = "text/event-stream"
STREAM_PARAMETER = "stream"  # a v1 protocol parameter beside the knobs
# Proxies must pass each event on as it comes (nginx buffers responses unless told otherwise).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Update = ExitUpdate | ClassifyResult


def wants_stream(request: Request, parameters: MutableMapping[str, object]) -> bool:
    """Whether to stream: a `stream` parameter (query, form field or JSON key; taken out of
    `parameters`) decides; without one, an Accept header that names text/event-stream does."""
    given = parameters.pop(STREAM_PARAMETER, None)
    if given is not None:
        return parse_flag(given, STREAM_PARAMETER)
    return EVENT_STREAM in request.headers.get("accept", "")


def stream_response(
    first: Update, updates: AsyncGenerator[Update, None], tracking: RequestTracking, path: str
) -> StreamingResponse:
    """The response that sends `first` and then the rest of `updates` as events; it ends `tracking`."""
    tracking.hand_over()
    return StreamingResponse(
        _events(first, updates, tracking, path), media_type=EVENT_STREAM, headers=STREAM_HEADERS
    )


async def _events(
    first: Update, updates: AsyncGenerator[Update, None], tracking: RequestTracking, path: str
) -> AsyncIterator[bytes]:
    ended: BaseException | None = None
    try:
        update = first
        while not isinstance(update, ClassifyResult):
            yield exit_event(update)
            update = await anext(updates)
        yield done_event(update)
    except Exception as exc:  # the stream has started: the error travels as its last event
        ended = exc
        yield error_event(exc, path)
    except BaseException as exc:  # the client left (cancelled, or the generator closed)
        ended = exc
        raise
    finally:
        await updates.aclose()  # withdraws the request from the engine if it is still running
        tracking.finish(ended)


def exit_event(update: ExitUpdate) -> bytes:
    fields = image_fields(update.result, update.labels)
    fields["image"] = update.image
    fields["final"] = update.final
    return b"event: exit\ndata: " + dump_json(fields) + b"\n\n"


def done_event(result: ClassifyResult) -> bytes:
    document = {
        "model": result.model,
        "version": result.version,
        "operating_point": result.operating_point,
        "timings": timings(result),
    }
    return b"event: done\ndata: " + dump_json(document) + b"\n\n"


def error_event(exc: Exception, path: str) -> bytes:
    status = status_for(exc)
    if isinstance(exc, RanetServeError):
        body = error_body(path, exc.code, exc.message)
    else:
        body = error_body(path, "internal_error", "internal error while streaming")
    body["status"] = status
    return b"event: error\ndata: " + dump_json(body) + b"\n\n"
