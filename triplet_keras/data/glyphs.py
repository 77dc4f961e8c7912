"""A many-class dataset of our own: characters rendered from the fonts installed on the machine.

One class per character, one image per font: each glyph is drawn large with Pillow, cropped to its
ink, scaled to fit a ``box`` x ``box`` square with its aspect ratio kept, and placed in a
``size`` x ``size`` black field with its centre of mass at the centre, as MNIST centres its
digits (20 in 28 by default). Ink is white (0..255 gray).

A font lacks a character when its Unicode cmap does not map it to a glyph named for it (so not to
``.notdef``, nor to the Greek letter or dingbat a symbol font puts there) or the glyph has no
ink: that image is skipped, never drawn as a box. Fonts that render a character identically (the
same face shipped twice, a script font repeating the Latin of its family) give that character one
image; near twins (URW's fonts and their TeX Gyre versions) are kept. :func:`build_glyph_folder` writes the folder dataset that
``load_dataset`` reads (``<folder>/<class>/<font>.png``) from the fonts Debian's packages install.
"""
import os
import shutil
import string
import tempfile

import cv2
import numpy as np
from fontTools.agl import toUnicode
from fontTools.ttLib import TTFont, TTLibError
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

# Where Debian's font packages put their files (fonts-texgyre installs under texmf).
FONT_FOLDERS = ("/usr/share/fonts", "/usr/share/texmf/fonts/opentype")
FONT_EXTENSIONS = (".ttf", ".otf")
INSTALL_COMMAND = "apt-get update && apt-get install fonts-dejavu fonts-urw-base35 fonts-texgyre fonts-noto-core"
CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase
# K = 5 support images and the 15 queries of an evaluation episode.
MIN_IMAGES = 20
RENDER_SIZE = 96  # font size in pixels of the drawing that is then scaled down


class GlyphError(ValueError):
    """The glyph dataset cannot be built as asked; the message says why and what to install."""


def class_name(character):
    """The class folder name of ``character``, distinct even on case-insensitive file systems:
    "digit_0", "upper_A", "lower_a", else "U+XXXX"."""
    if character in string.digits:
        return f"digit_{character}"
    if character in string.ascii_uppercase:
        return f"upper_{character}"
    if character in string.ascii_lowercase:
        return f"lower_{character}"
    return f"U+{ord(character):04X}"


def find_fonts(folders=None):
    """Sorted real paths of the .ttf and .otf files under ``folders`` (default: FONT_FOLDERS; missing
    folders are skipped; a file reached through several links counts once)."""
    paths = set()
    for folder in FONT_FOLDERS if folders is None else folders:
        for directory, _, names in os.walk(folder):
            paths.update(os.path.realpath(os.path.join(directory, name)) for name in names
                         if name.lower().endswith(FONT_EXTENSIONS))
    return sorted(paths)


def mapped_characters(font_path):
    """The characters the font's Unicode cmap maps to a glyph whose name stands for that very
    character in the Adobe Glyph List ("A", "zero", "uni0041", "A.ss01"): .notdef, glyphs of
    symbol fonts that put Greek letters or dingbats at Latin code points ("Alpha", "a10"), and
    names that stand for no character are left out. Empty for a file fontTools cannot read."""
    try:
        with TTFont(font_path, lazy=True) as font:
            cmap = font.getBestCmap() or {}
    except (TTLibError, OSError, ValueError, KeyError, AssertionError):
        return set()
    return {chr(code) for code, glyph in cmap.items() if toUnicode(glyph) == chr(code)}


def centre_glyph(ink, size=28, box=20):
    """Gray ``ink`` (H, W; 0 = background) cropped to its ink, scaled so its longer side is ``box``
    (aspect ratio kept, area-averaged), and pasted in a ``size`` x ``size`` uint8 field with its
    centre of mass as near the centre as the field allows. None when ``ink`` has no ink."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return None
    cropped = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = box / max(cropped.shape)
    height, width = (max(1, round(side * scale)) for side in cropped.shape)
    glyph = cv2.resize(cropped, (width, height), interpolation=cv2.INTER_AREA)
    if not glyph.any():
        return None
    weights = glyph.astype(np.float64)
    centre_y = (weights.sum(axis=1) @ np.arange(height)) / weights.sum()
    centre_x = (weights.sum(axis=0) @ np.arange(width)) / weights.sum()
    top = int(np.clip(round((size - 1) / 2 - centre_y), 0, size - height))
    left = int(np.clip(round((size - 1) / 2 - centre_x), 0, size - width))
    field = np.zeros((size, size), np.uint8)
    field[top : top + height, left : left + width] = glyph
    return field


def render_glyph(font, character, size=28, box=20):
    """``character`` drawn with the Pillow ``font`` and centred by :func:`centre_glyph`: uint8
    (size, size), or None when the glyph has no ink."""
    left, top, right, bottom = font.getbbox(character)
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("L", (right - left, bottom - top))
    ImageDraw.Draw(canvas).text((-left, -top), character, font=font, fill=255)
    return centre_glyph(np.asarray(canvas), size, box)


def render_fonts(font_paths, characters=CHARACTERS, size=28, box=20, progress=True):
    """{character: [(font path, image)]} over ``font_paths`` in order: characters a font lacks are
    skipped, and an image identical to an earlier font's image of the same character is dropped."""
    rendered = {character: {} for character in characters}
    for path in tqdm(font_paths, desc="rendering glyphs", unit="font", disable=not progress, leave=False):
        mapped = mapped_characters(path) & set(characters)
        if not mapped:
            continue
        font = ImageFont.truetype(path, RENDER_SIZE)
        for character in sorted(mapped):
            image = render_glyph(font, character, size, box)
            if image is not None:
                rendered[character].setdefault(image.tobytes(), (path, image))
    return {character: list(images.values()) for character, images in rendered.items()}


def build_glyph_folder(folder, font_paths=None, characters=CHARACTERS, min_images=MIN_IMAGES, size=28, box=20,
                       progress=True):
    """Write ``folder/<class_name(character)>/<font file name>.png`` for every character and font
    (:func:`render_fonts`), and return {class name: number of images}.

    ``font_paths`` default to :func:`find_fonts`. Raises :class:`GlyphError` when no font is found
    (naming the apt-get command that installs some), or when a character keeps fewer than
    ``min_images`` images (K support images plus the queries of an episode), or when ``folder``
    exists already. The folder is written whole under a temporary name and then renamed, so a failed
    build leaves nothing behind."""
    if os.path.exists(folder):
        raise GlyphError(f"{folder!r} exists already; remove it to build the glyphs again")
    fonts = find_fonts() if font_paths is None else list(font_paths)
    if not fonts:
        where = f"under {list(FONT_FOLDERS)}" if font_paths is None else "in font_paths"
        raise GlyphError(f"no .ttf or .otf fonts found {where}; install some (as root) with: {INSTALL_COMMAND}")
    rendered = render_fonts(fonts, characters, size, box, progress)
    counts = {class_name(character): len(images) for character, images in rendered.items()}
    short = {name: count for name, count in counts.items() if count < min_images}
    if short:
        raise GlyphError(f"{len(fonts)} fonts give fewer than {min_images} distinct images (K support images "
                         f"plus the queries of an episode) of {short}; install more fonts ({INSTALL_COMMAND}) or "
                         "leave those characters out")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".glyphs-", dir=parent)
    try:
        for character, images in rendered.items():
            class_folder = os.path.join(staging, class_name(character))
            os.makedirs(class_folder)
            for path, image in images:
                stem, copies = os.path.splitext(os.path.basename(path))[0], 1
                target = os.path.join(class_folder, stem + ".png")
                while os.path.exists(target):  # two font files of one name in different folders
                    copies += 1
                    target = os.path.join(class_folder, f"{stem}-{copies}.png")
                if not cv2.imwrite(target, image):
                    raise GlyphError(f"could not write {target!r}")
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts
