"""The RPCs of `inference.GRPCInferenceService` and grpc.health.v1, over the HTTP front-end's objects.

Each RPC does what its REST route does, with the same objects: `ModelInfer` checks the bearer token
(metadata `authorization: Bearer <key>`, `RANET_API_KEY`), asks the process's `Admission` (shed with
RESOURCE_EXHAUSTED at the same limits as HTTP's 429), decodes through the v2 codec, calls
`InferenceService.classify` and counts itself with `service.track(model, "grpc")`. Errors answer the
status of `api.errors.GRPC_STATUS_TABLE` with the same message REST gives. The repository RPCs are
admin calls, guarded as `/v1/admin` and `/v2/repository` are (the admin key, else loopback only).

A gRPC deadline (`grpc-timeout`, tritonclient's `client_timeout`) is the request's deadline too: the
shorter of it and `deadline_ms` / Triton's `timeout` parameter applies, so the engine skips a request
nobody waits for any more.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2
from starlette.concurrency import run_in_threadpool

from ranet_serve import __version__
from ranet_serve.api.admission import Admission
from ranet_serve.api.auth import (
    UNAUTHORIZED_REASON,
    AdminDisabledError,
    UnauthorizedError,
    check_authorization,
)
from ranet_serve.api.errors import grpc_status_for, status_for
from ranet_serve.api.grpc.codec import (
    encode_exit_response,
    encode_model_infer,
    model_metadata_response,
    parse_model_infer,
    payload_bytes,
    set_parameter,
)
from ranet_serve.api.grpc.protos import grpc_service_pb2 as pb
from ranet_serve.api.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from ranet_serve.api.service import INLINE_DECODE_MAX_BYTES, ExitUpdate, InferenceService
from ranet_serve.api.v2.codec import V2Input, describe_model
from ranet_serve.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NotReadyError,
    RanetServeError,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "grpc"
# Health service names: "" and the inference service answer readiness (SERVING once a model serves:
# what a Kubernetes gRPC readiness probe asks); "liveness" is SERVING while the process answers (a
# liveness probe must not fail while bundles load).
LIVENESS = "liveness"
READINESS_NAMES = ("", SERVICE_NAME)
EXTENSIONS = ["model_repository"]
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING

R = TypeVar("R")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """One per front-end process; every method runs on its event loop."""

    def __init__(self, service: InferenceService, admission: Admission):
        self.service = service
        self.admission = admission
        self.settings = service.settings
        self.engine = service.engine

    # -- health and metadata (open, as their REST routes are) ---------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.engine.catalog.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def ready() -> pb.ModelReadyResponse:
            try:
                entry = self.engine.catalog.find(request.name, request.version or None)
            except NotReadyError:  # still loading: "is it ready?" has an answer, no
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=entry.ready)

        return await _answer(context, ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="ranet-serve", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def metadata() -> pb.ModelMetadataResponse:
            self._authorize(context)
            document = describe_model(self.engine.catalog, request.name, request.version or None)
            return model_metadata_response(document)

        return await _answer(context, metadata)

    # -- inference --------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        received = time.monotonic()
        model = request.model_name
        try:
            self._authorize(context)
        except UnauthorizedError as exc:  # counted as REST counts its 401s
            label = self.service.model_label(model or None)
            self.service.metrics.request_refused(label, 401, UNAUTHORIZED_REASON, PROTOCOL)
            await _abort(context, exc)
        reason = self.admission.refusal()
        if reason is not None:
            self.admission.shed(model or None, reason, time.monotonic() - received, PROTOCOL)
            await _abort(context, self.admission.overloaded(reason))
        with self.admission.admitted() as admitted:
            try:
                async with self.service.track(model or None, PROTOCOL):
                    response = await self._infer(request, context, received)
            except Exception as exc:
                await _abort(context, exc)
            admitted.served()
            return response

    async def _infer(
        self, request: pb.ModelInferRequest, context: Any, received: float
    ) -> pb.ModelInferResponse:
        if not request.model_name:
            raise InvalidRequestError("model_name is empty: name the model to run")
        decoded = await _decode(request)
        deadline_ms = _deadline_ms(
            decoded.deadline_ms, context.time_remaining(), decoded.knobs.on_deadline == "best"
        )
        result = await self.service.classify(
            decoded.classify_request(request.model_name, request.model_version or None, received, deadline_ms)
        )
        return encode_model_infer(decoded, result)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Anytime prediction: every request on the stream runs as it arrives (concurrently), and each
        answers one response per exit its images pass, in exit order per image. A request that fails
        answers one response carrying `error_message`; the stream goes on. Closing the stream
        withdraws the requests still running (their images stop at the next stage boundary)."""
        try:
            self._authorize(context)
        except UnauthorizedError as exc:
            await _abort(context, exc)
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def read() -> None:
            async for request in requests:
                task = asyncio.create_task(self._stream_one(request, context, responses.put_nowait))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
            responses.put_nowait(None)  # every request answered and the client sent its last

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await reader  # its error, if reading the stream failed
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _stream_one(
        self,
        request: pb.ModelInferRequest,
        context: Any,
        send: Callable[[pb.ModelStreamInferResponse], None],
    ) -> None:
        """One request of a stream: its exit responses, or one error response."""
        received = time.monotonic()
        model = request.model_name
        reason = self.admission.refusal()
        if reason is not None:
            self.admission.shed(model or None, reason, time.monotonic() - received, PROTOCOL)
            send(_stream_error(request, self.admission.overloaded(reason)))
            return
        with self.admission.admitted() as admitted:
            try:
                async with self.service.track(model or None, PROTOCOL):
                    if not model:
                        raise InvalidRequestError("model_name is empty: name the model to run")
                    decoded = await _decode(request)
                    deadline_ms = _deadline_ms(
                        decoded.deadline_ms, context.time_remaining(), decoded.knobs.on_deadline == "best"
                    )
                    updates = self.service.stream(
                        decoded.classify_request(model, request.model_version or None, received, deadline_ms)
                    )
                    finals = 0
                    async with aclosing(updates):  # a cancelled stream withdraws the request at once
                        async for update in updates:
                            if isinstance(update, ExitUpdate):
                                finals += update.final
                                last = finals == decoded.image_count
                                send(encode_exit_response(decoded, update, last=last))
            except Exception as exc:
                send(_stream_error(request, exc))
                return
            admitted.served()

    # -- the model repository extension (admin) -----------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        async def index() -> pb.RepositoryIndexResponse:
            self._authorize_admin(context)
            entries = await self.engine.repository_index()
            model = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(
                models=[
                    model(name=e.name, version=e.version, state=e.state, reason=e.reason)
                    for e in entries
                    if e.state == "READY" or not request.ready
                ]
            )

        return await _answer(context, index)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def load() -> pb.RepositoryModelLoadResponse:
            self._authorize_admin(context)
            for key in request.parameters:
                raise InvalidRequestError(
                    f"load parameter {key[:64]!r} is not supported: models load from their bundles in the "
                    "model store (ranet export writes them)"
                )
            await self.engine.load_model(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await _answer(context, load)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def unload() -> pb.RepositoryModelUnloadResponse:
            self._authorize_admin(context)
            for key, parameter in request.parameters.items():
                if key != "unload_dependents" or parameter.WhichOneof("parameter_choice") != "bool_param":
                    raise InvalidRequestError(
                        f"unload parameter {key[:64]!r} is not supported (only the boolean unload_dependents)"
                    )
            await self.engine.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _answer(context, unload)

    # -- credentials ------------------------------------------------------------------------------

    def _authorize(self, context: Any) -> None:
        check_authorization(_metadata(context, "authorization"), self.settings.api_key)

    def _authorize_admin(self, context: Any) -> None:
        expected = self.settings.effective_admin_key
        if expected is None:
            if not is_loopback_peer(context.peer()):
                raise AdminDisabledError(
                    "repository calls are closed: the server has no admin key and answers them only from "
                    "loopback; set RANET_ADMIN_API_KEY and send the metadata 'authorization: Bearer <key>'"
                )
            return
        check_authorization(_metadata(context, "authorization"), expected)


class ReadinessHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose Check reads the engine's catalog at the moment it is asked.

    `Watch` streams what `refresh()` last set: the front-end's lifespan calls it while it runs.
    """

    def __init__(self, is_ready: Callable[[], bool]):
        super().__init__()
        self.is_ready = is_ready
        self.stopping = False

    async def enter_graceful_shutdown(self) -> None:
        self.stopping = True  # not ready any more: a load balancer stops sending calls
        await super().enter_graceful_shutdown()

    def status(self, service: str) -> int | None:
        if service == LIVENESS:
            return SERVING
        if service in READINESS_NAMES:
            ready = self.is_ready() and not self.stopping
            return SERVING if ready else NOT_SERVING
        return None

    async def Check(self, request: Any, context: Any) -> Any:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:64]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def refresh(self) -> None:
        for service in (*READINESS_NAMES, LIVENESS):
            status = self.status(service)
            assert status is not None
            await self.set(service, status)


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") is a loopback address."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        host = rest.rsplit(":", 1)[0]
    elif kind == "ipv6":
        host = rest.rsplit(":", 1)[0].strip("[]")
    else:  # unix sockets and unknown transports are not loopback (as in api/auth.py)
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _metadata(context: Any, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


# With on_deadline=best the engine answers at the first stage boundary after the deadline, and the answer
# still has to be encoded and sent: a call's own deadline is brought forward by this share of what is
# left (at least 2 ms, at most 100 ms), so the best-so-far answer reaches a client that gives up at its
# deadline. A `deadline_ms` the client chose is the server's to honour as given.
BEST_EFFORT_MARGIN_SHARE = 0.25
BEST_EFFORT_MARGIN_MS = (2.0, 100.0)


def _deadline_ms(
    requested_ms: float | None, remaining_seconds: float | None, best_effort: bool = False
) -> float | None:
    """The shorter of the request's own deadline and the gRPC call's (None: the server's timeout)."""
    if remaining_seconds is None:
        return requested_ms
    if remaining_seconds <= 0:
        raise DeadlineExceededError("the call's gRPC deadline passed before inference started")
    remaining_ms = 1000.0 * remaining_seconds
    if best_effort:
        low, high = BEST_EFFORT_MARGIN_MS
        remaining_ms -= min(max(BEST_EFFORT_MARGIN_SHARE * remaining_ms, low), high)
        if remaining_ms <= 0:
            raise DeadlineExceededError("the call's gRPC deadline leaves no time to answer before it passes")
    return remaining_ms if requested_ms is None else min(requested_ms, remaining_ms)


async def _decode(request: pb.ModelInferRequest) -> V2Input:
    """Decode on the loop when small, in a worker thread when large (as the REST service decides)."""
    if payload_bytes(request) > INLINE_DECODE_MAX_BYTES:
        return await run_in_threadpool(parse_model_infer, request)
    return parse_model_infer(request)


def _stream_error(request: pb.ModelInferRequest, exc: Exception) -> pb.ModelStreamInferResponse:
    """A failed request of a stream: its id and the message REST gives (unexpected ones are logged)."""
    if isinstance(exc, RanetServeError):
        message = exc.message
    else:
        error_id = uuid.uuid4().hex[:16]
        logger.error("error %s on gRPC ModelStreamInfer", error_id, exc_info=exc)
        message = f"internal error (error id {error_id})"
    code = grpc_status_for(exc).name
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    set_parameter(response.parameters["triton_final_response"], True)
    return pb.ModelStreamInferResponse(error_message=f"{code}: {message}", infer_response=response)


async def _answer(context: Any, call: Callable[[], Awaitable[R]]) -> R:
    """Run an RPC's body; a failure ends the call with its status and message."""
    try:
        return await call()
    except Exception as exc:
        await _abort(context, exc)
        raise  # not reached: abort raises


async def _abort(context: Any, exc: Exception) -> Any:
    """End the call with the status the error maps to and its message (raises, as context.abort does).

    Unexpected errors answer INTERNAL with an error id that is logged with the traceback, as REST's
    500s do; a shed call carries `retry-after` seconds in its trailing metadata, as HTTP's 429 does."""
    if isinstance(exc, UnauthorizedError):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
    if isinstance(exc, AdminDisabledError):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)
    code = grpc_status_for(exc)
    if isinstance(exc, RanetServeError) and status_for(exc) != 500:
        retry_after = exc.details.get("retry_after_seconds")
        if isinstance(retry_after, int | float):
            context.set_trailing_metadata((("retry-after", str(max(1, round(retry_after)))),))
        await context.abort(code, exc.message)
    error_id = uuid.uuid4().hex[:16]
    logger.error("error %s on gRPC %s", error_id, type(exc).__name__, exc_info=exc)
    message = exc.message if isinstance(exc, RanetServeError) else "internal error"
    await context.abort(code, f"{message} (error id {error_id})")
