"""A gallery of labelled embeddings to look up: items are appended with their class names and ids, and
``lookup`` ranks them by the cosine distance to each query through a :class:`GalleryIndex`.

The index holds the L2-normalised gallery embeddings in FAISS: an exact inner-product search
(``IndexFlatIP``) up to ``exact_limit`` items, and beyond it an inverted-file index (``IndexIVFFlat``)
of ``nlist = 2 sqrt(N)`` k-means cells (fewer for small N, see cell_count), of which the ``probes``
nearest to a query are scanned. The cosine distance of a found item is 1 - <q, x> / (|q| |x|) either
way (a zero vector is at distance 1).
The index grows with the gallery: new items are added to it, and the cells are trained again (on all
items) once cell_count(N) reaches twice their number (for large N: the gallery is four times the size
they were trained at). It is saved in FAISS's own serialised format.
"""
import math
from typing import NamedTuple

import faiss
import numpy as np
from sklearn.preprocessing import normalize

EXACT_LIMIT = 50_000
PROBES = 16
TRAINING_POINTS_PER_CELL = 40  # k-means sample size per cell (FAISS warns below 39)
KMEANS_ITERATIONS = 10


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


def unit_rows(embeddings):
    """float32 rows scaled to length 1 (zero rows stay zero)."""
    return normalize(np.asarray(embeddings, np.float32), copy=True).astype(np.float32, copy=False)


def cell_count(size):
    """The number of IVF cells for a gallery of ``size`` items: 2 sqrt(size), at most one cell per
    TRAINING_POINTS_PER_CELL items."""
    return max(1, min(int(2 * math.sqrt(size)), size // TRAINING_POINTS_PER_CELL))


class GalleryIndex:
    """Nearest gallery rows by cosine distance, in FAISS (see the module docstring).

    ``extend(embeddings)`` brings the index up to date with the gallery embeddings (N, D), whose first
    ``size`` rows it already holds; ``search(queries, k)`` gives (distances, rows), each (n, k).
    """

    def __init__(self, dimension, exact_limit=EXACT_LIMIT, probes=PROBES):
        if exact_limit < 1 or probes < 1:
            raise ValueError(f"exact_limit and probes must be >= 1, got {exact_limit!r} and {probes!r}")
        self.dimension = dimension
        self.exact_limit = exact_limit
        self.probes = probes
        self.index = faiss.IndexFlatIP(dimension)

    @property
    def size(self):
        return self.index.ntotal

    @property
    def exact(self):
        return not isinstance(self.index, faiss.IndexIVFFlat)

    def extend(self, embeddings):
        """Add the rows of ``embeddings`` past ``size``; (re)train the cells when the gallery passes
        ``exact_limit`` or has grown fourfold since they were trained."""
        total = len(embeddings)
        if total < self.size:
            raise ValueError(f"the index holds {self.size} items but the gallery only {total}")
        if total == self.size:
            return
        if total > self.exact_limit and (self.exact or cell_count(total) >= 2 * self.index.nlist):
            self._train(embeddings)
        else:
            self.index.add(unit_rows(embeddings[self.size:]))

    def _train(self, embeddings):
        """A new IVF index of cell_count(N) cells, trained on a fixed sample, holding every row."""
        cells = cell_count(len(embeddings))
        quantizer = faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexIVFFlat(quantizer, self.dimension, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = KMEANS_ITERATIONS
        sample = np.random.default_rng(0).choice(len(embeddings), min(len(embeddings), TRAINING_POINTS_PER_CELL * cells),
                                                 replace=False)
        index.train(unit_rows(embeddings[np.sort(sample)]))
        for start in range(0, len(embeddings), EXACT_LIMIT):
            index.add(unit_rows(embeddings[start:start + EXACT_LIMIT]))
        self.index = index

    def search(self, queries, k):
        """(cosine distances, gallery rows), each (n, k), nearest first."""
        queries = unit_rows(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must be (n, {self.dimension}), got {queries.shape}")
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be between 1 and the gallery size {self.size}, got {k!r}")
        if self.exact:
            similarities, rows = self.index.search(queries, k)
        else:
            similarities, rows = self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=self.probes))
            short = np.flatnonzero((rows < 0).any(axis=1))  # the probed cells held fewer than k items
            if len(short):
                every_cell = faiss.SearchParametersIVF(nprobe=self.index.nlist)
                similarities[short], rows[short] = self.index.search(queries[short], k, params=every_cell)
        return 1 - similarities, rows

    def to_bytes(self):
        """The index in FAISS's serialised format, as a uint8 array."""
        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, data, dimension, exact_limit=EXACT_LIMIT, probes=PROBES):
        """A GalleryIndex of an array written by to_bytes (a flat or IVF inner-product index over
        ``dimension``); ValueError for anything else."""
        try:
            index = faiss.deserialize_index(np.asarray(data, np.uint8))
        except RuntimeError as error:  # FAISS's error for bytes it cannot parse
            raise ValueError(f"not a FAISS index: {error}") from error
        if not isinstance(index, (faiss.IndexFlatIP, faiss.IndexIVFFlat)):
            raise ValueError(f"a {type(index).__name__}, not an IndexFlatIP or IndexIVFFlat")
        if index.d != dimension or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"not an inner-product index of {dimension}-d vectors")
        gallery_index = cls(dimension, exact_limit, probes)
        gallery_index.index = index
        return gallery_index


def lookup(gallery, index, embeddings, k=5):
    """The k gallery items nearest to each embedding (cosine distance), as Neighbours (n, k); ``index``
    is a GalleryIndex extended with the gallery embeddings."""
    if not 1 <= k <= len(gallery.ids):
        raise ValueError(f"k must be between 1 and the gallery size {len(gallery.ids)}, got {k!r}")
    distances, rows = index.search(embeddings, k)
    return Neighbours(gallery.labels[rows], gallery.ids[rows], distances)
