"""Synthetic target domains: the same classes drawn in another style, for the new-domain regime.

``style`` redraws each image with thicker strokes (a 3 x 3 dilation at 4x resolution, about half a pixel), then a
random rotation of 10 to 20 degrees either way and a random shear of up to 0.2, drawn per image from
the seed. It imitates a second writer (or, for poses, a second person): the class stays, the
appearance moves.
"""
import cv2
import numpy as np

from triplet_keras.data.datasets import ArraySplit

STYLES = ("style",)


def restyle(image, rng):
    """One RGB uint8 image in the ``style`` domain."""
    height, width = image.shape[:2]
    big = cv2.resize(image, (4 * width, 4 * height), interpolation=cv2.INTER_LINEAR)
    big = cv2.dilate(big, np.ones((3, 3), np.uint8), iterations=1)
    angle = rng.uniform(10, 20) * rng.choice([-1, 1])
    shear = rng.uniform(-0.2, 0.2)
    center = (2 * width, 2 * height)
    matrix = cv2.getRotationMatrix2D(center, angle, 1.0)
    matrix[0, 1] += shear
    matrix[0, 2] -= shear * center[1]
    big = cv2.warpAffine(big, matrix, (4 * width, 4 * height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)


def apply_style(name, images, seed=0):
    """Every image of a uint8 array (n, H, W, 3) in the domain ``name``; deterministic for a seed."""
    if name not in STYLES:
        raise ValueError(f"unknown target style {name!r}; expected one of {STYLES}")
    rng = np.random.default_rng(seed)
    return np.stack([restyle(image, rng) for image in images]) if len(images) else np.asarray(images)


def apply_to_split(name, split, seed=0):
    """An in-memory ArraySplit of ``split`` (loaded whole) in the domain ``name``."""
    images = split.load(np.arange(len(split)))
    return ArraySplit(apply_style(name, images, seed), split.labels)
