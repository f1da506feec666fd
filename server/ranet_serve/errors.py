"""The domain's error hierarchy. No HTTP here: the API maps each class to a status in one table.

Errors carry structured fields (the offending value, the limit) so the API can answer precisely
without parsing messages.
"""

from __future__ import annotations


class RanetServeError(Exception):
    """Base of every error this project raises on purpose. `code` is a stable machine-readable name."""

    code = "internal_error"

    def __init__(self, message: str, **details: object):
        super().__init__(message)
        self.message = message
        self.details = details


class BundleError(RanetServeError):
    """A bundle is missing a file, fails a checksum, or has an invalid manifest."""

    code = "bundle_invalid"


class ModelNotFoundError(RanetServeError):
    code = "model_not_found"


class ModelLoadError(RanetServeError):
    """An operator asked to load a model and a version of it failed to load (the reasons are in the
    message); the versions that did load serve."""

    code = "load_failed"


class InvalidInputError(RanetServeError):
    """The request's images or tensors cannot be used (undecodable, wrong shape, too large...)."""

    code = "invalid_input"


class InvalidRequestError(InvalidInputError):
    """A request field has the wrong type, range or shape (the body itself was readable)."""

    code = "invalid_request"


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(InvalidInputError):
    code = "unsupported_media_type"


class BudgetError(RanetServeError):
    """A compute-budget knob cannot be honoured (e.g. `max_flops` below the cheapest exit)."""

    code = "invalid_budget"


# Why a request was shed (`OverloadedError`'s `reason` detail, the `reason` label of rejections).
OVERLOAD_REASONS = ("queue_full", "inflight_limit", "shutdown", "deadline_unmeetable")


class OverloadedError(RanetServeError):
    """The server sheds this request (`reason`: one of OVERLOAD_REASONS); retry after a while."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_seconds: float = 1.0, **details: object):
        super().__init__(message, retry_after_seconds=retry_after_seconds, **details)
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceededError(RanetServeError):
    """A request waited past its deadline before it could run."""

    code = "deadline_exceeded"


class NotReadyError(RanetServeError):
    code = "not_ready"


class StageExecutionError(RanetServeError):
    """A runtime failed while running a stage; only that batch's requests fail."""

    code = "stage_failed"
