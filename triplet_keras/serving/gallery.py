"""A gallery of labelled embeddings to look up: items are appended with their class names and ids, and
``lookup`` ranks them by the cosine distance to each query through a :class:`GalleryIndex`.

The index holds the L2-normalised gallery embeddings in FAISS: an exact inner-product search
(``IndexFlatIP``) up to ``exact_limit`` items, and beyond it an inverted-file index (``IndexIVFFlat``)
of ``nlist = 2 sqrt(N)`` k-means cells (fewer for small N, see cell_count), of which the ``probes``
nearest to a query are scanned. The cosine distance of a found item is 1 - <q, x> / (|q| |x|) either
way (a zero vector is at distance 1).
The index grows with the gallery: new items are added to it, and the cells are trained again (on all
items) once cell_count(N) reaches twice their number (for large N: the gallery is four times the size
they were trained at). It is saved as two arrays, the cell centroids and the cell of each item, from
which :meth:`GalleryIndex.from_cells` rebuilds the same index.
"""
import math
from typing import NamedTuple

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

EXACT_LIMIT = 20_000
PROBES = 12
TRAINING_POINTS_PER_CELL = 40  # k-means sample size per cell (FAISS warns below 39)
KMEANS_ITERATIONS = 10
ADD_ROWS = 65_536  # rows normalised and added to the cells at a time
# Fewer queries are searched on one OpenMP thread: on a busy machine, waking the others costs more.
PARALLEL_QUERIES = 20


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
    """float32 rows scaled to length 1 (zero rows stay zero); ValueError for NaN or infinity."""
    embeddings = np.asarray(embeddings, np.float32)
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings must be finite: found NaN or infinity")
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1)


def cell_count(size):
    """The number of IVF cells for a gallery of ``size`` items: 2 sqrt(size), at most one cell per
    TRAINING_POINTS_PER_CELL items."""
    return max(1, min(int(2 * math.sqrt(size)), size // TRAINING_POINTS_PER_CELL))


class GalleryIndex:
    """Nearest gallery rows by cosine distance, in FAISS (see the module docstring).

    ``extend(embeddings)`` brings the index up to date with the gallery embeddings (N, D), whose first
    ``size`` rows it already holds; ``search(queries, k)`` gives (distances, rows), each (n, k).
    ``centroids`` (nlist, D) and ``cells`` (N,), the cell of each row, are None while exact.
    """

    def __init__(self, dimension, exact_limit=EXACT_LIMIT, probes=PROBES):
        if exact_limit < 1 or probes < 1:
            raise ValueError(f"exact_limit and probes must be >= 1, got {exact_limit!r} and {probes!r}")
        self.dimension = dimension
        self.exact_limit = exact_limit
        self.probes = probes
        self.index = faiss.IndexFlatIP(dimension)
        self.centroids = self.cells = None

    @property
    def size(self):
        return self.index.ntotal

    @property
    def exact(self):
        return self.cells is None

    def extend(self, embeddings):
        """Add the rows of ``embeddings`` past ``size``; (re)train the cells when the gallery passes
        ``exact_limit`` or has grown fourfold since they were trained."""
        total = len(embeddings)
        if total < self.size:
            raise ValueError(f"the index holds {self.size} items but the gallery only {total}")
        if total == self.size:
            return
        if total > self.exact_limit and (self.exact or cell_count(total) >= 2 * len(self.centroids)):
            sample = np.random.default_rng(0).choice(total, min(total, TRAINING_POINTS_PER_CELL * cell_count(total)),
                                                     replace=False)
            kmeans = faiss.Kmeans(self.dimension, cell_count(total), niter=KMEANS_ITERATIONS, spherical=True, seed=0)
            kmeans.train(unit_rows(embeddings[np.sort(sample)]))
            self._use_cells(kmeans.centroids)
        if self.exact:
            self.index.add(unit_rows(embeddings[self.size:]))
        else:
            for start in range(self.size, total, ADD_ROWS):
                rows = unit_rows(embeddings[start:start + ADD_ROWS])
                self._add_to_cells(rows, self.index.quantizer.search(rows, 1)[1][:, 0])

    def _use_cells(self, centroids):
        """Start an empty IVF index over these centroids."""
        quantizer = faiss.IndexFlatIP(self.dimension)
        quantizer.add(centroids)
        self.index = faiss.IndexIVFFlat(quantizer, self.dimension, len(centroids), faiss.METRIC_INNER_PRODUCT)
        self.centroids, self.cells = centroids, np.zeros(0, np.int64)

    def _add_to_cells(self, rows, cells):
        add_preassigned(self.index, rows, cells)
        self.cells = np.concatenate([self.cells, cells])

    def search(self, queries, k):
        """(cosine distances, gallery rows), each (n, k), nearest first."""
        queries = unit_rows(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must be (n, {self.dimension}), got {queries.shape}")
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be between 1 and the gallery size {self.size}, got {k!r}")
        threads = faiss.omp_get_max_threads()  # OpenMP's setting for the calling thread
        faiss.omp_set_num_threads(threads if len(queries) >= PARALLEL_QUERIES else 1)
        try:
            if self.exact:
                similarities, rows = self.index.search(queries, k)
            else:
                similarities, rows = self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=self.probes))
                short = np.flatnonzero((rows < 0).any(axis=1))  # the probed cells held fewer than k items
                if len(short):
                    every_cell = faiss.SearchParametersIVF(nprobe=self.index.nlist)
                    similarities[short], rows[short] = self.index.search(queries[short], k, params=every_cell)
        finally:
            faiss.omp_set_num_threads(threads)
        return 1 - similarities, rows

    @classmethod
    def from_cells(cls, embeddings, centroids, cells, exact_limit=EXACT_LIMIT, probes=PROBES):
        """The approximate index of the gallery ``embeddings`` (N, D) with these ``centroids`` (nlist, D)
        and ``cells`` (N,) ints in [0, nlist), as a saved index's attributes; ValueError for arrays that
        do not fit together."""
        embeddings = np.asarray(embeddings, np.float32)
        centroids, cells = np.asarray(centroids), np.asarray(cells)
        dimension = embeddings.shape[1]
        if centroids.ndim != 2 or centroids.shape[1] != dimension or not len(centroids) \
                or centroids.dtype.kind != "f" or not np.all(np.isfinite(centroids)):
            raise ValueError(f"index centroids must be finite floats (nlist, {dimension}), got {centroids.dtype} "
                             f"{centroids.shape}")
        if cells.shape != (len(embeddings),) or cells.dtype.kind not in "iu" \
                or (len(cells) and not 0 <= cells.min() <= cells.max() < len(centroids)):
            raise ValueError(f"index cells must be {len(embeddings)} ints in [0, {len(centroids)}), one per "
                             f"gallery item, got {cells.dtype} {cells.shape}")
        index = cls(dimension, exact_limit, probes)
        index._use_cells(centroids.astype(np.float32))
        for start in range(0, len(embeddings), ADD_ROWS):
            rows = slice(start, start + ADD_ROWS)
            index._add_to_cells(unit_rows(embeddings[rows]), cells[rows].astype(np.int64))
        return index


def lookup(gallery, index, embeddings, k=5):
    """The k gallery items nearest to each embedding (cosine distance), as Neighbours (n, k); ``index``
    is a GalleryIndex extended with the gallery embeddings."""
    if not 1 <= k <= len(gallery.ids):
        raise ValueError(f"k must be between 1 and the gallery size {len(gallery.ids)}, got {k!r}")
    distances, rows = index.search(embeddings, k)
    return Neighbours(gallery.labels[rows], gallery.ids[rows], distances)
