"""Image decoding and preprocessing: every mode and format reaches the network input with the right
numbers, and every bad image becomes a clear InvalidInputError subclass naming the image, never a Pillow
exception. All images are generated here with Pillow, so the corpus is exact and nothing is committed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from ranet_serve.api.images import (
    SUPPORTED_FORMATS,
    ImageLimits,
    ImageTooLargeError,
    decode_image,
    preprocess_batch,
    sniff_image_type,
    to_model_input,
)
from ranet_serve.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ranet_serve.errors import InvalidInputError, PayloadTooLargeError
from ranet_serve.export.defaults import IMAGENET_MEAN, IMAGENET_STD
from ranet_serve.export.manifest import InputSpec

LIMITS = ImageLimits()
FMNIST = InputSpec(channels=1, color_mode="L", size=28, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
# Identity normalisation: outputs are the [0, 1] intensities themselves, so expectations read plainly.
GRAY8 = InputSpec(channels=1, color_mode="L", size=8, mean=(0.0,), std=(1.0,))
RGB8 = InputSpec(channels=3, color_mode="RGB", size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
ONE_LEVEL = 1 / 255 + 1e-6  # one 8-bit rounding step


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 0, channels: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG header declaring width x height, with pixel data for one row only.

    A decompression bomb in miniature: tiny on the wire, enormous once decoded. Decoding it would fail
    as truncated, so an `ImageTooLargeError` proves the size was checked before any pixel was decoded.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    stream = zlib.compressobj()  # flushed, not finished: the decoder expects more rows and finds IEND
    row = stream.compress(b"\x00" * (width + 1)) + stream.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def gray(data: bytes, spec: InputSpec = GRAY8) -> np.ndarray:
    return preprocess_batch([data], spec, LIMITS)[0]


# --------------------------------------------------------------------------- normalisation, geometry


@pytest.mark.parametrize("value", [0, 1, 127, 153, 255])
def test_uniform_gray_image_normalises_to_the_formula(value: int) -> None:
    x = preprocess_batch([encode(Image.new("L", (28, 28), value))], FMNIST, LIMITS)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (value / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    np.testing.assert_allclose(x, expected, rtol=0, atol=2e-6)


def test_rgb_normalisation_is_per_channel() -> None:
    spec = InputSpec(channels=3, color_mode="RGB", size=8, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = gray(encode(Image.new("RGB", (8, 8), (10, 128, 250))), spec)
    expected = [
        (c / 255 - m) / s for c, m, s in zip((10, 128, 250), IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    np.testing.assert_allclose(x, np.broadcast_to(np.array(expected)[:, None, None], (3, 8, 8)), atol=2e-6)


def test_invert_maps_x_to_one_minus_x_before_normalising() -> None:
    spec = FMNIST.model_copy(update={"invert": True})
    x = gray(encode(Image.new("L", (28, 28), 51)), spec)
    np.testing.assert_allclose(x, ((1 - 51 / 255) - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], atol=2e-6)
    identity = GRAY8.model_copy(update={"invert": True})
    pattern = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    np.testing.assert_allclose(
        gray(encode(Image.fromarray(pattern)), identity)[0], 1 - pattern / 255, atol=1e-6
    )


def test_plain_resize_matches_the_training_pipeline_exactly() -> None:
    # Training (data/datasets.py) does image.convert(mode).resize((s, s), BILINEAR) on uint8, then /255.
    image = noise((56, 42), seed=3)
    training = np.asarray(image.resize((28, 28), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    served = gray(encode(image), GRAY8.model_copy(update={"size": 28}))[0]
    np.testing.assert_allclose(served, training, atol=1e-6)


def test_large_downscales_stay_within_a_gray_level_of_a_full_resample() -> None:
    # reducing_gap only engages beyond a 3x downscale; on a smooth photo-like image it is invisible.
    ramp = np.add.outer(np.arange(600), np.arange(800)) * (255 / 1398)
    image = Image.fromarray(ramp.astype(np.uint8))
    full = np.asarray(image.resize((28, 28), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    served = gray(encode(image), GRAY8.model_copy(update={"size": 28}))[0]
    assert np.abs(served - full).max() <= 1.5 / 255


def _grid(width: int, height: int) -> np.ndarray:
    """value = 5 * column + 3 * row: every pixel's source position can be read back from its value."""
    return (5 * np.arange(width)[None, :] + 3 * np.arange(height)[:, None]).astype(np.uint8)


def test_centre_crop_without_scaling_is_the_exact_centre() -> None:
    spec = GRAY8.model_copy(update={"size": 10, "resize": "resize_shorter_center_crop", "resize_to": 20})
    x = gray(encode(Image.fromarray(_grid(40, 20))), spec)[0]  # shorter side already 20: pure crop
    np.testing.assert_allclose(x, _grid(40, 20)[5:15, 15:25] / 255, atol=1e-6)
    tall = gray(encode(Image.fromarray(_grid(20, 40))), spec)[0]
    np.testing.assert_allclose(tall, _grid(20, 40)[15:25, 5:15] / 255, atol=1e-6)


def test_centre_crop_after_scaling_samples_the_expected_source_pixels() -> None:
    # 40x20 -> shorter side 10 -> 20x10 -> centre 10x10 = source columns 10..29, all rows, at half
    # resolution. Nearest picks the centre of each 2x2 source cell: column 11 + 2j, row 1 + 2i.
    spec = GRAY8.model_copy(
        update={
            "size": 10,
            "resize": "resize_shorter_center_crop",
            "resize_to": 10,
            "interpolation": "nearest",
        }
    )
    x = gray(encode(Image.fromarray(_grid(40, 20))), spec)[0]
    i, j = np.mgrid[0:10, 0:10]
    np.testing.assert_allclose(x, (5 * (11 + 2 * j) + 3 * (1 + 2 * i)) / 255, atol=1e-6)
    # resize_to below size would crop past the image: it is raised to size, as is a missing resize_to.
    for resize_to in (4, None):
        same = gray(encode(Image.fromarray(_grid(40, 20))), spec.model_copy(update={"resize_to": resize_to}))
        np.testing.assert_array_equal(same[0], x)


def test_one_pixel_image_fills_the_whole_input() -> None:
    for spec in (GRAY8, GRAY8.model_copy(update={"resize": "resize_shorter_center_crop", "resize_to": 9})):
        np.testing.assert_allclose(gray(encode(Image.new("L", (1, 1), 200)), spec), 200 / 255, atol=1e-6)


@pytest.mark.parametrize("size", [(4000, 1), (1, 4000), (16000, 2)])
def test_extreme_aspect_ratios_succeed(size: tuple[int, int]) -> None:
    horizontal = size[0] > size[1]
    long_side = max(size)
    ramp = (np.arange(long_side) * 255 // (long_side - 1)).astype(np.uint8)
    pixels = np.tile(ramp, (size[1], 1)) if horizontal else np.tile(ramp[:, None], (1, size[0]))
    data = encode(Image.fromarray(pixels))
    x = gray(data, GRAY8.model_copy(update={"size": 28}))[0]
    profile = x[0] if horizontal else x[:, 0]
    assert np.all(np.diff(profile) > 0)  # the ramp survives along the long axis...
    assert profile[0] < 0.03 and profile[-1] > 0.97
    across = x if horizontal else x.T
    np.testing.assert_allclose(across, np.broadcast_to(profile, (28, 28)), atol=1e-6)  # ...constant across
    cropped = gray(data, GRAY8.model_copy(update={"size": 28, "resize": "resize_shorter_center_crop"}))
    middle = 127.5 / 255
    assert cropped.shape == (1, 28, 28) and np.abs(cropped - middle).max() < 0.02  # the centre of the ramp


# --------------------------------------------------------------------------- modes


RED = (1.0, 0.0, 0.0)
RED_LUMA = 76 / 255  # ITU-R 601 luma of pure red, as Pillow computes it: 0.299 * 255 = 76.2


def _palette_red() -> Image.Image:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    return image


def _mode_image(mode: str) -> Image.Image:
    """An 8x8 uniform image of each mode, filled so the expected intensities are known."""
    if mode == "P":
        return _palette_red()
    if mode == "PA":
        image = _palette_red().convert("PA")
        assert image.mode == "PA"
        return image
    if mode == "I;16B":
        return Image.frombytes("I;16B", (8, 8), np.full((8, 8), 32768, dtype=">u2").tobytes())
    if mode == "LAB":
        return Image.new("LAB", (8, 8), (138, 209, 198))  # sRGB (251, 5, 4), nearly pure red
    fills: dict[str, object] = {
        "1": 1,
        "L": 51,
        "LA": (51, 255),
        "La": (51, 255),
        "RGB": (255, 0, 0),
        "RGBA": (255, 0, 0, 255),
        "RGBa": (255, 0, 0, 255),
        "RGBX": (255, 0, 0, 0),
        "CMYK": (0, 255, 255, 0),
        "YCbCr": Image.new("RGB", (1, 1), (255, 0, 0)).convert("YCbCr").getpixel((0, 0)),
        "HSV": (0, 255, 255),
        "I": 32768,
        "I;16": 65535,
        "F": 0.25,
    }
    return Image.new(mode, (8, 8), fills[mode])  # type: ignore[arg-type]


# mode -> (expected L intensity, expected RGB intensities, tolerance)
MODE_CASES: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "1": (1.0, (1.0,) * 3, 1e-6),
    "L": (0.2, (0.2,) * 3, 1e-6),
    "LA": (0.2, (0.2,) * 3, 1e-6),
    "La": (0.2, (0.2,) * 3, 1e-6),
    "P": (RED_LUMA, RED, 1e-6),
    "PA": (RED_LUMA, RED, 1e-6),
    "RGB": (RED_LUMA, RED, 1e-6),
    "RGBA": (RED_LUMA, RED, 1e-6),
    "RGBa": (RED_LUMA, RED, 1e-6),
    "RGBX": (RED_LUMA, RED, 1e-6),
    "CMYK": (RED_LUMA, RED, 1e-6),
    "YCbCr": (RED_LUMA, RED, 2 / 255),
    "LAB": (RED_LUMA, RED, 6 / 255),
    "HSV": (RED_LUMA, RED, 1e-6),
    "I": (32768 / 65535, (32768 / 65535,) * 3, 1e-6),  # scaled, not clipped to 255
    "I;16": (1.0, (1.0,) * 3, 1e-6),
    "I;16B": (32768 / 65535, (32768 / 65535,) * 3, 1e-6),
    "F": (0.25, (0.25,) * 3, 1e-6),
}


@pytest.mark.parametrize("mode", sorted(MODE_CASES))
def test_every_pillow_mode_converts_to_l_and_rgb(mode: str) -> None:
    image = _mode_image(mode)
    assert image.mode == mode
    luminance, rgb, tolerance = MODE_CASES[mode]
    x = to_model_input(image, GRAY8)
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x, luminance, atol=tolerance)
    y = to_model_input(image, RGB8)
    assert y.shape == (3, 8, 8)
    np.testing.assert_allclose(y, np.broadcast_to(np.array(rgb)[:, None, None], (3, 8, 8)), atol=tolerance)


def test_sixteen_bit_png_tiff_and_pgm_keep_their_precision() -> None:
    samples = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    image = Image.fromarray(samples)
    assert image.mode == "I;16"
    spec = GRAY8.model_copy(update={"size": 4})
    expected = samples / 65535  # 32768 -> 0.500008, not 128/255 = 0.50196 (no 8-bit rounding first)
    for fmt, decoded_mode in (("PNG", "I;16"), ("TIFF", "I;16"), ("PPM", "I")):
        data = encode(image, fmt)
        assert decode_image(data, LIMITS).mode == decoded_mode
        np.testing.assert_allclose(gray(data, spec)[0], expected, rtol=0, atol=1e-6)
    rgb = gray(encode(image), RGB8.model_copy(update={"size": 4}))
    np.testing.assert_allclose(rgb, np.broadcast_to(expected, (3, 4, 4)), atol=1e-6)  # gray on every channel


def test_thirty_two_bit_and_float_images_clip_outside_their_range() -> None:
    ints = Image.fromarray(np.array([[-5, 0, 65535, 70000]] * 4, dtype=np.int32))
    floats = Image.fromarray(np.array([[np.nan, -1.0, 0.25, 2.0]] * 4, dtype=np.float32))
    spec = GRAY8.model_copy(update={"size": 4})
    np.testing.assert_allclose(gray(encode(ints, "TIFF"), spec)[0, 0], [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(gray(encode(floats, "TIFF"), spec)[0, 0], [0, 0, 0.25, 1], atol=1e-6)


def test_cmyk_jpeg_decodes_to_its_colour() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # red ink-free cyan
    assert decode_image(data, LIMITS).mode == "CMYK"
    x = gray(data, RGB8)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), RED, atol=0.02)
    np.testing.assert_allclose(gray(data, GRAY8), RED_LUMA, atol=0.02)


def test_transparency_is_composited_on_black_for_gray_and_white_for_rgb_models() -> None:
    # Fully transparent: nothing of the hidden colour may show.
    clear = encode(Image.new("RGBA", (8, 8), (10, 200, 30, 0)))
    np.testing.assert_allclose(gray(clear, RGB8), 1.0, atol=1e-6)
    np.testing.assert_allclose(gray(clear, GRAY8), 0.0, atol=1e-6)
    # Half transparent red: 255 * a + background * (1 - a), a = 128/255.
    half = encode(Image.new("RGBA", (8, 8), (255, 0, 0, 128)))
    np.testing.assert_allclose(gray(half, RGB8)[:, 0, 0], [1.0, 127 / 255, 127 / 255], atol=ONE_LEVEL)
    np.testing.assert_allclose(gray(half, GRAY8), 76 * 128 / 255 / 255, atol=ONE_LEVEL)
    la = encode(Image.new("LA", (8, 8), (200, 128)))
    np.testing.assert_allclose(gray(la, GRAY8), 200 * 128 / 255 / 255, atol=ONE_LEVEL)  # 100.4 -> 100
    np.testing.assert_allclose(gray(la, RGB8), (200 * 128 + 255 * 127) / 255 / 255, atol=ONE_LEVEL)


def test_palette_png_with_a_transparent_index() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    image.paste(1, (4, 0, 8, 8))  # right half: index 1 (green), declared transparent below
    data = encode(image, transparency=1)
    assert decode_image(data, LIMITS).info.get("transparency") == 1
    rgb = gray(data, RGB8)
    np.testing.assert_allclose(
        rgb[:, :, :4], np.broadcast_to(np.array(RED)[:, None, None], (3, 8, 4)), atol=1e-6
    )
    np.testing.assert_allclose(rgb[:, :, 4:], 1.0, atol=1e-6)  # green is hidden: white
    l_model = gray(data, GRAY8)[0]
    np.testing.assert_allclose(l_model[:, :4], RED_LUMA, atol=1e-6)
    np.testing.assert_allclose(l_model[:, 4:], 0.0, atol=1e-6)


def test_grayscale_png_with_a_transparent_value() -> None:
    pixels = np.full((8, 8), 200, dtype=np.uint8)
    pixels[:, :4] = 50
    data = encode(Image.fromarray(pixels), transparency=50)  # tRNS: gray level 50 is transparent
    np.testing.assert_allclose(gray(data, GRAY8)[0, :, :4], 0.0, atol=1e-6)
    np.testing.assert_allclose(gray(data, GRAY8)[0, :, 4:], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(gray(data, RGB8)[:, :, :4], 1.0, atol=1e-6)


# --------------------------------------------------------------------------- frames, orientation


def test_animated_gif_uses_the_first_frame() -> None:
    first = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    second = Image.fromarray(255 - np.asarray(first))
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=50, loop=0)
    decoded = decode_image(data, LIMITS)
    assert getattr(decoded, "n_frames", 1) == 2
    np.testing.assert_allclose(gray(data)[0], np.asarray(first) / 255, atol=1e-6)


def test_animated_webp_uses_the_first_frame() -> None:
    first = noise((8, 8), seed=5, channels=3)
    second = noise((8, 8), seed=6, channels=3)
    data = encode(first, "WEBP", save_all=True, append_images=[second], lossless=True, duration=50)
    assert getattr(decode_image(data, LIMITS), "n_frames", 1) == 2
    np.testing.assert_allclose(gray(data, RGB8), np.asarray(first).transpose(2, 0, 1) / 255, atol=1e-6)


# 2 x 3 blocks of 16 x 16 pixels with distinct levels: every rotation and flip is distinguishable.
BLOCKS = np.array([[0, 60, 120], [180, 240, 30]], dtype=np.uint8)


@pytest.mark.parametrize(("orientation", "rotation"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation: int, rotation: int) -> None:
    stored = Image.fromarray(np.kron(BLOCKS, np.ones((16, 16), dtype=np.uint8)))  # 48 wide, 32 high
    exif = Image.Exif()
    exif[0x0112] = orientation  # 3: rotate 180; 6: rotate 90 clockwise to display; 8: 90 anticlockwise
    decoded = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    shown = np.rot90(BLOCKS, k=rotation)  # np.rot90 turns anticlockwise for positive k
    assert decoded.size == (16 * shown.shape[1], 16 * shown.shape[0])
    pixels = np.asarray(decoded.convert("L"), dtype=np.float64)
    means = pixels.reshape(shown.shape[0], 16, shown.shape[1], 16).mean(axis=(1, 3))
    np.testing.assert_allclose(means, shown, atol=4)  # JPEG is lossy; block means are not


# --------------------------------------------------------------------------- bad input


def _error(data: bytes, limits: ImageLimits = LIMITS) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        decode_image(data, limits)
    return caught.value


@pytest.mark.parametrize(
    ("data", "problem", "fragment"),
    [
        (b"", "empty", "image 0: empty image data"),
        (b"this is text, not an image", "unsupported_format", "not a supported image format"),
        (b'{"images": ["iVBORw0KGgo="]}', "unsupported_format", "not a supported image format"),
        (np.random.default_rng(0).bytes(2048), "unsupported_format", "not a supported image format"),
        (b"BMW is a car, not a bitmap", "unsupported_format", "not a supported image format"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "unsupported_format", "not a supported image format"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "corrupt", "not a valid png image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "corrupt", "jpeg image"),
        (b"GIF89a" + b"\xff" * 8, "corrupt", "not a valid gif image"),
    ],
)
def test_undecodable_bytes_are_invalid_input(data: bytes, problem: str, fragment: str) -> None:
    error = _error(data)
    assert type(error) is InvalidInputError and error.code == "invalid_input"
    assert fragment in error.message and error.details["problem"] == problem and error.details["index"] == 0


def test_formats_outside_the_allow_list_are_refused_even_if_pillow_reads_them() -> None:
    for fmt in ("ICO", "TGA", "PCX"):
        error = _error(encode(Image.new("RGB", (16, 16)), fmt))
        assert error.details["problem"] == "unsupported_format", fmt


# format -> problem reported for a file cut in half (WebP's decoder refuses the file at open time)
TRUNCATION = {"PNG": "truncated", "JPEG": "truncated", "GIF": "truncated", "WEBP": "corrupt",
              "BMP": "truncated", "TIFF": "truncated", "PPM": "truncated"}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(TRUNCATION))
def test_truncated_files_are_rejected_and_name_the_image(fmt: str) -> None:
    data = encode(noise((64, 64), seed=1, channels=3), fmt)
    assert preprocess_batch([data], RGB8, LIMITS).shape == (1, 3, 8, 8)  # the whole file is fine
    good = encode(Image.new("L", (4, 4)))
    with pytest.raises(InvalidInputError) as caught:
        preprocess_batch([good, data[: len(data) // 2], good], RGB8, LIMITS)
    error = caught.value
    assert error.message.startswith("image 1: ") and error.details["index"] == 1
    assert error.details["problem"] == TRUNCATION[fmt] and fmt.lower() in error.message
    assert error.__cause__ is not None  # chained to Pillow's exception, which did not escape


def test_the_failing_image_of_a_batch_is_named() -> None:
    good = encode(Image.new("L", (28, 28), 9))
    with pytest.raises(InvalidInputError, match=r"^image 2: not a supported image format") as caught:
        preprocess_batch([good, good, b"nope", good], FMNIST, LIMITS)
    assert caught.value.details["index"] == 2


def test_declared_size_is_checked_before_any_pixel_is_decoded() -> None:
    bomb = png_header_only(8000, 6000)  # 48 M pixels declared in under a hundred bytes
    assert len(bomb) < 200
    error = _error(bomb)
    assert isinstance(error, ImageTooLargeError) and error.code == "image_too_large"
    assert "8000x6000 pixels exceeds the limit of 40000000 pixels" in error.message
    assert (error.details["width"], error.details["height"]) == (8000, 6000)
    # With room for it, the same file reaches the decoder, which finds the missing rows.
    roomy = _error(bomb, ImageLimits(max_image_pixels=50_000_000))
    assert type(roomy) is InvalidInputError and roomy.details["problem"] == "truncated"


def test_pillows_own_bomb_guard_becomes_image_too_large() -> None:
    error = _error(png_header_only(20000, 20000))  # 400 M pixels: Pillow refuses at open
    assert isinstance(error, ImageTooLargeError) and "too many pixels" in error.message
    assert isinstance(error.__cause__, Image.DecompressionBombError)


def test_side_limit_and_pixel_limit_boundaries() -> None:
    long_side = _error(png_header_only(16385, 2))  # 32770 pixels, too long a side
    assert isinstance(long_side, ImageTooLargeError)
    assert long_side.message.endswith("exceeds the limit of 16384 pixels per side")  # only the limit it broke
    assert decode_image(encode(Image.new("L", (16384, 1))), LIMITS).size == (16384, 1)
    tight = ImageLimits(max_image_pixels=100, max_side=10)
    assert decode_image(encode(Image.new("L", (10, 10))), tight).size == (10, 10)
    assert isinstance(_error(encode(Image.new("L", (11, 9))), tight), ImageTooLargeError)  # 99 px, 11 wide
    assert isinstance(_error(encode(Image.new("L", (10, 11))), tight), ImageTooLargeError)  # 110 px


def test_a_zero_sized_image_is_refused_without_naming_pillows_file_object() -> None:
    error = _error(png_header_only(0, 0))
    assert type(error) is InvalidInputError and "BytesIO" not in error.message and "0x" not in error.message


def test_image_over_the_byte_limit_is_payload_too_large() -> None:
    data = encode(noise((64, 64)))
    error = _error(data, ImageLimits(max_image_bytes=len(data) - 1))
    assert type(error) is PayloadTooLargeError and error.code == "payload_too_large"
    assert f"{len(data)} bytes exceeds the limit of {len(data) - 1} bytes" in error.message
    assert decode_image(data, ImageLimits(max_image_bytes=len(data))).size == (64, 64)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_side"):
        ImageLimits(max_side=0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF it skips
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_corrupted_files_never_raise_a_pillow_exception(fmt: str) -> None:
    original = encode(noise((24, 24), seed=2, channels=3), fmt)
    rng = np.random.default_rng(len(fmt))
    outcomes = {"ok": 0, "error": 0}
    for trial in range(60):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[position] = int(rng.integers(0, 256))
        try:
            x = preprocess_batch([bytes(data)], RGB8, LIMITS)
        except InvalidInputError:  # any subclass; never OSError, SyntaxError, struct.error, ...
            outcomes["error"] += 1
        else:
            assert np.isfinite(x).all()
            outcomes["ok"] += 1
    assert outcomes["error"] > 0


def test_decoding_changes_no_process_wide_pillow_setting() -> None:
    before = Image.MAX_IMAGE_PIXELS
    decode_image(encode(Image.new("L", (4, 4))), ImageLimits(max_image_pixels=16))
    _error(png_header_only(20000, 20000))
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------- sniffing, speed


def test_sniffing_recognises_every_supported_format_by_its_magic_bytes() -> None:
    image = Image.new("RGB", (4, 4))
    for fmt, name in [("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"),
                      ("TIFF", "tiff"), ("PPM", "ppm")]:  # fmt: skip
        assert sniff_image_type(encode(image, fmt)) == name
        assert name in SUPPORTED_FORMATS
    assert sniff_image_type(encode(image, "TIFF", big_tiff=True)) == "tiff"
    for other in (b"", b"hello", b"<html>", b"RIFF\x00\x00\x00\x00WAVE", b"BM", encode(image, "ICO")):
        assert sniff_image_type(other) is None
