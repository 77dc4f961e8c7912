"""The keras.ops twins of :mod:`triplet_keras.core.distances`: same names, same formulas, always float32.

Built for losses: no NaN gradient anywhere, zero and equal embeddings included. The norm of
``l2_normalize`` is sqrt(max(|x|^2, 1e-24)), the same value as max(|x|, 1e-12) but with a zero
gradient at x = 0, and the square root of "l2" masks zeros before the root (:func:`safe_sqrt`).
"""
from keras import ops

from triplet_keras.core.distances import NORM_FLOOR, distance_name


def safe_sqrt(squared_distances):
    """sqrt with a zero gradient at 0 instead of NaN: mask the zeros before the root."""
    zero = ops.cast(ops.less_equal(squared_distances, 0.0), "float32")
    return ops.sqrt(squared_distances + zero * 1e-16) * (1.0 - zero)


def l2_normalize(x):
    """x / max(|x|, 1e-12) along the last axis, in float32: unit rows, zero rows stay zero."""
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), NORM_FLOOR**2))


def pairwise(x, y, metric):
    """Matrix D (len(x), len(y)) with D[i, j] = d(x_i, y_j) in float32; ``y=None`` for x against
    itself, with exact zeros on the diagonal (set before the square root of "l2")."""
    metric = distance_name(metric)
    itself = y is None
    x = ops.cast(x, "float32")
    y = x if itself else ops.cast(y, "float32")
    if metric == "cosine":
        d = 1.0 - ops.matmul(l2_normalize(x), ops.transpose(l2_normalize(y)))
    else:
        d = (ops.expand_dims(ops.sum(ops.square(x), axis=-1), 1) - 2.0 * ops.matmul(x, ops.transpose(y))
             + ops.expand_dims(ops.sum(ops.square(y), axis=-1), 0))
    d = ops.maximum(d, 0.0)
    if itself:
        d = d * (1.0 - ops.eye(ops.shape(x)[0], dtype="float32"))
    return safe_sqrt(d) if metric == "l2" else d


def paired(x, y, metric):
    """Vector (n,) with d(x_i, y_i) for two tensors of n rows, in float32."""
    metric = distance_name(metric)
    x = ops.cast(x, "float32")
    y = ops.cast(y, "float32")
    if metric == "cosine":
        return ops.maximum(1.0 - ops.sum(l2_normalize(x) * l2_normalize(y), axis=-1), 0.0)
    d = ops.sum(ops.square(x - y), axis=-1)
    return safe_sqrt(d) if metric == "l2" else d
