"""The KServe v2 wire format, JSON and binary tensor data extension, to and from the service's types.

Input: exactly one tensor, either FP32 [N, C, H, W] already in the model's input space, or BYTES [N]
of encoded image files (base64 strings in JSON, raw elements in binary). With the binary extension the
body is a JSON header of `Inference-Header-Content-Length` bytes followed by each binary input's bytes
in order (`parameters.binary_data_size`): FP32 as little-endian floats, BYTES as elements each
prefixed by its length (uint32, little-endian). Outputs are returned in binary when the request asks
(`binary_data_output`, or `binary_data` per output), which is tritonclient's default.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from ranet_serve.api.knobs import BUDGET_KNOBS
from ranet_serve.api.service import ClassifyResult, EncodedImages
from ranet_serve.api.v1.codec import decode_base64
from ranet_serve.api.v2.schemas import InferenceRequest, RequestInput
from ranet_serve.errors import InvalidInputError, InvalidRequestError
from ranet_serve.export.manifest import Manifest

HEADER_LENGTH = "Inference-Header-Content-Length"
# name -> (datatype, numpy dtype used on the wire); shapes are [N] except probabilities [N, classes].
OUTPUTS: dict[str, tuple[str, str]] = {
    "label": ("BYTES", "object"),
    "class_index": ("INT64", "<i8"),
    "confidence": ("FP32", "<f4"),
    "exit": ("INT32", "<i4"),
    "flops": ("INT64", "<i8"),
    "budget_limited": ("BOOL", "?"),
    "probabilities": ("FP32", "<f4"),
}
DEFAULT_OUTPUTS = ("label", "class_index", "confidence", "exit", "flops", "budget_limited")
IMAGE_INPUT = "image"
BYTES_INPUT = "image_bytes"


@dataclass(frozen=True)
class V2Input:
    """A decoded v2 request: the images, the knobs, and how the answer should be encoded."""

    request_id: str | None
    images: EncodedImages | np.ndarray
    knobs: dict[str, object]
    deadline_ms: float | None
    outputs: tuple[tuple[str, bool], ...]  # (output name, binary?)

    @property
    def wants_probabilities(self) -> bool:
        return any(name == "probabilities" for name, _ in self.outputs)


def parse_infer_request(body: bytes, header_length: str | None) -> V2Input:
    """Split header and binary part, validate the JSON, decode the one input tensor."""
    header, binary = _split(body, header_length)
    try:
        document = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"inference request is not valid JSON ({exc})") from exc
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidRequestError(f"invalid inference request at {where}: {first['msg']}") from exc
    if len(request.inputs) != 1:
        raise InvalidRequestError(
            f"send exactly one input tensor ({IMAGE_INPUT!r} FP32 [N,C,H,W] or {BYTES_INPUT!r} BYTES [N]), "
            f"got {len(request.inputs)}"
        )
    offset = 0
    images: EncodedImages | np.ndarray | None = None
    for tensor in request.inputs:
        size = _binary_size(tensor)
        if size is not None:
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input {tensor.name!r} declares {size} bytes of binary data but only "
                    f"{len(binary) - offset} follow the JSON header"
                )
            images = _decode_input(tensor, binary[offset : offset + size])
            offset += size
        else:
            images = _decode_input(tensor, None)
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes after the JSON header belong to no input")
    assert images is not None
    parameters = request.parameters or {}
    return V2Input(
        request_id=request.id,
        images=images,
        knobs={k: parameters[k] for k in BUDGET_KNOBS if parameters.get(k) is not None},
        deadline_ms=_deadline_ms(parameters),
        outputs=_requested_outputs(request, bool(parameters.get("binary_data_output", False))),
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if not body:
        raise InvalidInputError("empty body: send a v2 inference request")
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError as exc:
        raise InvalidInputError(f"{HEADER_LENGTH} must be an integer, got {header_length[:32]!r}") from exc
    if not 0 < length <= len(body):
        raise InvalidInputError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
    return body[:length], body[length:]


def _binary_size(tensor: RequestInput) -> int | None:
    value = (tensor.parameters or {}).get("binary_data_size")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"input {tensor.name!r}: binary_data_size must be a non-negative integer")
    return value


def _element_count(tensor: RequestInput) -> int:
    if any(d < 0 for d in tensor.shape):
        raise InvalidRequestError(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension")
    return math.prod(tensor.shape)


def _decode_input(tensor: RequestInput, raw: bytes | None) -> EncodedImages | np.ndarray:
    datatype = tensor.datatype.upper()
    count = _element_count(tensor)
    if datatype == "FP32":
        return _decode_fp32(tensor, raw, count)
    if datatype == "BYTES":
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInputError(
                f"input {tensor.name!r}: BYTES images take shape [N] or [N, 1], got {tensor.shape}"
            )
        items = _bytes_elements(raw) if raw is not None else _json_bytes(tensor)
        if len(items) != count:
            raise InvalidInputError(
                f"input {tensor.name!r}: shape {tensor.shape} needs {count} elements, got {len(items)}"
            )
        return EncodedImages(tuple(items))
    raise InvalidInputError(
        f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported; send FP32 [N,C,H,W] "
        "or BYTES [N] (encoded images)"
    )


def _decode_fp32(tensor: RequestInput, raw: bytes | None, count: int) -> np.ndarray:
    if raw is not None:
        if len(raw) != 4 * count:
            raise InvalidInputError(
                f"input {tensor.name!r}: shape {tensor.shape} needs {4 * count} bytes of FP32, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(tensor.shape)
    if tensor.data is None:
        raise InvalidRequestError(f"input {tensor.name!r} has neither 'data' nor binary_data_size")
    try:
        array = np.asarray(tensor.data)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"input {tensor.name!r}: data is not a regular (non-ragged) list of numbers"
        ) from exc
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(f"input {tensor.name!r}: FP32 data must hold numbers only")
    if array.size != count:
        raise InvalidInputError(
            f"input {tensor.name!r}: shape {tensor.shape} needs {count} values, data has {array.size}"
        )
    return array.astype(np.float32).reshape(tensor.shape)


def _json_bytes(tensor: RequestInput) -> list[bytes]:
    if not isinstance(tensor.data, list):
        raise InvalidRequestError(f"input {tensor.name!r}: BYTES data must be a list of base64 strings")
    flat: list[object] = []
    for item in tensor.data:  # shape [N] or [N, 1]: at most one level of nesting
        if isinstance(item, list):
            flat.extend(item)
        else:
            flat.append(item)
    decoded = []
    for index, item in enumerate(flat):
        if isinstance(item, dict) and isinstance(item.get("b64"), str):
            item = item["b64"]
        decoded.append(decode_base64(item, f"input {tensor.name!r} element {index}"))
    return decoded


def _bytes_elements(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInputError("BYTES tensor data ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInputError(
                f"BYTES element declares {length} bytes but only {len(raw) - offset} remain"
            )
        items.append(raw[offset : offset + length])
        offset += length
    return items


def _deadline_ms(parameters: dict[str, Any]) -> float | None:
    """`deadline_ms`, or Triton's `timeout` parameter (microseconds)."""
    if parameters.get("deadline_ms") is not None:
        return _positive(parameters["deadline_ms"], "deadline_ms")
    if parameters.get("timeout") is not None:
        return _positive(parameters["timeout"], "timeout") / 1000.0
    return None


def _positive(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(f"parameter {key} must be a number")
    try:
        number = float(value)
    except ValueError as exc:
        raise InvalidRequestError(f"parameter {key} must be a number, got {value[:40]!r}") from exc  # type: ignore[index]
    if not math.isfinite(number) or number <= 0:
        raise InvalidRequestError(f"parameter {key} must be a positive number, got {value!r}")
    return number


def _requested_outputs(request: InferenceRequest, binary_default: bool) -> tuple[tuple[str, bool], ...]:
    if not request.outputs:
        return tuple((name, binary_default) for name in DEFAULT_OUTPUTS)
    chosen = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise InvalidRequestError(f"unknown output {output.name!r}; outputs: {', '.join(OUTPUTS)}")
        binary = (output.parameters or {}).get("binary_data", binary_default)
        chosen.append((output.name, bool(binary)))
    return tuple(chosen)


# -- responses --------------------------------------------------------------------------------------


def _output_array(name: str, result: ClassifyResult) -> np.ndarray:
    images = result.images
    if name == "label":
        return np.array([result.labels[i.class_index] for i in images], dtype=object)
    if name == "probabilities":
        dense = np.zeros((len(images), len(result.labels)), dtype=np.float32)
        for row, image in enumerate(images):
            for index, probability in image.top_k:
                dense[row, index] = probability
        return dense
    values = [getattr(i, name) for i in images]
    return np.asarray(values, dtype=OUTPUTS[name][1])


def encode_infer_response(request: V2Input, result: ClassifyResult) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type); binary outputs follow the JSON header in the order listed."""
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name, binary in request.outputs:
        array = _output_array(name, result)
        entry: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name][0], "shape": list(array.shape)}
        if binary:
            raw = _to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = (
                [str(v) for v in array.ravel()] if array.dtype == object else array.ravel().tolist()
            )
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": result.model,
        "model_version": result.version,
        "parameters": {
            "operating_point": result.operating_point,
            "queue_ms": 1000 * result.queue_seconds,
            "inference_ms": 1000 * result.inference_seconds,
            "total_ms": 1000 * result.total_seconds,
        },
        "outputs": outputs,
    }
    if request.request_id is not None:
        document["id"] = request.request_id
    header = json.dumps(document, allow_nan=False).encode()
    if not buffers:
        return header, {}, "application/json"
    return header + b"".join(buffers), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


def _to_bytes(array: np.ndarray) -> bytes:
    if array.dtype == object:
        parts = []
        for value in array.ravel():
            encoded = str(value).encode()
            parts.append(struct.pack("<I", len(encoded)) + encoded)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def model_metadata(name: str, versions: list[str], manifest: Manifest) -> dict[str, Any]:
    spec = manifest.input
    return {
        "name": name,
        "versions": versions,
        "platform": "ranet_cascade",
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "FP32", "shape": [-1, spec.channels, spec.size, spec.size]},
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {
                "name": output,
                "datatype": datatype,
                "shape": [-1, manifest.config.num_classes] if output == "probabilities" else [-1],
            }
            for output, (datatype, _) in OUTPUTS.items()
        ],
    }
