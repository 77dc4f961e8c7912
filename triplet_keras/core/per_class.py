"""Per-class row operations shared by the data, the transfer and the evaluation: class counts, and the
shuffled rows of every class that each per-class cut (splits, caps, halves, supports) starts from."""
import numpy as np


def class_counts(labels):
    """(classes, counts): the sorted distinct labels and how many rows each has."""
    return np.unique(np.asarray(labels), return_counts=True)


def classes_with_at_least(labels, n):
    """The sorted classes with at least ``n`` rows."""
    classes, counts = class_counts(labels)
    return classes[counts >= n]


def shuffled_rows_per_class(labels, rng):
    """[rows of each class in an order drawn from ``rng``], classes sorted: one ``rng.permutation`` per
    class in class order, the draws every per-class cut of the package depends on."""
    labels = np.asarray(labels)
    return [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
