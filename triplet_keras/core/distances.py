"""Distances between embeddings: the one vocabulary of the package, in numpy.

:mod:`triplet_keras.core.distances_ops` holds the keras.ops twins, under the same names and with the same
formulas (float32 there). For rows x_i of x and y_j of y, ``metric`` is one of DISTANCES:

* ``"squared_l2"``: |x_i - y_j|^2, computed as |x_i|^2 - 2 x_i.y_j + |y_j|^2 clamped at 0;
* ``"l2"`` (``"euclidean"`` is a synonym, scikit-learn's name): the square root of that;
* ``"cosine"``: 1 - x_i.y_j / (max(|x_i|, 1e-12) max(|y_j|, 1e-12)) clamped at 0, so a zero vector
  is at distance 1 from every vector.

``pairwise(x, None, metric)`` is x against itself, with exact zeros on the diagonal.
"""
import numpy as np

DISTANCES = ("squared_l2", "l2", "cosine")
SYNONYMS = {"euclidean": "l2"}
NORM_FLOOR = 1e-12


def distance_name(distance, squared=True):
    """The name in DISTANCES of ``distance`` (a synonym included); when it is None, "squared_l2" or
    "l2" after the ``squared`` flag of the triplet-loss conventions."""
    if distance is None:
        return "squared_l2" if squared else "l2"
    distance = SYNONYMS.get(distance, distance)
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES + tuple(SYNONYMS)}, got {distance!r}")
    return distance


def l2_normalize(x):
    """Rows of x divided by max(|x|, 1e-12): unit rows, zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_FLOOR)


def _floats(a):
    """``a`` as an array of floats: float32 or wider kept as they are, other numbers to float32 or float64."""
    a = np.asarray(a)
    return a.astype(np.result_type(a.dtype, np.float32), copy=False)


def pairwise(x, y, metric, out=None):
    """Matrix D (len(x), len(y)) with D[i, j] = d(x_i, y_j), in the float dtype of x and y; ``y=None``
    for x against itself (zero diagonal). ``out`` is an array to write D into."""
    metric = distance_name(metric)
    x = _floats(x)
    y = None if y is None else _floats(y)
    if metric == "cosine":
        x = l2_normalize(x)
        d = np.matmul(x, (x if y is None else l2_normalize(y)).T, out=out)
        np.subtract(1.0, d, out=d)
    else:
        d = np.matmul(x, (x if y is None else y).T, out=out)
        d *= -2.0
        d += np.einsum("ij,ij->i", x, x)[:, None]
        d += np.einsum("ij,ij->i", x, x) if y is None else np.einsum("ij,ij->i", y, y)
    np.maximum(d, 0.0, out=d)
    if y is None:
        np.fill_diagonal(d, 0.0)
    return np.sqrt(d, out=d) if metric == "l2" else d


def paired(x, y, metric):
    """Vector (n,) with d(x_i, y_i) for two arrays of n rows."""
    metric = distance_name(metric)
    x, y = _floats(x), _floats(y)
    if metric == "cosine":
        return np.maximum(1.0 - np.sum(l2_normalize(x) * l2_normalize(y), axis=-1), 0.0)
    d = np.sum((x - y) ** 2, axis=-1)
    return np.sqrt(d) if metric == "l2" else d
