"""The inference routes served straight from ASGI, past FastAPI's per-request machinery.

Why: on this model a front-end process spends its CPU on per-request Python, and a profile of one
under 16 concurrent single-image requests (py-spy, default point) put a fifth of it in the framework
around the handler: route matching over every route, dependency resolution (`solve_dependencies`
alone 10%), the exception-handling wrappers and the async exit stack. The inference routes need none
of it: their handlers take the `Request`, read what `create_app` built from the app's state, and
return a finished `Response`. So this middleware matches the three inference paths with one regular
expression (`api.paths`, the one the admission gate uses), checks the bearer token, calls the handler,
and maps an exception with the app's own exception handlers, exactly as FastAPI would. Every other
request goes on to FastAPI, where the same routes stay declared for the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ranet_serve.api.auth import check_token
from ranet_serve.api.paths import InferenceTarget, match_inference
from ranet_serve.api.v1.routes import classify
from ranet_serve.api.v2.routes import infer
from ranet_serve.settings import Settings

Handler = Callable[[Request, InferenceTarget], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


async def _v1(request: Request, target: InferenceTarget) -> Response:
    return await classify(request, target.model)


async def _v2(request: Request, target: InferenceTarget) -> Response:
    assert target.model is not None  # the v2 path always names its model
    return await infer(request, target.model, target.version)


HANDLERS: dict[str, Handler] = {"v1": _v1, "v2": _v2}


class InferenceDispatch:
    """Pure ASGI middleware, inside the admission gate: inference requests never reach the router."""

    def __init__(self, app: ASGIApp, *, settings: Settings):
        self.app = app
        self.api_key = settings.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = match_inference(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            check_token(request, self.api_key)
            response = await HANDLERS[target.protocol](request, target)
        except Exception as exc:
            response = await exception_handler(scope, exc)(request, exc)
        await response(scope, receive, send)


def exception_handler(scope: Scope, exc: Exception) -> ExceptionHandler:
    """The handler the app registered for the most specific class of `exc` (as Starlette picks it)."""
    handlers: dict[object, ExceptionHandler] = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    raise exc
