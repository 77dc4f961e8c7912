"""Offline triplet mining: rows (anchor, positive, negative) of indices chosen from embeddings.

Every point of a class with at least two members is an anchor (points alone in their class are
skipped). Each anchor a gets ``triplets_per_anchor`` = k positives p drawn at random from its own
class (distinct while the class is large enough) and, for each, one negative n from another class
chosen by ``strategy``, with d the squared Euclidean distance (Euclidean if not ``squared``):

- ``"random"``: uniformly among all negatives.
- ``"hard"``: the negative closest to the anchor; the j-th positive gets the j-th closest.
- ``"semi_hard"`` (FaceNet): the closest negative farther than the positive, d(a, p) < d(a, n),
  when it lies within the margin, d(a, n) < d(a, p) + margin; where no negative is semi-hard,
  the closest negative (the ``"hard"`` choice) is used instead, so no triplet is wasted on a
  negative that already satisfies the margin while a harder one exists.

Distances d(a, j) = |x_a|^2 - 2 x_a.x_j + |x_j|^2 (clamped at 0) are computed for ``block_size``
anchors against all N points at a time, so memory is O(block_size x N): the N x N matrix is never
built. Points are sorted by label first, so each block masks its own classes as column ranges.
The result depends only on the inputs and ``seed``, not on ``block_size``.
"""
import numpy as np
from tqdm.auto import tqdm

STRATEGIES = ("semi_hard", "hard", "random")


def mine_triplets(embeddings, labels, strategy="semi_hard", margin=0.2, triplets_per_anchor=1, seed=0,
                  block_size=1024, squared=True, progress=True):
    """int64 array (n_anchors * triplets_per_anchor, 3) of (anchor, positive, negative) row indices
    into ``embeddings`` (N, D), ordered by anchor."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"need embeddings (N, D) and N labels, got {embeddings.shape} and {labels.shape}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if triplets_per_anchor < 1 or block_size < 1:
        raise ValueError("triplets_per_anchor and block_size must be >= 1")
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
        negatives = _mine_negatives(embeddings[order], anchors, positives, start, size, strategy, margin,
                                    block_size, squared, progress)

    rows = order[np.stack([np.repeat(anchors, triplets_per_anchor), positives.ravel(), negatives.ravel()], 1)]
    return rows[np.argsort(rows[:, 0], kind="stable")].astype(np.int64)


def _draw_positives(anchors, start, size, count, rng):
    """(n_anchors, count) other members of each anchor's class: consecutive (cyclic) offsets from one
    random offset, so they are distinct while the class has more than ``count`` members."""
    others = size[anchors] - 1
    offsets = (rng.integers(0, others)[:, None] + np.arange(count)) % others[:, None]
    rank = (anchors - start[anchors])[:, None]
    return start[anchors][:, None] + offsets + (offsets >= rank)


def _mine_negatives(points, anchors, positives, start, size, strategy, margin, block_size, squared, progress):
    minus_two_points = -2.0 * points
    squared_norms = np.einsum("ij,ij->i", points, points)
    # Two block buffers, allocated once: fresh 100 MB arrays per block would cost page faults.
    buffer, scratch = np.empty((2, min(block_size, len(anchors)), len(points)), np.float32)
    negatives = np.empty_like(positives)
    with tqdm(total=len(anchors), desc=f"mining {strategy}", unit="anchor", disable=not progress, leave=False) as bar:
        for low in range(0, len(anchors), block_size):
            rows = anchors[low : low + block_size]
            distances = buffer[: len(rows)]
            np.matmul(points[rows], minus_two_points.T, out=distances)
            distances += squared_norms
            if not squared:  # else d(a, j) - |x_a|^2: a per-row constant changes no choice within a row
                distances += squared_norms[rows, None]
                np.sqrt(np.maximum(distances, 0.0, out=distances), out=distances)
            anchor_positive = np.take_along_axis(distances, positives[low : low + block_size], axis=1)
            _mask_own_classes(distances, start[rows], size[rows])
            if strategy == "hard":
                negatives[low : low + len(rows)] = _closest(distances, positives.shape[1])
            else:
                negatives[low : low + len(rows)] = _semi_hard(distances, anchor_positive, margin, scratch[: len(rows)])
            bar.update(len(rows))
    return negatives


def _mask_own_classes(distances, row_start, row_size):
    """Set each row's own-class columns to +inf; rows come sorted by class, so one slice per class."""
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(row_start)) + 1, [len(row_start)]])
    for first, stop in zip(bounds[:-1], bounds[1:]):
        distances[first:stop, row_start[first] : row_start[first] + row_size[first]] = np.inf


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
    has the smallest 1 / (d_ap - d_an), as every d_an < d_ap gives a value > 0, a tie d_an == d_ap
    gives 1 / +0 = +inf and own-class +inf gives -0."""
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
