"""Image bytes -> the network's input tensor, following a bundle's `InputSpec`.

Every request image is untrusted: the declared size is checked from the header before any pixel is
decoded (decompression bombs), truncated files are errors (never silently padded), and no Pillow
exception escapes: each becomes an `InvalidInputError` naming the image. Then: first frame of
animations, EXIF orientation, conversion of any mode to the bundle's colour mode, resize (or resize +
centre crop), scaling to [0, 1], optional inversion, per-channel normalisation.

Alpha is composited onto black for single-channel (L) models and onto white for RGB models: the
grayscale default model was trained on Fashion-MNIST, light objects on a black background, so a
transparent background must read as black there; photographs with transparency conventionally sit
on white.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ranet_serve.errors import InvalidInputError, PayloadTooLargeError
from ranet_serve.export.manifest import InputSpec

ImageFile.LOAD_TRUNCATED_IMAGES = False

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_side: int = 16384


def sniff_image_type(data: bytes) -> str | None:
    """The image format by magic bytes, or None when the bytes are no known image format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def decode_image(data: bytes, limits: ImageLimits, index: int = 0) -> Image.Image:
    """Decode one image fully (first frame), with EXIF orientation applied."""
    prefix = f"image {index}"
    if not data:
        raise InvalidInputError(f"{prefix}: empty image data", index=index)
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLargeError(
            f"{prefix}: {len(data)} bytes exceeds the {limits.max_image_bytes}-byte image limit", index=index
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidInputError(f"{prefix}: image has no pixels", index=index)
            if width * height > limits.max_image_pixels or max(width, height) > limits.max_side:
                raise PayloadTooLargeError(
                    f"{prefix}: {width}x{height} pixels exceeds the limit of "
                    f"{limits.max_image_pixels} pixels "
                    f"({limits.max_side} per side)",
                    index=index,
                    width=width,
                    height=height,
                )
            image.seek(0)
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return oriented if oriented is not None else image
    except InvalidInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(
            f"{prefix}: image is too large to decode safely ({exc})", index=index
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputError(
            f"{prefix}: not a decodable image (unknown or corrupt format)", index=index
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise InvalidInputError(f"{prefix}: corrupt or truncated image ({exc})", index=index) from exc


def _to_mode(image: Image.Image, color_mode: str) -> Image.Image:
    """Any Pillow mode -> `L` or `RGB`, with high bit depths scaled rather than clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.float32) / 257.0  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        scale = 257.0 if array.max(initial=0) > 255 else 1.0  # PNG 16-bit often decodes as I
        image = Image.fromarray(np.clip(array / scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if array.size and float(np.nanmax(array)) <= 1.0:
            array = array * 255.0
        image = Image.fromarray(np.clip(np.nan_to_num(array) + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        background = (0, 0, 0) if color_mode == "L" else (255, 255, 255)
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        image = canvas
    return image.convert(color_mode)


def to_model_input(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """One decoded image -> float32 [C, H, W] ready for the `image` tensor."""
    picture = _to_mode(image, spec.color_mode)
    resample = _RESAMPLING[spec.interpolation]
    if spec.resize == "resize_shorter_center_crop":
        shorter = spec.resize_to or spec.size
        width, height = picture.size
        scale = shorter / min(width, height)
        size = (max(spec.size, round(width * scale)), max(spec.size, round(height * scale)))
        picture = picture.resize(size, resample, reducing_gap=3.0)
        left = (size[0] - spec.size) // 2
        top = (size[1] - spec.size) // 2
        picture = picture.crop((left, top, left + spec.size, top + spec.size))
    elif picture.size != (spec.size, spec.size):
        picture = picture.resize((spec.size, spec.size), resample, reducing_gap=3.0)
    array = np.asarray(picture, dtype=np.float32) * (1.0 / 255.0)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if spec.invert:
        array = 1.0 - array
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((array - mean) / std, dtype=np.float32)


def preprocess_batch(items: list[bytes], spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """Decode and preprocess every image: float32 [N, C, H, W]. Errors name the failing image."""
    out = np.empty((len(items), spec.channels, spec.size, spec.size), dtype=np.float32)
    for i, data in enumerate(items):
        out[i] = to_model_input(decode_image(data, limits, index=i), spec)
    return out
