"""Exceptions the client raises: one base carrying what the server said, one subclass per kind of failure.

Callers branch on the class (`except BudgetError`) or on the stable `code` the server sends; the HTTP
status stays available for logging. Failures without an HTTP answer (refused connection, timeout) have
`status=None` so "the server said no" and "the server was not reached" never look alike.
"""

from __future__ import annotations

from typing import Any


class RanetError(Exception):
    """Base of every error the client raises.

    Attributes: `status` (HTTP status, None when no answer came), `code` (the server's stable error code,
    e.g. "invalid_budget"), `message`, `details` (structured fields such as the cheapest exit's FLOPs),
    `retry_after` (seconds the server asked to wait, if it did), `error_id` (quote it when reporting a
    500), `attempts` (how many times the request was sent before giving up).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        error_id: str | None = None,
        attempts: int = 1,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details or {}
        self.retry_after = retry_after
        self.error_id = error_id
        self.attempts = attempts

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


# -- no HTTP answer ---------------------------------------------------------------------------------


class TransportError(RanetError):
    """The request got no HTTP answer (connection refused or reset, timeout)."""


class ConnectionFailedError(TransportError):
    """The server could not be reached or dropped the connection before answering."""


class RequestTimeoutError(TransportError):
    """No answer within the client's timeout (the server may still be working on it)."""


# -- 4xx: the request is wrong; retrying the same request will not help ------------------------------


class RequestError(RanetError):
    """The server rejected the request (4xx other than 429)."""


class InvalidInputError(RequestError):
    """400: an image could not be decoded or the body is malformed."""


class UnauthorizedError(RequestError):
    """401: the server requires an API key (`api_key=`) and got none, or the wrong one."""


class NotFoundError(RequestError):
    """404: unknown model or version (or route)."""


class PayloadTooLargeError(RequestError):
    """413: the body, one image, or the number of images per request is over the server's limit."""


class UnsupportedMediaTypeError(RequestError):
    """415: the Content-Type is not one the server reads."""


class ValidationError(RequestError):
    """422 `invalid_request`: a knob has the wrong type or range, or is unknown."""


class BudgetError(ValidationError):
    """422 `invalid_budget`: the budget cannot be honoured (e.g. `max_flops` below the cheapest exit).

    `details` carries what the server knows, e.g. the cheapest exit's cost.
    """


# -- the server cannot serve right now: retrying later may help ---------------------------------------


class OverloadedError(RanetError):
    """429 (or code `overloaded`): the server's queue is full; `retry_after` says when to come back."""


class ServerError(RanetError):
    """5xx: the server failed or cannot serve."""


class UnavailableError(ServerError):
    """503: the server is not ready (still loading, or no model serves)."""


class DeadlineExceededError(ServerError):
    """504: the request waited past its deadline (`deadline_ms` or the server's request timeout)."""


_BY_CODE: dict[str, type[RanetError]] = {
    "invalid_budget": BudgetError,
    "invalid_request": ValidationError,
    "invalid_input": InvalidInputError,
    "model_not_found": NotFoundError,
    "unauthorized": UnauthorizedError,
    "payload_too_large": PayloadTooLargeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "overloaded": OverloadedError,
    "not_ready": UnavailableError,
    "deadline_exceeded": DeadlineExceededError,
}

_BY_STATUS: dict[int, type[RanetError]] = {
    400: InvalidInputError,
    401: UnauthorizedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: ValidationError,
    429: OverloadedError,
    503: UnavailableError,
    504: DeadlineExceededError,
}


def error_class(status: int, code: str | None) -> type[RanetError]:
    """The exception class for an HTTP error answer: the stable code first, then the status.

    The code wins because it is more precise (422 is both `invalid_request` and `invalid_budget`), but a
    code the client does not know still gets the class its status implies.
    """
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return RequestError
    return RanetError
