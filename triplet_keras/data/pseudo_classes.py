"""Extra training classes made from the source images: their rotations and reflections.

A handful of source classes teaches an embedding little about new ones; each of the eight symmetries
g of the square (rotations by 0, 90, 180, 270 degrees, each with and without a mirror) turns class c
into a class of its own, labelled c + i * n for the i-th symmetry and n = max(label) + 1. On the
digits (5 -> 40 classes) this lifts 5-way accuracy on unseen digits (benchmarks/bench_accuracy.py).
The symmetries are applied as images are loaded, so nothing is copied eight times up front.
"""
import numpy as np

from .datasets import ArraySplit, Split

N_VARIANTS = 8


def symmetry(images, variant):
    """Symmetry ``variant`` (0..7) of square images (N, H, H, C): rot90^t(x) for variant t < 4,
    rot90^(t-4)(mirror(x)) otherwise."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"pseudo-classes need square images, got {images.shape[1]} x {images.shape[2]}")
    base = images[:, :, ::-1] if variant >= 4 else images
    return np.rot90(base, variant % 4, axes=(1, 2))


def symmetries(images):
    """The 8 symmetries of square images, in variant order."""
    return [symmetry(images, variant) for variant in range(N_VARIANTS)]


class PseudoClassSplit(Split):
    """Every image of ``split`` under each symmetry: row i * len(split) + j is image j under symmetry
    i, labelled split.labels[j] + i * n. Images come from ``split.load`` (a folder stays on disk and
    shares its decoded-image cache) and are turned as they are loaded."""

    def __init__(self, split):
        height, width = split.image_shape[:2]
        if height != width:
            raise ValueError(f"pseudo-classes need square images, got {height} x {width}")
        self.split = split
        n = int(split.labels.max()) + 1
        self.labels = np.concatenate([split.labels + i * n for i in range(N_VARIANTS)])

    @property
    def image_shape(self):
        return self.split.image_shape

    def load(self, indices):
        indices = np.asarray(indices, np.int64)
        variants, rows = np.divmod(indices, len(self.split))
        images = self.split.load(rows)
        turned = np.empty_like(images)
        for variant in np.unique(variants):
            chosen = variants == variant
            turned[chosen] = symmetry(images[chosen], variant)
        return turned

    def subset(self, indices):
        """The chosen rows, loaded into memory."""
        indices = np.asarray(indices, np.int64)
        return ArraySplit(self.load(indices), self.labels[indices])


def with_pseudo_classes(split):
    """PseudoClassSplit of ``split``; symmetry i of class c is class c + i * n."""
    return PseudoClassSplit(split)
