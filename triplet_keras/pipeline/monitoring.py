"""Training health signals, measured by the callbacks in :mod:`triplet_keras.pipeline.callbacks`.

- :class:`TrainingDivergedError`, raised by NaNGuard when the loss becomes NaN or infinite, with the
  likely causes (diverged_message).
- :func:`active_fraction` and :func:`mean_distance`, the signals of an embedding collapse that
  CollapseMonitor logs.
"""
import numpy as np

from triplet_keras.core.distances import distance_name, pairwise


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message lists the likely causes."""


def diverged_message(where, loss, learning_rate=None, precision=None):
    """What went wrong at ``where`` and what to try, as one paragraph."""
    causes = [f"the learning rate{f' ({learning_rate:g})' if learning_rate else ''} is too high: try it 10x lower"]
    if precision == "mixed_float16":
        causes.append("float16 overflow under mixed_float16: use precision mixed_bfloat16 or float32")
    else:
        causes.append("float16 overflow (with mixed_float16): use precision mixed_bfloat16 or float32")
    causes.append("bad input images (NaN or infinite pixels, or values far outside 0..255): check the dataset")
    return (f"training stopped: the loss became {loss} at {where}. Likely causes: " + "; ".join(causes)
            + ". The checkpoints hold the last epoch with a finite loss.")


def active_fraction(embeddings, labels, margin, squared=True):
    """Share of all valid triplets (a, p, n) of a batch with d(a, p) + margin > d(a, n); None if there are none."""
    x = np.asarray(embeddings, np.float64)
    d = pairwise(x, None, distance_name(None, squared))
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(labels), dtype=bool)
    valid = positive[:, :, None] & ~same[:, None, :]
    if not valid.any():
        return None
    return float(np.mean((d[:, :, None] + margin > d[:, None, :])[valid]))


def mean_distance(embeddings):
    """Mean L2 distance over all pairs of distinct rows."""
    x = np.asarray(embeddings, np.float64)
    d = pairwise(x, None, "l2")
    return float(d.sum() / max(len(x) * (len(x) - 1), 1))

