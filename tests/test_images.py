"""Image decoding and preprocessing: every mode and format reaches the network input correctly, and
every bad image becomes a clear InvalidInputError, never a Pillow exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ranet_serve.api.budget import check_thresholds_length, parse_confidence, parse_flops, parse_thresholds
from ranet_serve.api.images import (
    ImageLimits,
    decode_image,
    preprocess_batch,
    sniff_image_type,
    to_model_input,
)
from ranet_serve.errors import BudgetError, InvalidInputError, PayloadTooLargeError
from ranet_serve.export.manifest import InputSpec

GRAY = InputSpec(channels=1, color_mode="L", size=28, mean=(0.5,), std=(0.25,))
RGB = InputSpec(channels=3, color_mode="RGB", size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_uniform_gray_image_is_normalised_exactly() -> None:
    data = encode(Image.new("L", (28, 28), 153))
    x = preprocess_batch([data], GRAY, LIMITS)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x, (153 / 255 - 0.5) / 0.25, atol=1e-6)


def test_image_is_resized_to_the_input_size() -> None:
    x = to_model_input(decode_image(encode(Image.new("L", (280, 56), 255)), LIMITS), GRAY)
    assert x.shape == (1, 28, 28)
    np.testing.assert_allclose(x, (1.0 - 0.5) / 0.25, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1)])
def test_tiny_and_extreme_aspect_ratio_images_succeed(size: tuple[int, int]) -> None:
    x = preprocess_batch([encode(Image.new("L", size, 255))], GRAY, LIMITS)
    assert x.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(x, 2.0, atol=1e-5)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    array = np.full((28, 28), 32896, dtype=np.uint16)  # 32896 / 65535 = 128 / 255
    image = Image.fromarray(array)
    assert image.mode.startswith("I")
    x = preprocess_batch([encode(image)], GRAY, LIMITS)
    np.testing.assert_allclose(x * 0.25 + 0.5, 128 / 255, atol=1 / 255)


def test_cmyk_jpeg_palette_and_alpha_images_convert() -> None:
    cmyk = encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG")  # no ink: white
    x = preprocess_batch([cmyk], RGB, LIMITS)
    assert x.min() > 0.95
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    np.testing.assert_allclose(
        preprocess_batch([encode(palette)], RGB, LIMITS)[0, :, 0, 0], [1, 0, 0], atol=1e-6
    )
    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    # Fully transparent: white for RGB models, black for grayscale (Fashion-MNIST) models.
    np.testing.assert_allclose(preprocess_batch([encode(transparent)], RGB, LIMITS), 1.0, atol=1e-6)
    gray = InputSpec(channels=1, color_mode="L", size=8, mean=(0.0,), std=(1.0,))
    np.testing.assert_allclose(preprocess_batch([encode(transparent)], gray, LIMITS), 0.0, atol=1e-6)
    half = Image.new("LA", (8, 8), (200, 255))
    np.testing.assert_allclose(preprocess_batch([encode(half)], gray, LIMITS), 200 / 255, atol=1e-6)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("L", (8, 8), 255), Image.new("L", (8, 8), 0)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    gray = InputSpec(channels=1, color_mode="L", size=8, mean=(0.0,), std=(1.0,))
    np.testing.assert_allclose(preprocess_batch([data], gray, LIMITS), 1.0, atol=1e-6)


def test_exif_orientation_is_applied() -> None:
    array = np.zeros((16, 32), dtype=np.uint8)
    array[:, :16] = 255  # left half white, wide image
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert decoded.size == (16, 32)  # now tall
    pixels = np.asarray(decoded.convert("L"), dtype=np.float32)
    assert pixels[:16].mean() > 200 and pixels[16:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty image data"),
        (b"this is text, not an image", "not a decodable image"),
        (np.random.default_rng(0).bytes(2048), "not a decodable image"),
    ],
)
def test_undecodable_bytes_are_invalid_input(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        preprocess_batch([data], GRAY, LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_files_are_rejected(fmt: str) -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)), fmt)
    with pytest.raises(InvalidInputError, match="image 1"):
        preprocess_batch([encode(Image.new("L", (4, 4))), data[: len(data) // 2]], GRAY, LIMITS)


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    bomb = encode(Image.new("1", (10000, 10000)))  # 100 Mpx declared, a few KB on the wire
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLargeError, match="too large to decode safely"):
        decode_image(bomb, ImageLimits(max_image_pixels=40_000_000))  # Pillow's own guard, made an error
    below_pillows_guard = encode(Image.new("1", (8000, 6000)))  # 48 Mpx: only our limit catches it
    with pytest.raises(PayloadTooLargeError, match="8000x6000 pixels exceeds the limit"):
        decode_image(below_pillows_guard, ImageLimits(max_image_pixels=40_000_000))


def test_image_over_the_byte_limit_is_rejected() -> None:
    with pytest.raises(PayloadTooLargeError, match="byte image limit"):
        decode_image(encode(Image.new("L", (64, 64))), ImageLimits(max_image_bytes=10))


def test_sniffing_recognises_formats() -> None:
    assert sniff_image_type(encode(Image.new("L", (2, 2)))) == "png"
    assert sniff_image_type(encode(Image.new("L", (2, 2)), "JPEG")) == "jpeg"
    assert sniff_image_type(encode(Image.new("L", (2, 2)), "WEBP")) == "webp"
    assert sniff_image_type(b"hello") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20M", 2e7),
        ("1.5G", 1.5e9),
        ("300k", 3e5),
        ("2e7", 2e7),
        (" 20 MFLOPs ", 2e7),
        (123, 123.0),
        (5.5, 5.5),
    ],
)
def test_flops_budgets_parse_with_units(raw: object, expected: float) -> None:
    assert parse_flops(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["nan", "inf", "-5", "0", "abc", "", "1e30", True, None, [1]])
def test_invalid_flops_budgets_are_rejected(raw: object) -> None:
    with pytest.raises(BudgetError):
        parse_flops(raw)


def test_thresholds_and_confidence_parse_and_validate() -> None:
    assert parse_thresholds("0.9,0.8, 0.7") == (0.9, 0.8, 0.7)
    assert parse_thresholds("[0.5, 1]") == (0.5, 1.0)
    assert parse_thresholds([0, 0.25]) == (0.0, 0.25)
    for bad in ["", "[0.5,", "0.5,2", "a,b", [], [float("nan")], [-0.1]]:
        with pytest.raises(BudgetError):
            parse_thresholds(bad)
    assert parse_confidence("0.75") == 0.75
    with pytest.raises(BudgetError, match=r"\[0, 1\]"):
        parse_confidence(1.5)
    with pytest.raises(BudgetError, match="needs 6 values"):
        check_thresholds_length((0.5,) * 5, 6)
