import cv2
import numpy as np
import pytest

from images_factory import random_rgb, write_image, write_jpeg_with_orientation, write_truncated_jpeg
from triplet_keras.core.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    as_image_size,
    has_image_signature,
    is_image_file,
    read_image,
    resize_image,
)

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend

LOSSLESS = [".png", ".bmp", ".tif", ".tiff", ".PNG"]


@pytest.mark.parametrize("extension", LOSSLESS)
def test_lossless_formats_round_trip_exactly_in_rgb_order(tmp_path, extension):
    rgb = random_rgb(9, 7)
    image = read_image(str(write_image(tmp_path / f"a{extension}", rgb)))
    assert image.dtype == np.uint8 and image.shape == (9, 7, 3)
    np.testing.assert_array_equal(image, rgb)


@pytest.mark.parametrize("extension", [".jpg", ".jpeg", ".JPG", ".webp"])
def test_lossy_formats_decode_close_to_the_original(tmp_path, extension):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: a swapped channel order would be far off
    image = read_image(str(write_image(tmp_path / f"a{extension}", rgb)))
    assert image.shape == (16, 16, 3)
    assert np.abs(image.astype(int) - rgb).mean() < 8


def test_non_ascii_path(tmp_path):
    rgb = random_rgb()
    path = write_image(tmp_path / "ü猫" / "ü猫.png", rgb)
    np.testing.assert_array_equal(read_image(str(path)), rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = random_rgb()[..., 0]
    image = read_image(str(write_image(tmp_path / "g.png", gray)))
    assert image.shape == gray.shape + (3,)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_drops_alpha(tmp_path):
    rgb = random_rgb()
    bgra = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])
    image = read_image(str(write_image(tmp_path / "rgba.png", bgra)))
    np.testing.assert_array_equal(image, rgb)


@pytest.mark.parametrize("orientation, upright", [
    (1, lambda x: x),
    (3, lambda x: np.rot90(x, 2)),
    (6, lambda x: np.rot90(x, -1)),  # stored rotated 90 degrees anticlockwise: turn clockwise
    (8, lambda x: np.rot90(x, 1)),
])
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    stored = np.kron(random_rgb(3, 4), np.ones((16, 16, 1), np.uint8))  # flat 16x16 blocks survive JPEG
    image = read_image(str(write_jpeg_with_orientation(tmp_path / "o.jpg", stored, orientation))).astype(int)
    expected = upright(stored).astype(int)
    assert image.shape == expected.shape
    assert np.abs(image - expected).mean() < 8  # JPEG chroma loss on random colours is ~3.6
    if orientation == 3:
        assert np.abs(image - stored).mean() > 30


def test_sixteen_bit_maps_full_range_to_uint8(tmp_path):
    values = np.array([[0, 257, 65535, 128 * 257 + 100]], np.uint16)
    image = read_image(str(write_image(tmp_path / "deep.png", values)))
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 255, 128])


def test_float_tiff_in_unit_range(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    image = read_image(str(write_image(tmp_path / "f.tif", values)))
    np.testing.assert_array_equal(image[0, :, 1], [0, 128, 255, 255])


def _bad_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all")
    write_truncated_jpeg(tmp_path / "truncated.jpg")
    return ["empty.jpg", "text.jpg", "truncated.jpg", "missing.png"]


def test_bad_files_raise_an_error_naming_the_file_or_return_none(tmp_path):
    for name in _bad_files(tmp_path):
        path = str(tmp_path / name)
        with pytest.raises(ImageReadError, match=name):
            read_image(path)
        assert read_image(path, strict=False) is None
    assert issubclass(ImageReadError, ValueError)


def test_signature_check_is_cheap_and_catches_empty_text_and_missing(tmp_path):
    for extension in [".jpg", ".png", ".bmp", ".webp", ".tif"]:
        assert has_image_signature(str(write_image(tmp_path / f"ok{extension}", random_rgb())))
    bad = _bad_files(tmp_path)
    assert [has_image_signature(str(tmp_path / name)) for name in bad] == [False, False, True, False]


def test_extensions_are_case_insensitive_and_hidden_files_are_not_images():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFf")
    assert not is_image_file(".hidden.jpg") and not is_image_file("notes.txt") and not is_image_file(".DS_Store")


def test_resize_shrinks_by_area_averaging_and_grows_bilinearly():
    blocks = np.kron(np.array([[0, 100], [200, 40]], np.uint8), np.ones((2, 2), np.uint8))
    image = np.dstack([blocks] * 3)
    small = resize_image(image, (2, 2))
    np.testing.assert_array_equal(small[..., 0], [[0, 100], [200, 40]])
    big = resize_image(image, (8, 6))
    assert big.shape == (8, 6, 3)
    np.testing.assert_array_equal(big, cv2.resize(image, (6, 8), interpolation=cv2.INTER_LINEAR))
    assert resize_image(image, (4, 4)) is image


@pytest.mark.parametrize("size, expected", [(224, (224, 224)), (np.int64(5), (5, 5)), ([3, 4], (3, 4)),
                                            ((7, 2), (7, 2)), (np.array([6, 9]), (6, 9)), (None, None)])
def test_image_size_is_an_int_for_a_square_or_two_ints(size, expected):
    result = as_image_size(size)
    assert result == expected and (result is None or all(type(side) is int for side in result))


@pytest.mark.parametrize("size", [0, -3, [0, 5], [4, -1], [1, 2, 3], [5], "224", "22", [2.0, 3], 8.0, True,
                                  [True, 2], [[1, 2], [3, 4]], {"a": 1}])
def test_bad_image_sizes_raise_naming_the_parameter(size):
    with pytest.raises(ValueError, match="backbone_size must be a positive int"):
        as_image_size(size, "backbone_size")
