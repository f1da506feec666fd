"""Image bytes -> the network's input tensor, following a bundle's `InputSpec`.

Every request image is untrusted. The pipeline is:

1. `sniff_image_type`: the format is read from the magic bytes, and only that one Pillow plugin may
   open the data. Pillow would otherwise try every plugin it has (EPS, PSD, FITS, ...), a much larger
   attack surface than the formats clients actually send.
2. `decode_image`: the declared size is checked against `ImageLimits` from the header alone, before
   any pixel is decoded (decompression bombs), then the first frame is decoded (a large JPEG at a
   reduced scale when the caller names the input it is for: see "Draft decoding" below). Truncated files
   are errors, never silently padded: this module relies on Pillow's default
   `ImageFile.LOAD_TRUNCATED_IMAGES = False` and does not change it (nor `Image.MAX_IMAGE_PIXELS`),
   because Pillow's settings are process-wide and other code may depend on them. (One gap is
   Pillow's: a PNG whose zlib stream *ends cleanly* before the last row decodes with the missing
   rows black. A cut-off file, the real-world case, is detected.) EXIF orientation is applied so the
   network sees the picture the way a person does.
3. `to_model_input`: any pixel mode -> the spec's colour mode, resize (or resize + centre crop),
   scale to [0, 1], optional inversion, per-channel normalisation, written as float32 [C, H, W].

Which error class answers which case (the API maps classes to statuses in `api/errors.py`):

* the HTTP `Content-Type` alone decides 415 (`UnsupportedMediaTypeError`, raised by the body
  readers). Once a client has said "this is an image", bytes that are no supported image format,
  or that fail to decode, are a bad request body: `InvalidInputError` (400, code `invalid_input`),
  whose `details["problem"]` says which: `empty`, `unsupported_format`, `corrupt`, `truncated`,
  `unsupported_mode`;
* more encoded bytes than `max_image_bytes`: `PayloadTooLargeError` (413, `payload_too_large`);
* more declared pixels than `max_image_pixels` or a side over `max_side`, including decompression
  bombs caught by Pillow's own guard: `ImageTooLargeError` (413, `image_too_large`).
  The aspect ratio is never limited: a 1 x 16000 strip is a valid image.

Alpha is composited onto black for single-channel (L) models and onto white for RGB models. The
grayscale models are trained on Fashion-MNIST, light garments on a black background, so a
transparent background must read as black there; for colour photographs, transparency conventionally
means "paper", i.e. white, which is how browsers and viewers show it. Compositing happens before the
resize, so colour hidden under alpha 0 never bleeds into visible pixels.

High bit-depth samples are scaled, not clipped, and keep their precision: 16-bit samples (modes
`I;16*`, and `I`, which is how Pillow widens 16-bit PGM/PPM) map 0..65535 onto 0..1, so 32768 gives
0.500008 rather than Pillow's `convert("L")` result of 255. Float images (mode `F`) are taken to hold
intensities in [0, 1], the convention of scientific float TIFFs and of torchvision's `to_tensor`.
Both stay in float (Pillow mode `F`) through the resize instead of being rounded to 8 bits first.

Draft decoding: a JPEG stores 8x8 blocks of frequencies, and libjpeg can decode them straight to 1/2,
1/4 or 1/8 of the size (Pillow's `Image.draft`), doing a fraction of the inverse DCT, chroma
upsampling and colour conversion; only the entropy decoding costs the same. A 4000x3000 phone photo
for a 224-pixel network otherwise spends several times the cheapest exit's cost decoding pixels that
the resize throws away (measured on a shared 2-core host: 55-78 ms in full, 21-34 ms at 1/4).
`draft_scale` picks the largest scale that keeps the decoded shorter side at `DRAFT_MARGIN` times what
the resample needs (the shorter side before the crop, or the square side for a plain resize), so the
resize still downscales by 2x or more and the network input stays within about twice a quality-90
JPEG's own compression error of a full decode (numbers at `DRAFT_MARGIN`). `preprocess_batch(...,
draft=False)` decodes every pixel, as `decode_image` does without a `target`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ranet_serve.errors import BundleError, InvalidInputError, PayloadTooLargeError
from ranet_serve.export.manifest import InputSpec

MIB = 1024 * 1024


class ImageTooLargeError(PayloadTooLargeError):
    """An image declares more pixels (or a longer side) than the server decodes.

    A `PayloadTooLargeError`, so the API answers 413, but with its own code: a client can then tell
    "this picture has too many pixels, downscale it" from "this body has too many bytes".
    """

    code = "image_too_large"


@dataclass(frozen=True)
class ImageLimits:
    """What one request image may cost before it is decoded.

    `max_image_pixels` and `max_side` bound the decoded memory (4 bytes per pixel at worst for the
    modes that reach the resize). Pillow's own guard (`Image.MAX_IMAGE_PIXELS`, about 89 M pixels,
    an error from twice that) still applies on top: a limit above it cannot let bigger images in.
    """

    max_image_bytes: int = 10 * MIB
    max_image_pixels: int = 40_000_000
    max_side: int = 16384

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageLimits.{name} must be at least 1, got {getattr(self, name)}")


# Sniffed name -> the Pillow plugin allowed to open it. `PPM` is kept for 16-bit PGM files.
_PILLOW_FORMATS = {
    "png": "PNG",
    "jpeg": "JPEG",  # also opens MPO (multi-picture JPEG from phones): Pillow decides after the header
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "ppm": "PPM",
}
SUPPORTED_FORMATS = tuple(_PILLOW_FORMATS)
# Where Pillow finds a PNG's EXIF (its eXIf chunk, or the text chunk older tools wrote): without either
# key, the image has no orientation to apply.
_PNG_EXIF_KEYS = frozenset({"exif", "Raw profile type exif"})

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)
# BITMAPCOREHEADER, BITMAPINFOHEADER and its successors: "BM" alone is too common at the start of text.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# Large downscales first shrink by an integer factor (fast box reduction), then resample the rest.
# A gap of 3 is indistinguishable from a full resample (Pillow's docs) and several times faster for
# photographs; downscales by less than 3x (every Fashion-MNIST-sized input) are not affected at all.
REDUCING_GAP = 3.0

# Draft decoding keeps the decoded shorter side at least DRAFT_MARGIN times the side the resample needs.
# Measured (benchmarks/decode.py's photo-like quality-90 JPEGs, ImageNet crop 224 of 256, two images per
# ratio, model input vs a full decode in normalised units, where one 8-bit level is 0.017): decoded at
# 2-2.5x the needed side, worst mean 0.012, 99th percentile 0.12 (hard coloured edges); at 1.05-1.8x,
# worst mean 0.036, 99th percentile 0.37, max 1.85. Quality-90 compression itself costs a mean of 0.006.
# Margin 1 would decode a 4000x3000 photo at 1/8 instead of 1/4, about a quarter faster again (16-24 vs
# 21-28 ms on the shared 2-core development host, full decode 55-78 ms), for three times the worst-case
# error.
DRAFT_MARGIN = 2
_DRAFT_SCALES = (8, 4, 2)  # the reductions libjpeg decodes to directly (Pillow's draft uses these)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}  # Pillow cannot convert these to every mode directly
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_SIXTEEN_BIT_SCALE = np.float32(255.0 / 65535.0)  # 65535 -> 255, i.e. 1.0 after the /255


def sniff_image_type(data: bytes) -> str | None:
    """The image format named by the magic bytes (one of `SUPPORTED_FORMATS`), or None.

    Cheap (a few byte comparisons) and decides which single Pillow plugin may parse the data; None
    means the bytes are no format this server decodes (text, JSON, an unsupported format).
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for prefix, name in _PREFIXES:
        if data.startswith(prefix):
            return name
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6") and data[2:3].isspace():
        return "ppm"
    return None


def declared_pixels(data: bytes) -> int | None:
    """Pixels an encoded image declares in its header; None when the header does not parse.

    Reads the header only (about 11 us for a small PNG), so the caller can judge how long decoding will
    take before doing it. None says nothing about why: `decode_image` reports that.
    """
    kind = sniff_image_type(data)
    if kind is None:
        return None
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        # PNG puts the IHDR chunk first, width and height as big-endian 32-bit numbers at bytes 16-24:
        # read in a microsecond, where parsing the header with Pillow took a tenth of the inline path.
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[kind]]).size
    except Exception:  # hostile or broken headers raise many types; the full decode names the problem
        return None
    return width * height


def decode_image(
    data: bytes, limits: ImageLimits, index: int = 0, *, target: InputSpec | None = None
) -> Image.Image:
    """Decode one untrusted image: its first frame, with EXIF orientation applied.

    `target` is the input the image is decoded for: a JPEG much larger than it needs is decoded at
    1/2, 1/4 or 1/8 scale (`draft_scale`), possibly straight to the target's colour mode (luma only
    for `L` models). None decodes every pixel at full size. The limits always judge the declared size.
    `index` is the image's position in the request; every error message starts with "image <index>:"
    and carries `index` in its details, so a client sending a batch knows which file to fix.
    No Pillow exception escapes: each becomes an `InvalidInputError` chained to its cause.
    """
    prefix = f"image {index}"
    if not data:
        raise InvalidInputError(f"{prefix}: empty image data (0 bytes)", index=index, problem="empty")
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLargeError(
            f"{prefix}: {len(data)} bytes exceeds the limit of {limits.max_image_bytes} bytes per image",
            index=index,
            size=len(data),
            limit=limits.max_image_bytes,
        )
    kind = sniff_image_type(data)
    if kind is None:
        raise InvalidInputError(
            f"{prefix}: not a supported image format (the data starts with {data[:8]!r}); "
            f"send one of {', '.join(SUPPORTED_FORMATS)}",
            index=index,
            problem="unsupported_format",
        )
    try:
        # Parses the header only: no pixel is decoded before the size check below.
        image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[kind]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's process-wide guard fired first (the warning is an exception only under `-W error`).
        raise ImageTooLargeError(
            f"{prefix}: the {kind} image declares too many pixels to decode safely ({exc})",
            index=index,
            limit=limits.max_image_pixels,
        ) from exc
    except Exception as exc:  # Pillow plugins raise many types on hostile input (struct.error, ...)
        raise InvalidInputError(
            f"{prefix}: not a valid {kind} image ({_reason(exc)})",
            index=index,
            problem="corrupt",
            format=kind,
        ) from exc

    width, height = image.size
    if width * height > limits.max_image_pixels or max(width, height) > limits.max_side:
        over = (
            f"the limit of {limits.max_image_pixels} pixels"
            if width * height > limits.max_image_pixels
            else f"the limit of {limits.max_side} pixels per side"
        )
        raise ImageTooLargeError(
            f"{prefix}: {width}x{height} pixels exceeds {over}",
            index=index,
            width=width,
            height=height,
            limit=limits.max_image_pixels,
            max_side=limits.max_side,
        )
    if width < 1 or height < 1:
        raise InvalidInputError(f"{prefix}: the image has no pixels", index=index, problem="corrupt")

    try:
        if target is not None and kind == "jpeg":
            _request_draft(image, target)  # inside the try: a hostile header may upset Pillow here too
        image.load()  # the first frame: Image.open leaves animations positioned there
    except Exception as exc:
        truncated = "truncated" in str(exc).lower()
        raise InvalidInputError(
            f"{prefix}: {'truncated' if truncated else 'corrupt'} {kind} image ({_reason(exc)})",
            index=index,
            problem="truncated" if truncated else "corrupt",
            format=kind,
        ) from exc

    if kind == "png" and not _PNG_EXIF_KEYS & image.info.keys():
        return image  # no EXIF to read: parsing for it took a quarter of a small PNG's decode
    # Unreadable EXIF is no reason to refuse pixels that decoded fine: they are served as stored.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def needed_side(spec: InputSpec) -> int:
    """The shortest side an image may have for `_resample` to only ever downscale it to `spec`.

    The crop policy scales the shorter side to `resize_to` (raised to `size`); a plain resize scales
    each side to `size`, so both sides, i.e. the shorter one, must reach it.
    """
    if spec.resize == "resize":
        return spec.size
    return max(spec.resize_to or spec.size, spec.size)


def draft_scale(width: int, height: int, spec: InputSpec) -> int:
    """The JPEG reduction (1, 2, 4 or 8) to decode a `width` x `height` image at for `spec`.

    The largest that keeps the decoded shorter side at `DRAFT_MARGIN` x `needed_side(spec)` or more
    (1: decode in full). Symmetric in width and height, so an EXIF rotation cannot change it.
    """
    fits = min(width, height) // (DRAFT_MARGIN * needed_side(spec))
    return next((scale for scale in _DRAFT_SCALES if fits >= scale), 1)


def draft_request(width: int, height: int, spec: InputSpec) -> tuple[int, int] | None:
    """The `size` to hand `Image.draft` for a `width` x `height` JPEG, or None to decode it at full size
    (`draft_scale` is 1: no reduction keeps enough pixels).

    Pillow decodes at the largest reduction that keeps both sides at or above the requested size,
    min(width // side, height // side) rounded down to 8, 4, 2 or 1: with a square request that is
    exactly `draft_scale`, and the decoded image is ceil(width / scale) x ceil(height / scale).
    """
    if draft_scale(width, height, spec) == 1:
        return None
    side = DRAFT_MARGIN * needed_side(spec)
    return side, side


def _request_draft(image: Image.Image, spec: InputSpec) -> None:
    """Ask the JPEG decoder for a reduced scale (and, for RGB data, the model's colour mode) before
    `load`. CMYK and other modes keep their mode: Pillow converts only RGB data while decoding."""
    request = draft_request(image.width, image.height, spec)
    if request is not None:
        image.draft(spec.color_mode if image.mode == "RGB" else None, request)


def _reason(exc: BaseException) -> str:
    """Pillow's message, bounded: it can quote file content."""
    text = str(exc) or type(exc).__name__
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", text)  # Pillow names its file object
    return text if len(text) <= 160 else text[:157] + "..."


def to_model_input(
    image: Image.Image, spec: InputSpec, *, out: np.ndarray | None = None, index: int = 0
) -> np.ndarray:
    """One decoded image -> float32 [C, H, W] in the model's input space (contiguous).

    `out`, when given, is a float32 [C, H, W] view to write into: `preprocess_batch` passes a slice of
    its batch array, so no per-image array is allocated and copied.
    """
    channels, size = spec.channels, spec.size
    if spec.color_mode == "RGB" and channels != 3:
        raise BundleError(f"the input spec asks for RGB images with {channels} channels")
    try:
        picture = _resample(_to_color_mode(image, spec.color_mode), spec)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(
            f"image {index}: cannot convert pixel mode {image.mode} to {spec.color_mode} ({_reason(exc)})",
            index=index,
            problem="unsupported_mode",
            mode=image.mode,
        ) from exc
    pixels = np.asarray(picture)  # uint8 [H, W] / [H, W, 3], or float32 [H, W] on the 0..255 scale
    planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # a view, no copy
    if out is None:
        out = np.empty((channels, size, size), dtype=np.float32)
    scale, offset = _affine(spec.mean, spec.std, spec.invert)
    # One multiply-add does /255, the inversion and the normalisation; a single gray plane broadcasts
    # to every channel of a 3-channel model fed a 16-bit grayscale image.
    np.multiply(planes, scale, out=out)
    out += offset
    return out


@functools.lru_cache(maxsize=64)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], invert: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) with x = pixel * scale + offset, pixel on the 0..255 scale.

    x = (p/255 - mean) / std, or ((1 - p/255) - mean) / std when inverting. Computed in float64 and
    cached per spec, so the per-image work is one fused pass in float32.
    """
    m = np.asarray(mean, dtype=np.float64)[:, None, None]
    s = np.asarray(std, dtype=np.float64)[:, None, None]
    if invert:
        scale, offset = -1.0 / (255.0 * s), (1.0 - m) / s
    else:
        scale, offset = 1.0 / (255.0 * s), -m / s
    arrays = (scale.astype(np.float32), offset.astype(np.float32))
    for array in arrays:
        array.setflags(write=False)  # shared between calls
    return arrays


def _to_color_mode(image: Image.Image, color_mode: str) -> Image.Image:
    """Any Pillow mode -> `color_mode` (`L` or `RGB`), or `F` (0..255 scale) for high bit depths."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        scaled = np.asarray(image).astype(np.float32) * _SIXTEEN_BIT_SCALE
        if mode == "I":  # 32-bit container: values outside the 16-bit range clip to black / white
            np.clip(scaled, 0.0, 255.0, out=scaled)
        return Image.fromarray(scaled)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.clip(values, 0.0, 1.0) * np.float32(255.0))
    if mode in _PREMULTIPLIED:
        image = image.convert(_PREMULTIPLIED[mode])
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite(image, color_mode)
    if image.mode == color_mode:
        return image
    try:
        return image.convert(color_mode)
    except ValueError:
        return image.convert("RGB").convert(color_mode)  # e.g. LAB -> L exists only through RGB


def _composite(image: Image.Image, color_mode: str) -> Image.Image:
    """Flatten transparency (alpha channel, or a palette / tRNS transparent colour) onto the background.

    Black for L models, white for RGB models: see the module docstring.
    """
    rgba = image.convert("RGBA")  # applies palette and single-colour transparency as alpha
    background = 0 if color_mode == "L" else (255, 255, 255)
    canvas = Image.new(color_mode, rgba.size, background)
    canvas.paste(rgba.convert(color_mode), mask=rgba.getchannel("A"))
    return canvas


def _resample(picture: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize to size x size, or scale the shorter side to `resize_to` and take the centre square.

    The crop policy runs as one resample of the centre box of the source (Pillow's `box`), which is
    resize-then-crop without rounding the intermediate size and without resampling pixels that the
    crop throws away. A `resize_to` below `size` is raised to `size`, so the crop never leaves the image.
    """
    size = spec.size
    width, height = picture.size
    resample = _RESAMPLING[spec.interpolation]
    if spec.resize == "resize":
        if (width, height) == (size, size):
            return picture
        return picture.resize((size, size), resample, reducing_gap=REDUCING_GAP)
    shorter = max(spec.resize_to or size, size)
    side = min(width, height) * size / shorter  # source pixels that end up in the crop
    if side == size and (width, height) == (size, size):
        return picture
    left, top = (width - side) / 2, (height - side) / 2
    return picture.resize(
        (size, size), resample, box=(left, top, left + side, top + side), reducing_gap=REDUCING_GAP
    )


def preprocess_batch(
    items: Sequence[bytes], spec: InputSpec, limits: ImageLimits, *, draft: bool = True
) -> np.ndarray:
    """Decode and preprocess every image into one float32 [N, C, H, W] array.

    `draft` lets large JPEGs decode at a reduced scale (see the module docstring: 2-3x faster for a
    12 M pixel photo, the input within about twice a JPEG's compression error of a full decode); False
    decodes every pixel, bit for bit as before draft decoding existed.
    The first bad image fails the whole batch with an error naming its index ("image 2: ...",
    `details["index"] == 2`): a request is answered as a whole, and the client learns which file to fix.
    """
    out = np.empty((len(items), spec.channels, spec.size, spec.size), dtype=np.float32)
    target = spec if draft else None
    for i, data in enumerate(items):
        to_model_input(decode_image(data, limits, index=i, target=target), spec, out=out[i], index=i)
    return out
