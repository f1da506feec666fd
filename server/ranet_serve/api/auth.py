"""Optional bearer-token authentication: off by default, one key for inference, one for admin.

`Settings.api_key` guards inference and model metadata (v1 and v2); `Settings.admin_api_key` guards
`/v1/admin` and falls back to `api_key`, so a single key protects everything. Without either key the
admin routes answer only requests from loopback (a reload is an operator's action; on a pod or a host
with a published port, anyone who reaches the server must not be able to trigger one). Liveness, readiness and
`/metrics` stay open: orchestrators and Prometheus probe them without credentials, and they carry
operational data (readiness, rates, model names), never inputs or answers.

Tokens are compared with `hmac.compare_digest` on bytes, whose running time does not depend on where
the first differing byte is, so the key cannot be guessed byte by byte from response times. The key is
never logged or echoed: error messages say only that a token is missing or wrong.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from ranet_serve.api.errors import error_response
from ranet_serve.api.paths import inference_model
from ranet_serve.errors import RanetServeError
from ranet_serve.settings import Settings

REALM = "ranet-serve"
UNAUTHORIZED_REASON = "unauthorized"  # the `reason` label of ranet_rejected_total
INFERENCE_SCHEME = "apiKey"  # security scheme names in the OpenAPI schema
ADMIN_SCHEME = "adminKey"


class UnauthorizedError(RanetServeError):
    """The route needs a bearer token and the request sent none, or the wrong one (HTTP 401)."""

    code = "unauthorized"

    def __init__(self, message: str, *, token_sent: bool):
        super().__init__(message)
        self.token_sent = token_sent

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` value (RFC 6750): `invalid_token` only when a token was sent."""
        if self.token_sent:
            return f'Bearer realm="{REALM}", error="invalid_token"'
        return f'Bearer realm="{REALM}"'


class AdminDisabledError(RanetServeError):
    """An admin route was called from beyond loopback while no admin key is set (HTTP 403)."""

    code = "admin_disabled"


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    return parse_bearer(request.headers.get("authorization"))


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization` value `Bearer <token>` (HTTP header or gRPC metadata), else None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def check_token(request: Request, expected: SecretStr | None) -> None:
    """Raise UnauthorizedError unless `expected` is unset or the request carries exactly that token."""
    check_authorization(request.headers.get("authorization"), expected)


def check_authorization(header: str | None, expected: SecretStr | None) -> None:
    """`check_token` for an `Authorization` value however it came (gRPC reads it from metadata)."""
    if expected is None:
        return
    token = parse_bearer(header)
    if token is None:
        raise UnauthorizedError(
            "this endpoint needs an API key: send the header 'Authorization: Bearer <key>'", token_sent=False
        )
    # Both sides as bytes: compare_digest on str accepts ASCII only and would raise on other input.
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("the API key is not valid for this endpoint", token_sent=True)


def is_loopback_client(request: Request) -> bool:
    """Whether the peer of the connection is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x.y.z).

    The address is the ASGI scope's `client`, the socket's peer: uvicorn runs with proxy_headers off,
    so an `X-Forwarded-For` header cannot make a remote request look local. No address (a Unix
    socket, an in-process transport) does not count as loopback.
    """
    client = request.scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# Declared through FastAPI's HTTPBearer so the OpenAPI schema names the scheme on exactly the operations
# that depend on it; the header is parsed and checked by `check_token` (auto_error off).
_inference_bearer = HTTPBearer(
    auto_error=False, scheme_name=INFERENCE_SCHEME, description="RANET_API_KEY, when the server sets one"
)
_admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=ADMIN_SCHEME,
    description="RANET_ADMIN_API_KEY, else RANET_API_KEY, when the server sets one",
)


async def require_api_key(
    request: Request, _: HTTPAuthorizationCredentials | None = Depends(_inference_bearer)
) -> None:
    """FastAPI dependency of inference and metadata routes."""
    check_token(request, _settings(request).api_key)


async def require_admin_key(
    request: Request, _: HTTPAuthorizationCredentials | None = Depends(_admin_bearer)
) -> None:
    """FastAPI dependency of admin routes: the admin key, else the inference key; with neither, only
    requests from loopback (403 otherwise)."""
    expected = _settings(request).effective_admin_key
    if expected is None:
        if not is_loopback_client(request):
            raise AdminDisabledError(
                "admin routes are closed: the server has no admin key and answers them only from "
                "loopback (127.0.0.1, ::1); set RANET_ADMIN_API_KEY (or ranet serve "
                "--admin-api-key-file) to enable them and send 'Authorization: Bearer <key>'"
            )
        return
    check_token(request, expected)


async def _admin_disabled(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AdminDisabledError)
    return error_response(request, 403, exc.code, exc.message)


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnauthorizedError)
    is_inference, model = inference_model(request.method, request.url.path)
    if is_inference:  # counted like every other answered inference request (ranet_requests_total)
        state = request.app.state
        label = state.service.model_label(model)
        state.metrics.request_refused(label, 401, UNAUTHORIZED_REASON)
    return error_response(request, 401, exc.code, exc.message, headers={"WWW-Authenticate": exc.challenge})


def install_auth_handler(app: FastAPI) -> None:
    """Answer UnauthorizedError with 401 and AdminDisabledError with 403 in the route family's error
    shape (more specific than the generic domain-error handler, which Starlette picks by the
    exception's class hierarchy), and keep
    in the OpenAPI schema only the bearer schemes whose key is set: a schema that says "bearer" when
    the server has no key would send clients looking for one.
    """
    app.add_exception_handler(UnauthorizedError, _unauthorized)
    app.add_exception_handler(AdminDisabledError, _admin_disabled)
    settings: Settings = app.state.settings
    active = {INFERENCE_SCHEME: settings.api_key, ADMIN_SCHEME: settings.effective_admin_key}
    unused = {name for name, key in active.items() if key is None}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _drop_schemes(generate(), unused)
        return generate()  # FastAPI caches the (edited) schema from here on

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_schemes(schema: dict[str, Any], unused: set[str]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "security" not in operation:
                continue
            kept = [r for r in operation["security"] if not set(r) & unused]
            if kept:
                operation["security"] = kept
            else:
                del operation["security"]
    schemes = schema.get("components", {}).get("securitySchemes", {})
    for name in unused:
        schemes.pop(name, None)
    if "components" in schema and not schemes:
        schema["components"].pop("securitySchemes", None)
