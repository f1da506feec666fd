"""Read an ONNX model's initializers (weights) as numpy arrays without the `onnx` package.

The CPU onnxruntime runtime gives its two session sets one copy of each stage's weights
(`runtimes.OnnxRuntime`): it reads the initializers of a graph onnxruntime has just optimised and hands
them to both sessions. The serving image does not install `onnx` (an export-only extra, see
pyproject.toml), so this module decodes the few protobuf fields it needs straight from the wire format
(https://protobuf.dev/programming-guides/encoding/): ModelProto.graph (7), GraphProto.initializer (5),
and TensorProto's dims (1), data_type (2), name (8), raw_data (9) and data_location (14), field numbers
as in onnx.proto. Every other field is skipped by its length.

Only tensors stored inline as `raw_data` in a fixed-width numeric type are returned: that is how
onnxruntime writes every initializer it serialises. Anything else (typed `float_data` lists, strings,
external data) is left out, and the session then loads that tensor from the model itself as before.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterator

import numpy as np

# TensorProto.DataType values with a fixed-width numpy equivalent.
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# Weights start on a 64-byte boundary, as onnxruntime's own allocator places them: numpy's large
# allocations are only 16-byte aligned, and AVX-512 kernels read aligned 64-byte lines.
ALIGNMENT_BYTES = 64


class ModelFormatError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


def read_initializers(model: bytes | bytearray | memoryview | mmap.mmap) -> dict[str, np.ndarray]:
    """The model's inline numeric initializers by name, each a fresh, aligned, C-contiguous array.

    The arrays copy the bytes they were read from, so `model` (for example an mmap) may be closed
    afterwards. Raises ModelFormatError if the bytes do not parse.
    """
    if sys.byteorder != "little":  # raw_data is little-endian; not worth a byte swap on no real host
        return {}
    # Released on the way out, errors included, so that the caller can close an mmap at once.
    with memoryview(model) as view, view.cast("B") as data:
        return _read(data)


def _read(data: memoryview) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for field, _, start, end in _fields(data, 0, len(data)):
        if field != 7:  # ModelProto.graph
            continue
        for graph_field, _, tensor_start, tensor_end in _fields(data, start, end):
            if graph_field != 5:  # GraphProto.initializer
                continue
            tensor = _tensor(data, tensor_start, tensor_end)
            if tensor is not None:
                name, array = tensor
                arrays[name] = array
    return arrays


def _tensor(data: memoryview, start: int, end: int) -> tuple[str, np.ndarray] | None:
    dims: list[int] = []
    dtype_code = 0
    name = ""
    raw: tuple[int, int] | None = None
    location = 0
    for field, wire, value, value_end in _fields(data, start, end):
        if field == 1:  # dims: repeated int64, packed or not
            if wire == _LEN:
                position = value
                while position < value_end:
                    dim, position = _varint(data, position)
                    dims.append(dim)
            else:
                dims.append(value)
        elif field == 2 and wire == _VARINT:
            dtype_code = value
        elif field == 8 and wire == _LEN:
            name = bytes(data[value:value_end]).decode("utf-8")
        elif field == 9 and wire == _LEN:
            raw = (value, value_end)
        elif field == 14 and wire == _VARINT:
            location = value
    dtype = _DTYPES.get(dtype_code)
    if raw is None or dtype is None or location == _EXTERNAL or not name:
        return None
    if any(dim < 0 or dim >= 1 << 62 for dim in dims):
        raise ModelFormatError(f"initializer {name!r}: dims {dims} out of range")
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if count * dtype.itemsize != raw[1] - raw[0]:
        raise ModelFormatError(f"initializer {name!r}: {raw[1] - raw[0]} bytes for dims {dims} of {dtype}")
    array = aligned_empty(tuple(dims), dtype)
    array.reshape(-1).view(np.uint8)[:] = np.frombuffer(data[raw[0] : raw[1]], dtype=np.uint8)
    return name, array


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ALIGNMENT_BYTES boundary."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(nbytes + ALIGNMENT_BYTES, dtype=np.uint8)
    offset = -buffer.ctypes.data % ALIGNMENT_BYTES
    return buffer[offset : offset + nbytes].view(dtype).reshape(shape)


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value, end) for each field of the message in data[start:end].

    For length-delimited fields `value`..`end` is the payload's span; for varints `value` is the
    number (and `end` the position after it); fixed-width fields are skipped over and yield 0.
    """
    position = start
    while position < end:
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, position = _varint(data, position)
            yield field, wire, value, position
        elif wire == _LEN:
            length, position = _varint(data, position)
            if position + length > end:
                raise ModelFormatError("a length-delimited field runs past its message")
            yield field, wire, position, position + length
            position += length
        elif wire == _I64:
            position += 8
            yield field, wire, 0, position
        elif wire == _I32:
            position += 4
            yield field, wire, 0, position
        else:
            raise ModelFormatError(f"unsupported protobuf wire type {wire}")
    if position != end:
        raise ModelFormatError("a fixed-width field runs past its message")


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ModelFormatError("truncated or overlong varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
