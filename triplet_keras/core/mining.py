"""Offline triplet mining: rows (anchor, positive, negative) of indices chosen from embeddings.

Every point of a class with at least two members is an anchor (points alone in their class are
skipped). Each anchor a gets ``triplets_per_anchor`` = k positives p drawn at random from its own
class (distinct while the class is large enough) and, for each, one negative n from another class
chosen by ``strategy`` (:mod:`triplet_keras.core.strategies`), with d the squared Euclidean distance
(Euclidean if not ``squared``):

- ``"random"``: uniformly among all negatives.
- ``"hard"``: the negative closest to the anchor; the j-th positive gets the j-th closest.
- ``"semi_hard"`` (FaceNet): the closest negative farther than the positive, d(a, p) < d(a, n),
  when it lies within the margin, d(a, n) < d(a, p) + margin; where no negative is semi-hard,
  the closest negative (the ``"hard"`` choice) is used instead, so no triplet is wasted on a
  negative that already satisfies the margin while a harder one exists. (The online loss of
  that name differs: see :mod:`triplet_keras.core.strategies`.)

Distances (:func:`triplet_keras.core.distances.pairwise`) are computed for ``block_size``
anchors against all N points at a time, so memory is O(block_size x N): the N x N matrix is never
built. Points are sorted by label first, so each block masks its own classes as column ranges.
Up to ``max_exact`` points the search is exact and the result depends only on the inputs and
``seed``, not on ``block_size``.

Above ``max_exact`` points, "hard" and "semi_hard" search each block of anchors against about
``candidates`` candidate negatives instead of all N points, with the same rules (and the same
fallback) on the candidates: time O(N x candidates), memory O(block_size x candidates) (plus the
members of a block's own classes when it holds several). Classes
are put in groups of nearby classes (k-means over the class means, groups of about
``block_size`` points); a block holds anchors of one group, and its candidates are:

- half from the classes nearest to the block's by class mean, whole classes while they fit, then
  a random part of the next one: hard and semi-hard negatives lie mostly there once the
  embedding separates the classes;
- half drawn uniformly from all N points, so an anchor whose positive lies far still finds
  negatives near its d(a, p), wherever they are;
- in a block of several (small) classes, their members too: each class's are near negatives for
  the others.

Every anchor has a negative among its candidates: another of the block's classes, or at least
one member of the nearest class. The anchors and positives are those of the exact search; the negatives also depend on
``block_size`` then.
"""
import numpy as np
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from triplet_keras.core.distances import distance_name, paired, pairwise
from triplet_keras.core.strategies import OFFLINE_STRATEGIES


def mine_triplets(embeddings, labels, strategy="semi_hard", margin=0.2, triplets_per_anchor=1, seed=0,
                  block_size=1024, squared=True, progress=True, max_exact=50_000, candidates=16_384):
    """int64 array (n_anchors * triplets_per_anchor, 3) of (anchor, positive, negative) row indices
    into ``embeddings`` (N, D), ordered by anchor. Exact up to ``max_exact`` points, else each
    block of anchors searches about ``candidates`` candidate negatives (see the module notes)."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"need embeddings (N, D) and N labels, got {embeddings.shape} and {labels.shape}")
    if strategy not in OFFLINE_STRATEGIES:
        raise ValueError(f"strategy must be one of {OFFLINE_STRATEGIES}, got {strategy!r}")
    if min(triplets_per_anchor, block_size, candidates) < 1 or max_exact < 0:
        raise ValueError("triplets_per_anchor, block_size and candidates must be >= 1, max_exact >= 0")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinity")

    order = np.argsort(labels, kind="stable")
    _, class_start, class_size = np.unique(labels[order], return_index=True, return_counts=True)
    if len(class_size) < 2:
        raise ValueError("mining needs at least two classes")
    # In label-sorted order, row i's class occupies rows start[i] : start[i] + size[i].
    start = np.repeat(class_start, class_size)
    size = np.repeat(class_size, class_size)
    anchors = np.flatnonzero(size > 1)
    if len(anchors) == 0:
        raise ValueError("no class has two members, so there is no anchor-positive pair")

    rng = np.random.default_rng(seed)
    positives = _draw_positives(anchors, start, size, triplets_per_anchor, rng)
    if strategy == "random":
        outside = (len(labels) - size[anchors])[:, None]
        drawn = rng.integers(0, outside, size=positives.shape)
        negatives = drawn + (drawn >= start[anchors][:, None]) * size[anchors][:, None]
    else:
        points = embeddings[order]
        if len(points) > max_exact:
            search = _CandidateSearch(points, class_start, class_size, candidates, block_size, seed)
        else:
            search = _ExactSearch(block_size)
        negatives = _mine_negatives(points, anchors, positives, start, size, strategy, margin, squared, progress,
                                    search)

    rows = order[np.stack([np.repeat(anchors, triplets_per_anchor), positives.ravel(), negatives.ravel()], 1)]
    return rows[np.argsort(rows[:, 0], kind="stable")].astype(np.int64)


def _draw_positives(anchors, start, size, count, rng):
    """(n_anchors, count) other members of each anchor's class: consecutive (cyclic) offsets from one
    random offset, so they are distinct while the class has more than ``count`` members."""
    others = size[anchors] - 1
    offsets = (rng.integers(0, others)[:, None] + np.arange(count)) % others[:, None]
    rank = (anchors - start[anchors])[:, None]
    return start[anchors][:, None] + offsets + (offsets >= rank)


def _mine_negatives(points, anchors, positives, start, size, strategy, margin, squared, progress, search):
    """(n_anchors, k) negatives: for each block of anchor positions ``search.blocks(anchors, start)``
    gives, search the columns ``search.columns(rows)`` (sorted point indices; None: all points)."""
    metric = distance_name(None, squared)
    # Two block buffers, grown only when a block needs more: fresh 100 MB arrays per block would
    # cost page faults.
    buffer = scratch = np.empty(0, np.float32)
    negatives = np.empty_like(positives)
    with tqdm(total=len(anchors), desc=f"mining {strategy}", unit="anchor", disable=not progress, leave=False) as bar:
        for block in search.blocks(anchors, start):
            rows = anchors[block]
            columns = search.columns(rows)
            shape = (len(rows), len(points) if columns is None else len(columns))
            if buffer.size < shape[0] * shape[1]:
                buffer, scratch = np.empty((2, shape[0] * shape[1]), np.float32)
            distances = pairwise(points[rows], points if columns is None else points[columns], metric,
                                 out=buffer[: shape[0] * shape[1]].reshape(shape))
            if columns is None:
                anchor_positive = np.take_along_axis(distances, positives[block], axis=1)
            else:  # the positives need not be among the candidates
                block_positives = positives[block]
                repeated_anchors = np.repeat(points[rows], block_positives.shape[1], axis=0)
                anchor_positive = paired(repeated_anchors, points[block_positives.ravel()], metric).reshape(
                    block_positives.shape)
            _mask_own_classes(distances, start[rows], size[rows], columns)
            if strategy == "hard":
                chosen = _closest(distances, positives.shape[1])
            else:
                chosen = _semi_hard(distances, anchor_positive, margin, scratch[: distances.size].reshape(shape))
            negatives[block] = chosen if columns is None else columns[chosen]
            bar.update(len(rows))
    return negatives


class _ExactSearch:
    """Blocks of ``block_size`` consecutive anchors, each against all points."""

    def __init__(self, block_size):
        self.block_size = block_size

    def blocks(self, anchors, start):
        return (slice(low, low + self.block_size) for low in range(0, len(anchors), self.block_size))

    def columns(self, rows):
        return None


class _CandidateSearch:
    """Blocks of at most ``block_size`` anchors from one group of nearby classes (k-means over the
    class means, about ``block_size`` points a group), each against candidate columns: ``count`` / 2
    members of the classes nearest to the block's by class mean (whole classes while they fit, then
    a random part of the next one), ``count`` / 2 points drawn uniformly, and the members of the
    block's own classes when it holds several."""

    def __init__(self, points, class_start, class_size, count, block_size, seed):
        self.class_start, self.class_size, self.block_size = class_start, class_size, block_size
        self.means = np.add.reduceat(points, class_start, axis=0) / class_size[:, None]
        self.near_count, self.random_count = count - count // 2, count // 2
        self.rng = np.random.default_rng([seed, 1])
        self.point_count = len(points)
        classes_per_group = max(1, block_size // int(np.median(class_size)))
        group_count = -(-len(class_size) // classes_per_group)
        if 1 < group_count < len(class_size):
            kmeans = KMeans(group_count, n_init=1, max_iter=20, random_state=seed)
            self.class_group = kmeans.fit_predict(self.means)
        else:
            self.class_group = np.arange(len(class_size))

    def blocks(self, anchors, start):
        """Index arrays into ``anchors`` (label-sorted rows), one group at a time, cut every
        ``block_size`` anchors."""
        anchor_class = np.searchsorted(self.class_start, start[anchors])
        group = self.class_group[anchor_class]
        visit = np.argsort(group, kind="stable")
        group_start = np.flatnonzero(np.diff(group[visit], prepend=-1))
        for low, high in zip(group_start, [*group_start[1:], len(visit)]):
            for cut in range(low, high, self.block_size):
                yield visit[cut : min(cut + self.block_size, high)]

    def columns(self, rows):
        own = np.unique(np.searchsorted(self.class_start, rows, side="right") - 1)
        distances = pairwise(self.means[own], self.means, "squared_l2").min(axis=0)
        distances[own] = np.inf
        order = np.argsort(distances)[: len(self.class_size) - len(own)]
        whole = int(np.sum(np.cumsum(self.class_size[order]) <= self.near_count))
        # Several own classes are candidates too (each one's members are negatives for the others).
        classes = np.concatenate([order[:whole], own if len(own) > 1 else []]).astype(np.int64)
        parts = [np.arange(self.class_start[c], self.class_start[c] + self.class_size[c]) for c in classes]
        if whole < len(order):
            room = self.near_count - int(self.class_size[order[:whole]].sum())
            following = order[whole]
            parts.append(self.class_start[following] + self.rng.choice(self.class_size[following], room, replace=False))
        parts.append(self.rng.integers(0, self.point_count, self.random_count))
        return np.unique(np.concatenate(parts))


def _mask_own_classes(distances, row_start, row_size, columns=None):
    """Set each row's own-class columns to +inf; rows come sorted by class, so one slice per class.
    ``columns``: the sorted point index of each column of ``distances`` (None: column j is point j)."""
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(row_start)) + 1, [len(row_start)]])
    for first, stop in zip(bounds[:-1], bounds[1:]):
        low, high = row_start[first], row_start[first] + row_size[first]
        if columns is not None:
            low, high = np.searchsorted(columns, [low, high])
        distances[first:stop, low:high] = np.inf


def _closest(distances, count):
    """(rows, count) columns of the ``count`` smallest finite distances per row, nearest first (the
    nearest repeats once a row runs out). Overwrites the chosen entries with +inf."""
    rows = np.arange(len(distances))
    chosen = np.empty((len(distances), count), np.int64)
    for j in range(count):
        columns = distances.argmin(axis=1)
        chosen[:, j] = np.where(np.isinf(distances[rows, columns]), chosen[:, 0], columns)
        distances[rows, columns] = np.inf
    return chosen


def _semi_hard(distances, anchor_positive, margin, scratch):
    """(rows, k): per (anchor, positive) the closest negative with d_ap < d_an < d_ap + margin, else
    the closest negative. The smallest d_an above d_ap is found without a slow masked write: it
    has the smallest 1 / (d_ap - d_an), the only negative values (d_an = d_ap gives +inf, own-class
    +inf gives -0)."""
    rows = np.arange(len(distances))
    closest = distances.argmin(axis=1)
    chosen = np.empty(anchor_positive.shape, np.int64)
    for j, threshold in enumerate(anchor_positive.T):
        np.subtract(threshold[:, None], distances, out=scratch)
        with np.errstate(divide="ignore"):
            candidate = np.reciprocal(scratch, out=scratch).argmin(axis=1)
        found = distances[rows, candidate]
        semi_hard = (found > threshold) & (found < threshold + margin)
        chosen[:, j] = np.where(semi_hard, candidate, closest)
    return chosen
