"""Helpers for the image and dataset tests: write small real image files with OpenCV."""
import os

import cv2
import numpy as np


def random_rgb(height=12, width=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path, rgb_or_raw, bgr_order=False):
    """Encode an array with OpenCV by the extension of ``path`` (which may be non-ASCII).

    3-channel arrays are given in RGB and stored as the file's BGR unless ``bgr_order``; other
    channel counts are written as given.
    """
    image = rgb_or_raw
    if image.ndim == 3 and image.shape[2] == 3 and not bgr_order:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(os.path.splitext(str(path))[1], image)
    assert ok, path
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    encoded.tofile(str(path))
    return path


def write_truncated_jpeg(path, seed=0):
    write_image(path, random_rgb(32, 32, seed))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


def write_jpeg_with_orientation(path, rgb, orientation):
    """A lossless-quality JPEG of ``rgb`` with an EXIF APP1 segment whose only tag is Orientation (0x0112).

    The segment is "Exif\\0\\0", a little-endian TIFF header, and one IFD of one SHORT entry.
    """
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    ifd = (b"\x01\x00" + b"\x12\x01" + b"\x03\x00" + b"\x01\x00\x00\x00"
           + orientation.to_bytes(2, "little") + b"\x00\x00" + b"\x00\x00\x00\x00")
    exif = b"Exif\x00\x00" + b"II*\x00" + b"\x08\x00\x00\x00" + ifd
    segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    data = encoded.tobytes()
    with open(path, "wb") as file:
        file.write(data[:2] + segment + data[2:])
    return path
