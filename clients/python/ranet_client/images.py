"""Turn what callers hold (paths, bytes, file objects, PIL images, numpy arrays) into encoded image files.

The server decodes and resizes images itself, so the client sends files, never tensors: encoded files
are what curl, browsers and cameras produce, and PNG keeps uint8 pixels exact. numpy arrays are encoded
to PNG by a small built-in encoder, so the client needs neither Pillow nor numpy unless the caller
already uses them.
"""

from __future__ import annotations

import io
import mimetypes
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

# What `classify` accepts for one image. Arrays and PIL images are typed loosely (Any) on purpose: the
# client does not import numpy or Pillow.
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Any

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# channels -> PNG colour type: grey, grey+alpha, RGB, RGBA.
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


@dataclass(frozen=True)
class EncodedImage:
    """An image file ready to send: a display name, the bytes and their media type."""

    name: str
    data: bytes
    content_type: str


def sniff_content_type(data: bytes) -> str:
    """The media type from the file's magic bytes (the server sniffs too; this keeps the header honest)."""
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


def encode_png(array: Any) -> bytes:
    """Encode a uint8 numpy array (H x W, or H x W x C with C in 1..4) as PNG.

    Raises TypeError for other dtypes (the caller must choose how to scale floats) and ValueError for
    other shapes or empty images.
    """
    if str(getattr(array, "dtype", "")) != "uint8":
        raise TypeError(
            f"numpy images must be uint8 (got dtype {getattr(array, 'dtype', type(array).__name__)}); "
            "scale and convert them first, e.g. (x * 255).clip(0, 255).astype('uint8')"
        )
    shape = tuple(array.shape)
    if len(shape) == 2:
        height, width, channels = shape[0], shape[1], 1
    elif len(shape) == 3 and shape[2] in _PNG_COLOR_TYPE:
        height, width, channels = shape
    else:
        raise ValueError(f"numpy images must be H x W or H x W x C with C in 1..4, got shape {shape}")
    if height == 0 or width == 0:
        raise ValueError(f"empty image of shape {shape}")
    pixels = array.tobytes(order="C")
    stride = width * channels
    # Filter type 0 (None) on every row: the server decodes either way and encoding stays trivial.
    raw = b"".join(b"\x00" + pixels[row * stride : (row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def _is_pil_image(value: object) -> bool:
    module = sys.modules.get("PIL.Image")  # only loaded if the caller uses Pillow
    return module is not None and isinstance(value, module.Image)


def encode_image(value: ImageInput, index: int = 0) -> EncodedImage:
    """One image as a file; `index` names nameless inputs (`image_3.png`).

    Strings are paths (never base64: a caller with base64 can decode it). Raises FileNotFoundError for
    a missing path and TypeError for an unsupported type.
    """
    if isinstance(value, EncodedImage):
        return value
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        data = path.read_bytes()
        guessed = mimetypes.guess_type(path.name)[0]
        sniffed = sniff_content_type(data)
        content_type = sniffed if sniffed != "application/octet-stream" else (guessed or sniffed)
        return EncodedImage(path.name, data, content_type)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return EncodedImage(
            f"image_{index}{_suffix(sniff_content_type(data))}", data, sniff_content_type(data)
        )
    if _is_pil_image(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")  # type: ignore[union-attr]
        return EncodedImage(f"image_{index}.png", buffer.getvalue(), "image/png")
    if hasattr(value, "__array_interface__") and hasattr(value, "dtype"):
        return EncodedImage(f"image_{index}.png", encode_png(value), "image/png")
    if hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, bytes):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        name = Path(str(getattr(value, "name", f"image_{index}"))).name
        return EncodedImage(name, data, sniff_content_type(data))
    raise TypeError(
        f"cannot send {type(value).__name__} as an image; use a path, bytes, a binary file, "
        "a PIL image or a uint8 numpy array"
    )


def _suffix(content_type: str) -> str:
    return {"image/jpeg": ".jpg", "application/octet-stream": ".bin"}.get(
        content_type, "." + content_type.split("/")[-1]
    )


def encode_images(images: ImageInput | list[ImageInput] | tuple[ImageInput, ...]) -> list[EncodedImage]:
    """A list or tuple is many images; anything else (including one numpy array) is one image."""
    items = list(images) if isinstance(images, list | tuple) else [images]
    if not items:
        raise ValueError("no images to send")
    return [encode_image(item, index) for index, item in enumerate(items)]
