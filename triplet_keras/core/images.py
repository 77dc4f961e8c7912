"""Reading image files into RGB uint8 arrays with OpenCV.

Every image comes out as ``np.uint8`` of shape (H, W, 3) in RGB order, whatever is on disk: 8- or
16-bit, grayscale, gray + alpha, RGB or RGBA (alpha is dropped), JPEG, PNG, BMP, WebP or TIFF,
turned upright by its EXIF orientation tag where it has one.
Files are read with ``np.fromfile`` and decoded with ``cv2.imdecode`` so paths with non-ASCII
characters work on every platform (``cv2.imread`` does not handle them everywhere).
"""
import numbers
import os

import cv2
import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# The first bytes of each supported format; WebP is "RIFF" <size> "WEBP".
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")
_HEADER_BYTES = 12


class ImageReadError(ValueError):
    """A file is missing, empty, corrupt or not an image; the message names the file."""


def is_image_file(path):
    """True for a non-hidden file name with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def has_image_signature(path):
    """Cheap check of the first bytes of ``path``: False for missing, empty and non-image files.

    A file that passes can still be truncated or corrupt further in; only decoding tells.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(_HEADER_BYTES)
    except OSError:
        return False
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return True
    return header.startswith(_SIGNATURES)


def read_image(path, strict=True):
    """Decode ``path`` to RGB uint8 (H, W, 3).

    A file that cannot be read or decoded raises :class:`ImageReadError` naming it, or returns
    None when ``strict`` is False.
    """
    try:
        return _decode(path)
    except ImageReadError:
        if strict:
            raise
        return None


def _decode(path):
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(f"cannot read image file {path!r}: {error}") from error
    if data.size == 0:
        raise ImageReadError(f"image file {path!r} is empty")
    # Any depth and colour layout, with the EXIF orientation applied (IMREAD_UNCHANGED would skip it).
    image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ImageReadError(f"image file {path!r} is corrupt, truncated or not an image")
    return to_rgb_uint8(image, name=path)


def to_rgb_uint8(image, name="image"):
    """An OpenCV-decoded array (gray, gray+alpha, BGR or BGRA; uint8, uint16 or float in 0..1) to
    RGB uint8. 16-bit values v map to round(v / 257), so 65535 -> 255."""
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{name!r}: unsupported pixel type {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels in (1, 2):
        return cv2.cvtColor(image if image.ndim == 2 else image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"{name!r}: unsupported number of channels {channels}")


def as_image_size(size, name="image_size"):
    """``size`` as (height, width): an int n means n x n (as Keras and torchvision take it), else two
    positive ints; None stays None. ValueError naming ``name`` for anything else."""
    if size is None:
        return None
    size = size.tolist() if isinstance(size, np.ndarray) else size
    pair = (size, size) if _is_whole(size) else size
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(_is_whole(side) and side > 0 for side in pair)):
        raise ValueError(f"{name} must be a positive int (a square) or two positive ints (height, width), "
                         f"got {size!r}")
    return int(pair[0]), int(pair[1])


def _is_whole(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resize_image(image, size):
    """Resize to ``size`` = (height, width): area averaging when shrinking, bilinear otherwise."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)
