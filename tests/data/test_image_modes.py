"""Every Pillow mode decodes by its full range (issue 15, item 1): real PNG/TIFF files written by Pillow."""
import io

import numpy as np
import pytest
from PIL import Image

from seedfast.data import DatasetError, decode_image
from seedfast.data.files import ImageCaptionFiles

SIZE = 32
RAMP16 = (np.arange(SIZE * SIZE, dtype=np.float64).reshape(SIZE, SIZE) * 65535 / (SIZE * SIZE - 1)).astype(np.uint16)
"""A 16-bit horizontal-then-vertical gradient over the whole 0–65535 range."""


def _file(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    """Decoded at its own size with bilinear resampling, so that no pixel moves: ``[H, W, 3]`` uint8."""
    return decode_image(data, "test image", SIZE, "bilinear").permute(1, 2, 0).numpy()


def _expected_gray(values16: np.ndarray) -> np.ndarray:
    return np.rint(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


@pytest.mark.parametrize("fmt, mode, raw", [
    ("PNG", "I;16", "<u2"),
    ("PNG", "I;16B", ">u2"),
    ("TIFF", "I;16", "<u2"),
    ("TIFF", "I;16B", ">u2"),
    ("TIFF", "I;16L", "<u2"),
])
def test_16_bit_gray_keeps_its_gradient(fmt, mode, raw):
    data = _file(Image.frombytes(mode, (SIZE, SIZE), RAMP16.astype(raw).tobytes()), fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I;16")  # a real 16-bit file
    rgb = _decode(data)
    expected = _expected_gray(RAMP16)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200


def test_32_bit_integer_is_read_as_16_bit_data():
    data = _file(Image.fromarray(RAMP16.astype(np.int32)), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "I"
    np.testing.assert_array_equal(_decode(data)[..., 0], _expected_gray(RAMP16))


def test_float_is_read_from_0_to_1():
    ramp = RAMP16.astype(np.float32) / 65535
    data = _file(Image.fromarray(ramp), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "F"
    np.testing.assert_array_equal(_decode(data)[..., 1], np.rint(ramp.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize("values, mode, message", [
    (np.full((SIZE, SIZE), 70000, np.int32), "I", r"mode 'I' \(32-bit integer\) values span \[70000, 70000\]; "
                                                   r"expected \[0, 65535\]"),
    (np.full((SIZE, SIZE), -1, np.int32), "I", r"mode .I. \(32-bit integer\) values span \[-1, -1\]; expected \[0, 65535\]"),
    (np.full((SIZE, SIZE), 2.0, np.float32), "F", r"mode 'F' \(32-bit float\) values span \[2, 2\]; "
                                                   r"expected \[0, 1\]"),
    (np.full((SIZE, SIZE), np.nan, np.float32), "F", r"mode 'F' \(32-bit float\) holds NaN or inf"),
])
def test_out_of_range_wide_values_are_refused_by_name(values, mode, message):
    data = _file(Image.fromarray(values), "TIFF")
    with pytest.raises(DatasetError, match=r"^image test image: " + message):
        _decode(data)


COLOUR = (10, 200, 30)


@pytest.mark.parametrize("fmt, mode", [
    ("PNG", "RGB"), ("PNG", "P"), ("TIFF", "RGB"), ("TIFF", "CMYK"), ("TIFF", "YCbCr"), ("TIFF", "LAB"),
    ("TIFF", "P"), ("JPEG", "RGB"),
])
def test_colour_modes_keep_the_colour(fmt, mode):
    image = Image.new("RGB", (SIZE, SIZE), COLOUR)
    image = image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    rgb = _decode(_file(image, fmt))
    # 8-bit LAB loses a little on the way in (Pillow's conversion), JPEG and YCbCr/CMYK round.
    tolerance = {"LAB": 10, "CMYK": 4, "YCbCr": 4}.get(mode, 4 if fmt == "JPEG" else 0)
    assert np.abs(rgb.astype(int) - np.array(COLOUR)).max() <= tolerance


@pytest.mark.parametrize("fmt, mode", [("PNG", "1"), ("PNG", "L"), ("TIFF", "1"), ("TIFF", "L")])
def test_gray_and_bilevel_modes(fmt, mode):
    gray = np.zeros((SIZE, SIZE), np.uint8)
    gray[:, SIZE // 2:] = 255
    rgb = _decode(_file(Image.fromarray(gray).convert(mode), fmt))
    assert (rgb[:, : SIZE // 2] == 0).all() and (rgb[:, SIZE // 2 + 1:] == 255).all()


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("PNG", "LA"), ("TIFF", "RGBA"), ("TIFF", "LA"),
                                       ("TIFF", "PA")])
def test_alpha_is_composited_onto_white(fmt, mode):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)  # black, transparent on the left, opaque on the right
    rgba[:, SIZE // 2:, 3] = 255
    image = Image.fromarray(rgba, "RGBA")
    image = image.convert("LA") if mode == "LA" else image.convert("P").convert("PA") if mode == "PA" else image
    if mode == "PA":
        image.putalpha(Image.fromarray(rgba[..., 3], "L"))
    rgb = _decode(_file(image, fmt))
    assert (rgb[:, : SIZE // 2 - 1] == 255).all() and (rgb[:, SIZE // 2 + 1:] == 0).all()


def test_palette_and_16_bit_transparency_are_composited_onto_white():
    palette = Image.new("P", (SIZE, SIZE), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.paste(1, (SIZE // 2, 0, SIZE, SIZE))
    rgb = _decode(_file(palette, "PNG", transparency=0))
    assert (rgb[:, : SIZE // 2 - 1] == 255).all() and (rgb[:, SIZE // 2 + 1:] == (200, 0, 0)).all()

    wide = RAMP16.copy()
    wide[:, : SIZE // 2] = 1234
    data = _file(Image.frombytes("I;16", (SIZE, SIZE), wide.astype("<u2").tobytes()), "PNG", transparency=1234)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "I;16" and check.info["transparency"] == 1234
    rgb = _decode(data)
    assert (rgb[:, : SIZE // 2 - 1] == 255).all()
    np.testing.assert_array_equal(rgb[:, SIZE // 2 + 1:, 0], _expected_gray(wide)[:, SIZE // 2 + 1:])


def test_training_loader_reads_16_bit_files_by_their_range(tmp_path):
    """The loaders read images through :func:`decode_image`: a 16-bit gradient stays a gradient."""
    Image.frombytes("I;16", (SIZE, SIZE), RAMP16.astype("<u2").tobytes()).save(tmp_path / "ramp.png")
    (tmp_path / "ramp.txt").write_text("a ramp", encoding="utf-8")
    sample = ImageCaptionFiles.from_folder(tmp_path, image_size=SIZE, resample="bilinear")[0]
    np.testing.assert_array_equal(sample.image[0].numpy(), _expected_gray(RAMP16))
