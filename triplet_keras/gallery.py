"""A gallery of labelled embeddings to look up: items are appended with their class names and ids, and
``lookup`` ranks them by the cosine distance to each query (scikit-learn's NearestNeighbors, brute force).
"""
from typing import NamedTuple

import numpy as np
from sklearn.neighbors import NearestNeighbors


class Gallery(NamedTuple):
    """Items to look up: ``embeddings`` (N, D) float32, ``labels`` and ``ids`` (N,) strings."""
    embeddings: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


class Neighbours(NamedTuple):
    """Lookup result, each (n, k), nearest first: gallery ``labels``, ``ids`` and cosine ``distances``."""
    labels: np.ndarray
    ids: np.ndarray
    distances: np.ndarray


def extend_gallery(gallery, embeddings, labels, ids=None, dimension=None):
    """A Gallery of the items of ``gallery`` (None: none yet) followed by the new ones: embeddings (N, D)
    with D = ``dimension`` when given, labels (N,) class names, ids (N,) (default: the running numbers
    after the items already there), stored as float32 and strings."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).astype(str)
    start = 0 if gallery is None else len(gallery.ids)
    ids = np.arange(start, start + len(labels)) if ids is None else np.asarray(ids)
    ids = ids.astype(str)
    if embeddings.ndim != 2 or (dimension is not None and embeddings.shape[1] != dimension):
        raise ValueError(f"gallery embeddings must be (N, {dimension or 'D'}), got {embeddings.shape}")
    if not len(embeddings) == len(labels) == len(ids):
        raise ValueError(f"{len(embeddings)} gallery images, {len(labels)} labels and {len(ids)} ids")
    if gallery is not None:
        embeddings, labels, ids = (np.concatenate([old, new]) for old, new in zip(gallery, (embeddings, labels, ids)))
    return Gallery(embeddings, labels, ids)


def neighbour_index(gallery):
    """scikit-learn NearestNeighbors over the gallery embeddings (cosine, brute force)."""
    return NearestNeighbors(metric="cosine", algorithm="brute").fit(gallery.embeddings)


def lookup(gallery, index, embeddings, k=5):
    """The k gallery items nearest to each embedding (cosine distance), as Neighbours (n, k); ``index``
    is neighbour_index(gallery)."""
    if not 1 <= k <= len(gallery.ids):
        raise ValueError(f"k must be between 1 and the gallery size {len(gallery.ids)}, got {k!r}")
    found, nearest = index.kneighbors(np.asarray(embeddings, np.float32), n_neighbors=k)
    return Neighbours(gallery.labels[nearest], gallery.ids[nearest], found)
