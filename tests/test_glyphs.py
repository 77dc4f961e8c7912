"""The glyph dataset: rendering, centring, skipped and duplicate glyphs, the folder, the errors.

The fonts are the DejaVu faces matplotlib ships, and small TrueType files built here with fontTools.
"""
import os
import shutil

import matplotlib
import numpy as np
import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from PIL import ImageFont

from triplet_keras.data import glyphs
from triplet_keras.data.datasets import DatasetError, load_dataset

pytestmark = pytest.mark.backend_free

MPL_FONTS = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
SANS, SERIF, MONO = (os.path.join(MPL_FONTS, name) for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf",
                                                                  "DejaVuSansMono.ttf"))
SIX_FONTS = [os.path.join(MPL_FONTS, name) for name in (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf")]


def box_font(path, glyph_names):
    """Write a TrueType font whose cmap maps each character of ``glyph_names`` ({character: glyph
    name}) to a glyph of that name drawn as a filled 500 x 700 rectangle."""
    order = [".notdef"] + sorted(set(glyph_names.values()) - {".notdef"})

    def rectangle():
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 700))
        pen.lineTo((600, 700))
        pen.lineTo((600, 0))
        pen.closePath()
        return pen.glyph()

    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({ord(character): name for character, name in glyph_names.items()})
    builder.setupGlyf({name: rectangle() for name in order})
    builder.setupHorizontalMetrics({name: (700, 100) for name in order})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Boxes", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.save(path)
    return str(path)


def ink_box(image):
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def centre_of_mass(image):
    weights = image.astype(np.float64)
    return (weights.sum(axis=1) @ np.arange(image.shape[0]) / weights.sum(),
            weights.sum(axis=0) @ np.arange(image.shape[1]) / weights.sum())


def test_centre_glyph_scales_the_ink_into_the_box_and_puts_its_centre_of_mass_in_the_middle():
    ink = np.zeros((60, 50), np.uint8)
    ink[10:50, 5:25] = 255  # 40 x 20 of ink, off centre
    expected = np.zeros((28, 28), np.uint8)
    expected[4:24, 9:19] = 255  # 20 x 10, centre of mass (13.5, 13.5)
    np.testing.assert_array_equal(glyphs.centre_glyph(ink), expected)
    assert glyphs.centre_glyph(np.zeros((30, 30), np.uint8)) is None


def test_centre_glyph_keeps_a_lopsided_glyph_inside_the_field():
    ink = np.zeros((20, 20), np.uint8)
    ink[:, 0] = 255
    ink[0, :] = 255  # an L on its back: the centre of mass sits near the top-left corner
    field = glyphs.centre_glyph(ink)
    top, bottom, left, right = ink_box(field)
    assert (bottom - top, right - left) == (20, 20) and field.sum() == ink.sum()


@pytest.mark.parametrize("character", ["O", "l", "A", "g"])
def test_rendered_glyphs_are_mnist_like(character):
    image = glyphs.render_glyph(ImageFont.truetype(SANS, glyphs.RENDER_SIZE), character)
    assert image.dtype == np.uint8 and image.shape == (28, 28) and image.max() > 200
    top, bottom, left, right = ink_box(image)
    assert max(bottom - top, right - left) == 20  # the longer side fills the 20 x 20 box
    assert np.allclose(centre_of_mass(image), 13.5, atol=0.5)


def test_the_aspect_ratio_is_kept():
    font = ImageFont.truetype(SANS, glyphs.RENDER_SIZE)
    top, bottom, left, right = ink_box(glyphs.render_glyph(font, "l"))
    assert bottom - top == 20 and right - left <= 4
    top, bottom, left, right = ink_box(glyphs.render_glyph(font, "m"))
    assert right - left == 20 and bottom - top < 18


def test_missing_notdef_and_wrongly_named_glyphs_are_skipped(tmp_path):
    assert {"A", "z", "5"} <= glyphs.mapped_characters(SANS) and "\u4e2d" not in glyphs.mapped_characters(SANS)
    # a symbol font that puts Alpha at "B", and "C" mapped to .notdef
    boxes = box_font(tmp_path / "boxes.ttf", {"A": "A", "B": "Alpha", "C": ".notdef", "D": "uni0044"})
    assert glyphs.mapped_characters(boxes) == {"A", "D"}
    rendered = glyphs.render_fonts([SANS, boxes], "ABC\u4e2d", progress=False)
    assert [path for path, _ in rendered["A"]] == [SANS, boxes]
    top, bottom, left, right = ink_box(rendered["A"][1][1])
    assert (bottom - top, right - left) == (20, 14)  # the 500 x 700 rectangle
    assert [path for path, _ in rendered["B"]] == [SANS] and [path for path, _ in rendered["C"]] == [SANS]
    assert rendered["\u4e2d"] == []
    assert glyphs.mapped_characters(tmp_path / "boxes.ttf.missing") == set()


def test_identical_renders_count_once(tmp_path):
    twin = tmp_path / "Twin.ttf"
    shutil.copy(SANS, twin)
    rendered = glyphs.render_fonts([SANS, str(twin), SERIF], "Ab", progress=False)
    for character in "Ab":
        assert [path for path, _ in rendered[character]] == [SANS, SERIF]
        assert not np.array_equal(rendered[character][0][1], rendered[character][1][1])


def test_find_fonts_lists_each_font_file_once(tmp_path):
    (tmp_path / "a").mkdir()
    shutil.copy(SANS, tmp_path / "a" / "One.ttf")
    (tmp_path / "a" / "notes.txt").write_text("not a font")
    os.symlink(tmp_path / "a" / "One.ttf", tmp_path / "Link.TTF")
    found = glyphs.find_fonts([str(tmp_path), str(tmp_path / "a"), str(tmp_path / "absent")])
    assert found == [os.path.realpath(tmp_path / "a" / "One.ttf")]


def test_the_built_folder_loads_with_load_dataset(tmp_path):
    counts = glyphs.build_glyph_folder(tmp_path / "glyphs", SIX_FONTS, "Ab7", min_images=6, progress=False)
    assert counts == {"upper_A": 6, "lower_b": 6, "digit_7": 6}
    data = load_dataset("glyphs", cache_dir=str(tmp_path), validation_fraction=0.0, test_fraction=0.0)
    assert data.class_names == ["digit_7", "lower_b", "upper_A"]
    assert data.train.image_shape == (28, 28, 3) and len(data.train) == 18
    images = data.train.load(np.arange(18))
    rendered = glyphs.render_fonts(SIX_FONTS, "7bA", progress=False)
    for image, label, path in zip(images, data.train.labels, data.train.paths):
        font = os.path.join(MPL_FONTS, os.path.basename(path).replace(".png", ".ttf"))
        expected = dict(rendered["7bA"[label]])[font]
        np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=-1))
    with pytest.raises(glyphs.GlyphError, match="exists already"):
        glyphs.build_glyph_folder(tmp_path / "glyphs", SIX_FONTS, "A", min_images=1, progress=False)


def test_a_character_with_too_few_images_fails_and_leaves_no_folder(tmp_path):
    with pytest.raises(glyphs.GlyphError, match=r"fewer than 3 distinct images.*'upper_A': 2, 'U\+4E2D': 0"):
        glyphs.build_glyph_folder(tmp_path / "glyphs", [SANS, MONO], "A\u4e2d", min_images=3, progress=False)
    assert os.listdir(tmp_path) == []


def test_no_fonts_fails_fast_naming_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(glyphs, "FONT_FOLDERS", (str(tmp_path / "no fonts here"),))
    with pytest.raises(DatasetError, match="apt-get install fonts-dejavu fonts-urw-base35"):
        load_dataset("glyphs", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
    with pytest.raises(glyphs.GlyphError, match="in font_paths"):
        glyphs.build_glyph_folder(tmp_path / "glyphs", [], progress=False)
