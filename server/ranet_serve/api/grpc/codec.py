"""gRPC messages to and from the v2 codec's types: the wire differs, nothing else does.

A `ModelInferRequest` becomes the same `InferenceRequest` fields REST parses from JSON (the schema's
limits and messages apply) plus each input's binary data (`raw_input_contents`), and is decoded by
`v2.codec.decode_request`; typed contents travel in `data` (FP32 values as a float32 array, BYTES
elements as `bytes`). Answers are `v2.codec.response_outputs` in `raw_output_contents`, one entry per
output in order, as Triton answers (tritonclient reads outputs only from there).

Parameters (`InferParameter`) become the JSON value of their one field, so the knobs go through the
same parsers: `max_flops` "12M" (string) or 12e6 (double), `confidence` 1.0, `top_k` 3 (int64).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ranet_serve.api.grpc.protos import grpc_service_pb2 as pb
from ranet_serve.api.service import ClassifyResult, ExitUpdate
from ranet_serve.api.v2.codec import (
    V2Input,
    decode_request,
    response_outputs,
    response_parameters,
    tensor_bytes,
    validate_request,
)
from ranet_serve.errors import InvalidRequestError


def parameter_value(parameter: pb.InferParameter) -> object:
    """The value an `InferParameter` holds (None when none of its fields is set)."""
    field = parameter.WhichOneof("parameter_choice")
    return None if field is None else getattr(parameter, field)


def parameters_dict(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def set_parameter(parameter: pb.InferParameter, value: object) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> object:
    """An input's typed contents as `data`: FP32 values as float32, BYTES elements; None when absent.

    Other datatypes are refused by the decoder before it reads `data`, whatever their contents."""
    if not tensor.HasField("contents"):
        return None
    contents = tensor.contents
    datatype = tensor.datatype.upper()
    if datatype == "FP32":
        return np.asarray(contents.fp32_contents, dtype=np.float32)
    if datatype == "BYTES":
        return list(contents.bytes_contents)
    return None


def payload_bytes(request: pb.ModelInferRequest) -> int:
    """About how many bytes of tensor data a request carries (whether to decode it off the loop)."""
    total = sum(len(raw) for raw in request.raw_input_contents)
    for tensor in request.inputs:
        total += 4 * len(tensor.contents.fp32_contents)
        total += sum(len(item) for item in tensor.contents.bytes_contents)
    return total


def parse_model_infer(request: pb.ModelInferRequest) -> V2Input:
    """Decode a `ModelInferRequest` (raises InvalidInputError / InvalidRequestError as REST does)."""
    raw_count = len(request.raw_input_contents)
    if raw_count and raw_count != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {raw_count} entries for {len(request.inputs)} inputs: send one per "
            "input, or put every input's values in its contents"
        )
    for tensor in request.inputs if raw_count else ():
        if tensor.HasField("contents"):
            raise InvalidRequestError(
                f"input {tensor.name[:64]!r} has both contents and raw_input_contents: send one of them"
            )
    document: dict[str, Any] = {
        "id": request.id or None,
        "parameters": parameters_dict(request.parameters),
        "inputs": [
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": parameters_dict(tensor.parameters),
                "data": _contents(tensor),
            }
            for tensor in request.inputs
        ],
        "outputs": [
            {"name": output.name, "parameters": parameters_dict(output.parameters)}
            for output in request.outputs
        ]
        or None,
    }
    raw = list(request.raw_input_contents) if raw_count else [None] * len(request.inputs)
    return decode_request(validate_request(document), raw)


def encode_model_infer(request: V2Input, result: ClassifyResult) -> pb.ModelInferResponse:
    """The answer: the same output tensors as REST, each in `raw_output_contents`."""
    response = pb.ModelInferResponse(
        model_name=result.model, model_version=result.version, id=request.request_id or ""
    )
    for key, value in response_parameters(request, result).items():
        set_parameter(response.parameters[key], value)
    for tensor in response_outputs(request, result):
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.array.shape))
        response.raw_output_contents.append(tensor_bytes(tensor.array))
    return response


def encode_exit_response(request: V2Input, update: ExitUpdate, last: bool) -> pb.ModelStreamInferResponse:
    """One exit of one image of a streamed request: the request's outputs for that image alone
    (shape [1, ...]) and parameters `image`, `final` (the exit that answers the image) and Triton's
    `triton_final_response` (true on the request's last response)."""
    result = ClassifyResult(
        model=update.model,
        version=update.version,
        operating_point="",
        labels=update.labels,
        images=(update.result,),
        queue_seconds=0.0,
        inference_seconds=0.0,
        total_seconds=0.0,
    )
    response = pb.ModelInferResponse(
        model_name=update.model, model_version=update.version, id=request.request_id or ""
    )
    for key, value in (("image", update.image), ("final", update.final), ("triton_final_response", last)):
        set_parameter(response.parameters[key], value)
    for tensor in response_outputs(request, result):
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.array.shape))
        response.raw_output_contents.append(tensor_bytes(tensor.array))
    return pb.ModelStreamInferResponse(infer_response=response)


def model_metadata_response(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """`v2.codec.model_metadata`'s document as its message."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in metadata["inputs"]],
        outputs=[
            tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in metadata["outputs"]
        ],
    )
