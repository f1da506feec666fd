"""Python client of RANet Serve: early-exit image classification with per-request compute budgets.

    from ranet_client import RanetClient

    with RanetClient("http://127.0.0.1:8080") as client:
        answer = client.classify(["a.png", "b.png"], max_flops="20M")
        for result in answer.results:
            print(result.label, result.confidence, result.exit, result.mflops)

`classify_stream` answers anytime: an `ExitEvent` per exit each image passes, as it is computed, then a
`StreamSummary`. `AsyncRanetClient` offers the same calls for asyncio; `ranet_client.load` is the load
generator behind `ranet-client load`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ranet_client.aio import AsyncRanetClient
from ranet_client.budget import Knobs, parse_flops
from ranet_client.client import RanetClient
from ranet_client.errors import (
    BudgetError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RanetError,
    RequestError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from ranet_client.image_sets import Sample, bundled_samples, folder_samples
from ranet_client.images import EncodedImage, encode_image, encode_png
from ranet_client.results import (
    ClassifyResponse,
    ExitEvent,
    ExitInfo,
    Health,
    ImageResult,
    InputSpec,
    ModelInfo,
    ModelList,
    ModelVersion,
    OperatingPoint,
    Readiness,
    StreamSummary,
    Timings,
    TopK,
)
from ranet_client.retry import RetryPolicy
from ranet_client.streams import AsyncClassifyStream, ClassifyStream

__all__ = [
    "AsyncClassifyStream",
    "AsyncRanetClient",
    "BudgetError",
    "ClassifyResponse",
    "ClassifyStream",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "EncodedImage",
    "ExitEvent",
    "ExitInfo",
    "Health",
    "ImageResult",
    "InputSpec",
    "InvalidInputError",
    "Knobs",
    "ModelInfo",
    "ModelList",
    "ModelVersion",
    "NotFoundError",
    "OperatingPoint",
    "OverloadedError",
    "PayloadTooLargeError",
    "RanetClient",
    "RanetError",
    "Readiness",
    "RequestError",
    "RequestTimeoutError",
    "RetryPolicy",
    "Sample",
    "ServerError",
    "StreamSummary",
    "Timings",
    "TopK",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "__version__",
    "bundled_samples",
    "encode_image",
    "encode_png",
    "folder_samples",
    "parse_flops",
]
