"""Draft decoding of large JPEGs (issue 21): the scale chosen for each size and policy, the decoded size,
the model input's agreement with a full decode on photo-like JPEGs (with proof that the bound catches
an over-reduced decode), formats and sizes that must stay bit-exact, and the ImageNet crop policy at
224 seen through a recognisable pattern. The photos are generated here, once per module."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageDraw

from ranet_serve.api import images
from ranet_serve.api.images import (
    DRAFT_MARGIN,
    ImageLimits,
    ImageTooLargeError,
    decode_image,
    draft_request,
    draft_scale,
    needed_side,
    preprocess_batch,
)
from ranet_serve.api.service import EncodedImages, InferenceService
from ranet_serve.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ranet_serve.export.defaults import IMAGENET_MEAN, IMAGENET_STD, default_input_spec
from ranet_serve.export.manifest import InputSpec
from ranet_serve.model.config import load_config
from ranet_serve.settings import Settings

LIMITS = ImageLimits(max_image_pixels=4096 * 4096)  # the server's default pixel limit
CROP = default_input_spec(load_config("imagenet-model1"))  # resize 256, centre crop 224
RESIZE = CROP.model_copy(update={"resize": "resize", "resize_to": None})
GRAY28 = InputSpec(channels=1, color_mode="L", size=28, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
LEVEL = 1 / (255 * min(IMAGENET_STD))  # one 8-bit level in CROP's normalised units, at most 0.0175

# Model input, draft vs full decode, in normalised units. Measured on PHOTO_SIZES while writing this test
# (the worst image of the set): mean 0.0034, 99th percentile 0.0175 (one level), max 0.088 (five levels).
# The bounds leave about 3x. A decode left below the needed size (1/8 of 1600x1200, 200x150 for a
# shorter side of 256) measured mean 0.033, 99th percentile 0.25, max 0.86: far outside them.
MEAN_BOUND = 0.01
P99_BOUND = 3 * LEVEL
MAX_BOUND = 0.3


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: a smooth colour field, texture from blotches down to grain, hard edges.

    Built with Pillow's C loops (a 4000x3000 picture in about half a second): the texture is a gray
    layer centred on 128, added to the colour field with `ImageChops.add(..., offset=-128)`.
    """
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(30, 226, (3, 3, 3), dtype=np.uint8))
    picture = field.resize((width, height), Image.Resampling.BICUBIC)
    texture = np.full((height, width), 128.0, dtype=np.float32)
    for cells, amplitude in ((48, 16.0), (480, 8.0), (width // 2, 4.0)):  # blotches, detail, grain
        grid = rng.normal(0.0, amplitude, (max(2, cells * height // width), cells)).astype(np.float32)
        texture += np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BILINEAR))
    gray = Image.fromarray(texture, "F").convert("L")
    picture = ImageChops.add(picture, Image.merge("RGB", (gray, gray, gray)), 1.0, -128)
    draw = ImageDraw.Draw(picture)
    for _ in range(8):
        left, top = rng.uniform(0, width * 0.9), rng.uniform(0, height * 0.9)
        box = (left, top, left + rng.uniform(0.05, 0.25) * width, top + rng.uniform(0.05, 0.25) * height)
        draw.rectangle(box, fill=(int(rng.integers(256)), int(rng.integers(256)), int(rng.integers(256))))
    return picture


PHOTO_SIZES = ((4000, 3000), (3000, 4000), (1600, 1200), (640, 480), (500, 375))


@pytest.fixture(scope="module")
def photos() -> dict[tuple[int, int], bytes]:
    """Quality-90 JPEGs of PHOTO_SIZES; the portrait 3000x4000 is the landscape one turned."""
    landscape = photo(4000, 3000, seed=1)
    return {
        (4000, 3000): encode(landscape, quality=90),
        (3000, 4000): encode(landscape.transpose(Image.Transpose.ROTATE_90), quality=90),
        (1600, 1200): encode(photo(1600, 1200, seed=2), quality=90),
        (640, 480): encode(photo(640, 480, seed=3), quality=90),
        (500, 375): encode(photo(500, 375, seed=4), quality=90),
    }


def difference(data: bytes, spec: InputSpec = CROP) -> tuple[float, float, float]:
    """(mean, 99th percentile, max) of |draft - full| over the model input."""
    drafted = preprocess_batch([data], spec, LIMITS, draft=True)
    full = preprocess_batch([data], spec, LIMITS, draft=False)
    gap = np.abs(drafted - full)
    return float(gap.mean()), float(np.percentile(gap, 99)), float(gap.max())


# --------------------------------------------------------------------------- the chosen scale


def test_needed_side_follows_the_resize_policy() -> None:
    assert needed_side(CROP) == 256  # the shorter side before the centre crop
    assert needed_side(CROP.model_copy(update={"resize_to": 200})) == 224  # raised to size, as _resample does
    assert needed_side(CROP.model_copy(update={"resize_to": None})) == 224
    assert needed_side(RESIZE) == 224
    assert needed_side(GRAY28) == 28


@pytest.mark.parametrize(
    ("size", "crop_scale", "resize_scale"),
    [
        ((4000, 3000), 4, 4),  # 3000 // 512 = 5 -> 1/4 (750 px); 3000 // 448 = 6 -> 1/4
        ((3000, 4000), 4, 4),  # portrait, or landscape turned by EXIF: the same shorter side
        ((4032, 3024), 4, 4),  # a 12 MP phone photo
        ((6000, 4500), 8, 8),  # 4500 // 512 = 8: 1/8 still leaves 563 px >= 512
        ((1100, 1024), 2, 2),  # exactly 2 x 512
        ((1100, 1023), 1, 2),  # one pixel short for the crop policy, still 2 x 448 for the resize
        ((1600, 1200), 2, 2),
        ((500, 375), 1, 1),
        ((256, 256), 1, 1),
        ((300, 2000), 1, 1),  # the long side does not count: the shorter one must stay >= 2 x needed
        ((2000, 300), 1, 1),
    ],
)
def test_draft_scale_keeps_twice_the_needed_shorter_side(
    size: tuple[int, int], crop_scale: int, resize_scale: int
) -> None:
    width, height = size
    for spec, scale in ((CROP, crop_scale), (RESIZE, resize_scale)):
        side = DRAFT_MARGIN * needed_side(spec)
        assert draft_scale(width, height, spec) == scale
        assert draft_request(width, height, spec) == (None if scale == 1 else (side, side))
        if scale > 1:
            assert min(width, height) // scale >= side  # enough pixels left...
            assert scale == 8 or min(width, height) // (2 * scale) < side  # ...the next would leave too few


def test_draft_request_for_the_plain_resize_policy_needs_both_sides() -> None:
    assert draft_request(4000, 3000, RESIZE) == (448, 448)
    assert draft_request(4000, 447 * 2, RESIZE) is None  # the height would fall below 2 x 224
    assert draft_scale(4000, 3000, GRAY28) == 8  # a 28-pixel model: 375 rows are plenty
    assert draft_request(4000, 3000, GRAY28) == (56, 56)


def _flat_jpeg(width: int, height: int, mode: str = "RGB", **options: object) -> bytes:
    """A cheap JPEG of the given size (a two-colour split): for size checks, not for quality."""
    image = Image.new(mode, (width, height), "white" if mode != "CMYK" else (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle(
        (0, 0, width // 2, height), fill="red" if mode != "CMYK" else (0, 255, 255, 0)
    )
    return encode(image, quality=90, **options)


@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (4001, 3001), (1100, 1024), (1100, 1023)])
def test_a_large_jpeg_decodes_reduced_but_never_below_what_the_resample_needs(size: tuple[int, int]) -> None:
    width, height = size
    data = _flat_jpeg(width, height)
    scale = draft_scale(width, height, CROP)
    decoded = decode_image(data, LIMITS, target=CROP)
    assert decoded.size == (math.ceil(width / scale), math.ceil(height / scale))  # Pillow agrees
    assert min(decoded.size) >= DRAFT_MARGIN * needed_side(CROP)
    assert decode_image(data, LIMITS).size == size  # no target: every pixel, as before


def test_exif_rotation_turns_the_reduced_image() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 4000x3000, shown turned a quarter: 3000 wide, 4000 high
    data = _flat_jpeg(4000, 3000, exif=exif.tobytes())
    assert decode_image(data, LIMITS, target=CROP).size == (750, 1000)
    assert decode_image(data, LIMITS).size == (3000, 4000)


def test_draft_decodes_rgb_data_straight_to_the_models_colour_mode_and_leaves_cmyk_alone() -> None:
    assert decode_image(_flat_jpeg(4000, 3000), LIMITS, target=GRAY28).mode == "L"  # luma only
    assert decode_image(_flat_jpeg(4000, 3000), LIMITS, target=CROP).mode == "RGB"
    gray = encode(Image.new("L", (2400, 1800), 90), quality=90)
    assert decode_image(gray, LIMITS, target=CROP).mode == "L"
    cmyk = _flat_jpeg(2400, 1800, "CMYK")
    decoded = decode_image(cmyk, LIMITS, target=CROP)
    assert (decoded.mode, decoded.size) == ("CMYK", (1200, 900))
    mean, _, _ = difference(cmyk)
    assert mean < MEAN_BOUND  # the ink still converts to the same colours


def test_size_limits_judge_the_declared_size_not_the_reduced_one() -> None:
    data = _flat_jpeg(2400, 1800)  # decodes to 1200x900 = 1.08 M pixels with draft
    with pytest.raises(ImageTooLargeError, match="2400x1800 pixels exceeds the limit of 2000000 pixels"):
        decode_image(data, ImageLimits(max_image_pixels=2_000_000), target=CROP)


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize("size", PHOTO_SIZES)
def test_draft_input_agrees_with_the_full_decode_on_photos(
    photos: dict[tuple[int, int], bytes], size: tuple[int, int]
) -> None:
    mean, p99, peak = difference(photos[size])
    assert mean < MEAN_BOUND and p99 <= P99_BOUND and peak < MAX_BOUND, (size, mean, p99, peak)


def test_the_scales_the_photos_decode_at(photos: dict[tuple[int, int], bytes]) -> None:
    decoded = {size: decode_image(data, LIMITS, target=CROP).size for size, data in photos.items()}
    assert decoded == {
        (4000, 3000): (1000, 750),
        (3000, 4000): (750, 1000),
        (1600, 1200): (800, 600),
        (640, 480): (640, 480),  # 480 < 2 x 256: decoded in full
        (500, 375): (500, 375),
    }


def test_a_gray_model_reading_luma_straight_from_the_jpeg_agrees(
    photos: dict[tuple[int, int], bytes],
) -> None:
    spec = GRAY28.model_copy(update={"size": 64})  # luma is the encoder's own, within a level of convert("L")
    mean, _, peak = difference(photos[(4000, 3000)], spec)
    assert mean < MEAN_BOUND and peak < MAX_BOUND


def test_the_bound_catches_a_decode_below_the_needed_size(
    photos: dict[tuple[int, int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken margin (a quarter of the needed side) lets 1600x1200 decode at 1/8: 200x150 < 256.
    monkeypatch.setattr(images, "DRAFT_MARGIN", 0.25)
    data = photos[(1600, 1200)]
    assert decode_image(data, LIMITS, target=CROP).size == (200, 150)
    mean, p99, _ = difference(data)
    assert mean > 2 * MEAN_BOUND and p99 > P99_BOUND


# --------------------------------------------------------------------------- untouched inputs


def test_pngs_and_small_jpegs_are_bit_exact_with_the_full_decode(
    photos: dict[tuple[int, int], bytes],
) -> None:
    png = encode(Image.open(io.BytesIO(photos[(1600, 1200)])), "PNG", compress_level=1)
    for data in (png, photos[(640, 480)], photos[(500, 375)]):
        np.testing.assert_array_equal(
            preprocess_batch([data], CROP, LIMITS, draft=True),
            preprocess_batch([data], CROP, LIMITS, draft=False),
        )
    assert decode_image(png, LIMITS, target=CROP).size == (1600, 1200)


def test_draft_false_is_the_full_decode(photos: dict[tuple[int, int], bytes]) -> None:
    data = photos[(4000, 3000)]
    full = images.to_model_input(decode_image(data, LIMITS), CROP)
    np.testing.assert_array_equal(preprocess_batch([data], CROP, LIMITS, draft=False)[0], full)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_service_decodes_as_ranet_jpeg_draft_says(
    photos: dict[tuple[int, int], bytes], monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    monkeypatch.setenv("RANET_JPEG_DRAFT", str(enabled).lower())
    settings = Settings()
    assert settings.jpeg_draft is enabled
    # Only the decoding step runs: it needs neither the engine nor the metrics.
    service = InferenceService(settings, engine=cast(Any, None), metrics=cast(Any, None))
    data = photos[(4000, 3000)]
    served = service._prepare(EncodedImages((data,)), CROP)
    np.testing.assert_array_equal(served, preprocess_batch([data], CROP, LIMITS, draft=enabled))
    assert not np.array_equal(served, preprocess_batch([data], CROP, LIMITS, draft=not enabled))


# --------------------------------------------------------------------------- the crop policy at 224

RED, BLUE, GREEN, YELLOW, GRAY = (220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 30), (128, 128, 128)


def _crop_pattern(width: int, height: int) -> Image.Image:
    """A picture that shows where the ImageNet crop falls.

    The crop keeps the centre square of 224/256 of the shorter side. Outside it: red bands at the left
    and right, blue bands at the top and bottom, each filling 80% of the margin the crop drops on that
    axis (a sixteenth of the shorter side on the short axis). Inside it: a green square of a quarter of
    the crop's side at the centre, and yellow squares of a tenth of it, centred a tenth in from the
    middle of each crop edge.
    """
    image = Image.new("RGB", (width, height), GRAY)
    draw = ImageDraw.Draw(image)
    crop = min(width, height) * 224 / 256
    cx, cy = width / 2, height / 2
    band_x, band_y = 0.8 * (width - crop) / 2, 0.8 * (height - crop) / 2
    draw.rectangle((0, 0, band_x, height), fill=RED)
    draw.rectangle((width - band_x, 0, width, height), fill=RED)
    draw.rectangle((0, 0, width, band_y), fill=BLUE)
    draw.rectangle((0, height - band_y, width, height), fill=BLUE)

    def square(x: float, y: float, side: float, colour: tuple[int, int, int]) -> None:
        draw.rectangle((x - side / 2, y - side / 2, x + side / 2, y + side / 2), fill=colour)

    square(cx, cy, crop / 4, GREEN)
    inset = crop / 2 - crop / 10
    for dx, dy in ((-inset, 0), (inset, 0), (0, -inset), (0, inset)):
        square(cx + dx, cy + dy, crop / 10, YELLOW)
    return image


def _rgb(x: np.ndarray) -> np.ndarray:
    """CROP's normalised [3, H, W] input -> [H, W, 3] on 0..255."""
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    return ((x * std + mean) * 255).transpose(1, 2, 0)


def _mask(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(pixels - np.array(colour)).max(axis=2) < 40


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (4000, 3000), (3000, 4000)])
@pytest.mark.parametrize("draft", [True, False])
def test_centre_crop_drops_the_borders_and_keeps_the_centre_square(
    size: tuple[int, int], draft: bool
) -> None:
    data = encode(_crop_pattern(*size), quality=95)
    x = preprocess_batch([data], CROP, LIMITS, draft=draft)
    assert x.shape == (1, 3, 224, 224)
    pixels = _rgb(x[0])
    assert not _mask(pixels, RED).any() and not _mask(pixels, BLUE).any()  # every border band dropped
    rows, columns = np.nonzero(_mask(pixels, GREEN))
    # A quarter of the crop: 56 x 56 output pixels centred at 112 (square: the aspect is kept).
    for low, high in ((rows.min(), rows.max()), (columns.min(), columns.max())):
        assert abs(low - 84) <= 2 and abs(high - 139) <= 2
    for row, column in ((112, 22), (112, 201), (22, 112), (201, 112)):  # yellow: the crop is not too tight
        assert _mask(pixels[row - 3 : row + 4, column - 3 : column + 4], YELLOW).all(), (row, column)


def test_the_crop_pattern_shows_its_bands_without_a_crop() -> None:
    pixels = _rgb(preprocess_batch([encode(_crop_pattern(4000, 3000), quality=95)], RESIZE, LIMITS)[0])
    assert (
        _mask(pixels[40:-40, :5], RED).all() and _mask(pixels[:5, 40:-40], BLUE).all()
    )  # bands at the edges


# --------------------------------------------------------------------------- the benchmark's function


def test_measure_decode_reports_both_variants() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    spec = importlib.util.spec_from_file_location("decode_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.measure_decode(_flat_jpeg(1100, 1024), CROP, repeats=1)
    assert (result["width"], result["height"], result["draft_scale"]) == (1100, 1024, 2)
    assert result["decoded_size"] == [550, 512]
    assert result["full_ms"] > 0 and result["draft_ms"] > 0 and result["mean_abs_diff"] < MEAN_BOUND
