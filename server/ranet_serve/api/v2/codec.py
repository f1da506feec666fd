"""The KServe v2 wire format, JSON and binary tensor data extension, to and from the service's types.

REST and gRPC (`api/grpc/codec.py`) share everything past their wire: both turn a request into the
same `InferenceRequest` fields plus each input's binary data (`validate_request`, `decode_request`), and
answer from the same `response_outputs` and `response_parameters`, so tensors are decoded, validated and
encoded one way and the two protocols answer the same images with the same tensors.

Input: exactly one tensor, either FP32 [N, C, H, W] already in the model's input space, or BYTES [N]
of encoded image files (base64 strings in JSON, raw elements in binary). With the binary extension the
body is a JSON header of `Inference-Header-Content-Length` bytes followed by each binary input's bytes
in order (`parameters.binary_data_size`): FP32 as little-endian floats, BYTES as elements each
prefixed by its length (uint32, little-endian). Outputs are returned in binary when the request asks
(`binary_data_output`, or `binary_data` per output), which is tritonclient's default.

Request `parameters` hold the knobs of `api/knobs.py` (the same names, parsers and errors as v1, top_k
included) and the standard Triton parameters below; any other name is the 422 v1 gives an unknown knob:

* `binary_data_output` (bool): every output in binary unless it says otherwise. Honoured.
* `timeout` (microseconds): the deadline, as `deadline_ms` (giving both is an error; 0 means none, as
  in Triton). Honoured.
* `priority`: accepted and ignored. One queue serves every request; ignoring a scheduling hint never
  changes an answer.
* `sequence_id`, `sequence_start`, `sequence_end`: accepted when they name no sequence (id 0 or "",
  what a client sends by default). The models are stateless, so a real sequence id is refused, as
  Triton refuses one for a model without a sequence batcher, rather than silently dropping its state.
* `triton_enable_empty_final_response` (bool, what tritonclient's `async_stream_infer` sends): accepted;
  a stream's last response of every request already carries `triton_final_response=true`, and these
  models are not decoupled, so no empty response is needed after it.

Output `parameters`: `binary_data` (bool) and Triton's classification extension (`classification: k`,
on the `probabilities` output only: BYTES [N, k] of "probability:class_index:label", most probable
first). Input `parameters`: `binary_data_size`. Shared memory (`shared_memory_region`...) is refused
on inputs and outputs: this server has no shared-memory registry. Other input parameters are ignored
(codecs such as KServe's `content_type` describe what the datatype already says).

`top_k` (default 1) is returned as outputs `top_k_label`, `top_k_class_index`, `top_k_probability`
[N, k], most probable first, and the response's `parameters.top_k` says k. They are among the default
outputs when the request sets `top_k`; otherwise a client asks for them by name. `probabilities`
(every class, dense [N, classes]) needs no top_k: asking for it makes the engine return every class.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from ranet_serve.api.body import parse_json
from ranet_serve.api.knobs import Knobs, parse_count, parse_knobs, parse_positive, unknown_parameter
from ranet_serve.api.service import ClassifyRequest, ClassifyResult, EncodedImages
from ranet_serve.api.v1.codec import decode_base64
from ranet_serve.api.v2.schemas import InferenceRequest, RequestInput
from ranet_serve.engine.catalog import Catalog, version_key
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
    "deadline_limited": ("BOOL", "?"),
    "probabilities": ("FP32", "<f4"),
    "top_k_label": ("BYTES", "object"),
    "top_k_class_index": ("INT64", "<i8"),
    "top_k_probability": ("FP32", "<f4"),
}
DEFAULT_OUTPUTS = ("label", "class_index", "confidence", "exit", "flops", "budget_limited")
TOP_K_OUTPUTS = ("top_k_label", "top_k_class_index", "top_k_probability")
IMAGE_INPUT = "image"
BYTES_INPUT = "image_bytes"
# Standard (Triton) request parameters that are not knobs, with their OpenAPI documentation; the module
# docstring says why each is honoured, ignored or limited.
PROTOCOL_PARAMETERS: dict[str, dict[str, Any]] = {
    "binary_data_output": {"type": "boolean", "description": "every output in binary unless it says"},
    "timeout": {"type": "integer", "description": "deadline in microseconds (Triton); or deadline_ms"},
    "priority": {"type": "integer", "description": "accepted and ignored: one queue serves all"},
    "sequence_id": {"description": "0 or empty only: the models are stateless"},
    "sequence_start": {"type": "boolean", "description": "accepted and ignored without a sequence_id"},
    "sequence_end": {"type": "boolean", "description": "accepted and ignored without a sequence_id"},
    "triton_enable_empty_final_response": {
        "type": "boolean",
        "description": "accepted: the last response of a request is marked triton_final_response",
    },
}
OUTPUT_PARAMETERS = ("binary_data", "classification")
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int | None = None  # Triton's classification extension: the k most probable classes


@dataclass(frozen=True)
class V2Input:
    """A decoded v2 request: the images, the knobs, and how the answer should be encoded."""

    request_id: str | None
    images: EncodedImages | np.ndarray
    knobs: Knobs
    deadline_ms: float | None  # `deadline_ms` or Triton's `timeout`
    outputs: tuple[RequestedOutput, ...]

    def classify_request(
        self, model: str, path_version: str | None, received: float, deadline_ms: float | None
    ) -> ClassifyRequest:
        """The service's request for this decoded one (`deadline_ms`: the deadline the wire settled on)."""
        return ClassifyRequest(
            images=self.images,
            model=model,
            version=self.version(path_version),
            budget=self.knobs.budget,
            top_k=self.top_k,
            all_probabilities=self.wants_probabilities,
            deadline_ms=deadline_ms,
            on_deadline=self.knobs.on_deadline,
            received=received,
        )

    @property
    def image_count(self) -> int:
        return len(self.images.items) if isinstance(self.images, EncodedImages) else int(self.images.shape[0])

    @property
    def wants_probabilities(self) -> bool:
        """A dense `probabilities` output needs every class's probability from the engine."""
        return any(o.name == "probabilities" and o.classification is None for o in self.outputs)

    @property
    def top_k(self) -> int:
        """Classes per image the engine must return: the top_k knob, or more for a classification."""
        return max([self.knobs.top_k, *(o.classification or 0 for o in self.outputs)])

    def version(self, path_version: str | None) -> str | None:
        """The version from the path or from `parameters.version`; both must agree when both are given."""
        given = self.knobs.version
        if path_version is not None and given is not None and given != path_version:
            raise InvalidRequestError(
                f"version is given both in the path ({path_version[:64]!r}) and in parameters ({given!r})"
            )
        return path_version if path_version is not None else given


def parse_infer_request(body: bytes, header_length: str | None) -> V2Input:
    """REST: split header and binary part, validate the JSON, decode the one input tensor."""
    header, binary = _split(body, header_length)
    document = parse_json(header, "inference request")
    request = validate_request(document)
    offset = 0
    raw: list[bytes | None] = []
    for tensor in request.inputs:
        size = _binary_size(tensor)
        if size is not None:
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input {tensor.name!r} declares {size} bytes of binary data but only "
                    f"{len(binary) - offset} follow the JSON header"
                )
            raw.append(binary[offset : offset + size])
            offset += size
        else:
            raw.append(None)
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes after the JSON header belong to no input")
    return decode_request(request, raw)


def validate_request(document: object) -> InferenceRequest:
    """The request's fields (either protocol's, as JSON values) checked against the v2 schema's limits.

    gRPC builds the same document from its message (`api/grpc/codec.py`), with the inputs' typed
    contents in `data`: numbers as a float32 array, BYTES elements as `bytes`."""
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidRequestError(f"invalid inference request at {where}: {first['msg']}") from exc


def decode_request(request: InferenceRequest, raw: Sequence[bytes | None]) -> V2Input:
    """The one decoding of a v2 inference request, REST or gRPC: the input tensor (from its binary data
    in `raw`, one entry per input, else from its `data`), the knobs and the outputs to return."""
    if len(request.inputs) != 1:
        raise InvalidRequestError(
            f"send exactly one input tensor ({IMAGE_INPUT!r} FP32 [N,C,H,W] or {BYTES_INPUT!r} BYTES [N]), "
            f"got {len(request.inputs)}"
        )
    images: EncodedImages | np.ndarray | None = None
    for tensor, data in zip(request.inputs, raw, strict=True):
        _refuse_shared_memory(tensor.parameters or {}, f"input {tensor.name!r}")
        images = _decode_input(tensor, data)
    assert images is not None
    parameters = request.parameters or {}
    knobs = parse_knobs(parameters, also_known=PROTOCOL_PARAMETERS)
    _check_no_sequence(parameters)
    binary_default = _flag(parameters.get("binary_data_output"), "binary_data_output")
    return V2Input(
        request_id=request.id,
        images=images,
        knobs=knobs,
        deadline_ms=_deadline_ms(knobs, parameters),
        outputs=_requested_outputs(
            request,
            binary_default,
            top_k_given=parameters.get("top_k") is not None,
            best_effort=knobs.on_deadline == "best",
        ),
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


def _refuse_shared_memory(parameters: dict[str, Any], where: str) -> None:
    if any(parameters.get(key) is not None for key in _SHARED_MEMORY):
        raise InvalidRequestError(
            f"{where}: shared memory is not supported by this server; send the data in the request body"
        )


def _element_count(tensor: RequestInput) -> int:
    if any(d < 0 for d in tensor.shape):
        raise InvalidRequestError(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension")
    return math.prod(tensor.shape)


def _decode_input(tensor: RequestInput, raw: bytes | None) -> EncodedImages | np.ndarray:
    datatype = tensor.datatype.upper()
    expected = {"FP32": IMAGE_INPUT, "BYTES": BYTES_INPUT}.get(datatype)
    if expected is not None and tensor.name != expected:
        # As Triton does: the names are the model metadata's, and a misnamed input is a client's mistake.
        raise InvalidInputError(
            f"input {tensor.name[:64]!r}: this model's inputs are {IMAGE_INPUT!r} (FP32 [N,C,H,W]) and "
            f"{BYTES_INPUT!r} (BYTES [N]); a {datatype} input must be named {expected!r}"
        )
    count = _element_count(tensor)
    if datatype == "FP32":
        return _decode_fp32(tensor, raw, count)
    if datatype == "BYTES":
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInputError(
                f"input {tensor.name!r}: BYTES images take shape [N] or [N, 1], got {tensor.shape}"
            )
        items = _bytes_elements(raw) if raw is not None else _listed_bytes(tensor)
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
        raise InvalidRequestError(
            f"input {tensor.name!r} carries no values: send 'data' or binary data (binary_data_size) "
            "over REST, contents.fp32_contents or raw_input_contents over gRPC"
        )
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


def _listed_bytes(tensor: RequestInput) -> list[bytes]:
    """BYTES elements listed in `data`: base64 strings from JSON, raw `bytes` from gRPC's contents."""
    if not isinstance(tensor.data, list):
        raise InvalidRequestError(
            f"input {tensor.name!r}: BYTES data must be a list of base64 strings "
            "(over gRPC: contents.bytes_contents or raw_input_contents)"
        )
    flat: list[object] = []
    for item in tensor.data:  # shape [N] or [N, 1]: at most one level of nesting
        if isinstance(item, list):
            flat.extend(item)
        else:
            flat.append(item)
    decoded = []
    for index, item in enumerate(flat):
        if isinstance(item, bytes):  # gRPC: the element itself (JSON has no bytes)
            decoded.append(item)
            continue
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


def _deadline_ms(knobs: Knobs, parameters: dict[str, Any]) -> float | None:
    """`deadline_ms`, or Triton's `timeout` parameter (microseconds); not both, which would be a guess.

    A `timeout` of 0 is Triton's "none": the server's request timeout applies, as without one.
    """
    timeout = parameters.get("timeout")
    if timeout is None or (timeout == 0 and not isinstance(timeout, bool)):
        return knobs.deadline_ms
    if knobs.deadline_ms is not None:
        raise InvalidRequestError("give deadline_ms (milliseconds) or timeout (microseconds), not both")
    return parse_positive(timeout, "timeout") / 1000.0


def _check_no_sequence(parameters: dict[str, Any]) -> None:
    sequence_id = parameters.get("sequence_id")
    if sequence_id is not None and sequence_id not in (0, ""):
        raise InvalidRequestError(
            f"sequence_id {str(sequence_id)[:40]!r}: the models are stateless and take no sequences; "
            "send each request on its own"
        )


def _flag(value: object, key: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequestError(f"parameter {key} must be true or false, got {str(value)[:40]!r}")
    return value


def _requested_outputs(
    request: InferenceRequest, binary_default: bool, top_k_given: bool, best_effort: bool
) -> tuple[RequestedOutput, ...]:
    """The outputs to return; without a list, the defaults (and the top-k ones when top_k is set, and
    `deadline_limited` when on_deadline=best could set it)."""
    if not request.outputs:
        names = (
            *DEFAULT_OUTPUTS,
            *(("deadline_limited",) if best_effort else ()),
            *(TOP_K_OUTPUTS if top_k_given else ()),
        )
        return tuple(RequestedOutput(name, binary_default) for name in names)
    chosen = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise InvalidRequestError(f"unknown output {output.name!r}; outputs: {', '.join(OUTPUTS)}")
        parameters = output.parameters or {}
        where = f"output {output.name!r}"
        _refuse_shared_memory(parameters, where)
        for key in sorted(parameters):
            if key not in OUTPUT_PARAMETERS:
                raise unknown_parameter(key, OUTPUT_PARAMETERS, where=f" of {where}")
        binary = parameters.get("binary_data")
        classification = None
        if parameters.get("classification") is not None:
            if output.name != "probabilities":
                raise InvalidRequestError(
                    f"{where}: classification applies to the 'probabilities' output only"
                )
            classification = parse_count(parameters["classification"], "classification")
        chosen.append(
            RequestedOutput(
                output.name,
                binary_default if binary is None else _flag(binary, "binary_data"),
                classification,
            )
        )
    return tuple(chosen)


# -- responses --------------------------------------------------------------------------------------


def _output_array(output: RequestedOutput, result: ClassifyResult, top_k: int) -> np.ndarray:
    images = result.images
    labels = result.labels
    name = output.name
    if name == "label":
        return np.array([labels[i.class_index] for i in images], dtype=object)
    if name == "probabilities":
        if output.classification is not None:
            k = output.classification
            return np.array(
                [[f"{p}:{c}:{labels[c]}" for c, p in i.top_k[:k]] for i in images], dtype=object
            ).reshape(len(images), -1)
        dense = np.zeros((len(images), len(labels)), dtype=np.float32)
        for row, image in enumerate(images):
            for index, probability in image.top_k:
                dense[row, index] = probability
        return dense
    if name in TOP_K_OUTPUTS:
        rows = [i.top_k[:top_k] for i in images]
        if name == "top_k_label":
            return np.array([[labels[c] for c, _ in row] for row in rows], dtype=object).reshape(
                len(rows), -1
            )
        column = 0 if name == "top_k_class_index" else 1
        values = [[entry[column] for entry in row] for row in rows]
        return np.asarray(values, dtype=OUTPUTS[name][1]).reshape(len(rows), -1)
    values = [getattr(i, name) for i in images]
    return np.asarray(values, dtype=OUTPUTS[name][1])


@dataclass(frozen=True)
class OutputTensor:
    """One output of a response, whichever wire encodes it: `array` is numeric, or `object` of str for
    BYTES (encoded as UTF-8 elements)."""

    name: str
    datatype: str
    array: np.ndarray


def response_outputs(request: V2Input, result: ClassifyResult) -> list[OutputTensor]:
    """The requested outputs, in the order requested: per image exit, FLOPs, confidence, class..."""
    top_k = request.knobs.top_k
    return [
        OutputTensor(
            output.name,
            "BYTES" if output.classification is not None else OUTPUTS[output.name][0],
            _output_array(output, result, top_k),
        )
        for output in request.outputs
    ]


def response_parameters(request: V2Input, result: ClassifyResult) -> dict[str, str | float | int]:
    """The response's `parameters`: the operating point, timings, and top_k when top-k outputs are sent."""
    parameters: dict[str, str | float | int] = {
        "operating_point": result.operating_point,
        "queue_ms": 1000 * result.queue_seconds,
        "inference_ms": 1000 * result.inference_seconds,
        "total_ms": 1000 * result.total_seconds,
    }
    if any(o.name in TOP_K_OUTPUTS for o in request.outputs):
        parameters["top_k"] = request.knobs.top_k  # what the top_k_* outputs hold per image
    return parameters


def encode_infer_response(request: V2Input, result: ClassifyResult) -> tuple[bytes, dict[str, str], str]:
    """REST: (body, headers, media type); binary outputs follow the JSON header in the order listed."""
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for output, tensor in zip(request.outputs, response_outputs(request, result), strict=True):
        array = tensor.array
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(array.shape)}
        if output.binary:
            raw = tensor_bytes(array)
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
        "parameters": response_parameters(request, result),
        "outputs": outputs,
    }
    if request.request_id is not None:
        document["id"] = request.request_id
    header = json.dumps(document, allow_nan=False).encode()
    if not buffers:
        return header, {}, "application/json"
    return header + b"".join(buffers), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


def tensor_bytes(array: np.ndarray) -> bytes:
    """The binary form of a tensor (REST's binary extension, gRPC's raw contents): little-endian values,
    BYTES as elements each prefixed by its length (uint32, little-endian)."""
    if array.dtype == object:
        parts = []
        for value in array.ravel():
            encoded = str(value).encode()
            parts.append(struct.pack("<I", len(encoded)) + encoded)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def describe_model(catalog: Catalog, model: str, version: str | None) -> dict[str, Any]:
    """Model metadata of `model` (a version of it when given): the versions that serve, else the one
    named; raises ModelNotFoundError or NotReadyError as `Catalog.find` does."""
    entry = catalog.find(model, version)
    manifest = entry.require_manifest()
    ready_versions = sorted((v.version for v in catalog.snapshot()[model] if v.ready), key=version_key)
    return model_metadata(model, [entry.version] if version else ready_versions, manifest)


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
                "shape": [-1, manifest.config.num_classes]
                if output == "probabilities"
                else [-1, -1]
                if output in TOP_K_OUTPUTS
                else [-1],
            }
            for output, (datatype, _) in OUTPUTS.items()
        ],
    }
