"""The source's part in the target prototypes: which source class each target class maps to, domain
centring, the source prior of ``calibrate`` (aligned or borrowed source means) and the translated
source points of ``translate`` with kNN.

A target class c maps to a source class map(c), or is new (index -1). For the mapped classes the
domain shift is delta = mean_c (mu_t(c) - mu_s(map(c))) (0 when none is mapped); a new class borrows
from its ``n_borrow`` nearest source classes j, with weights softmax(-d(mu_t(c) - delta, mu_s(j)) /
temperature) over those.
"""
from typing import NamedTuple

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_X_y

from triplet_keras.core.distances import l2_normalize
from triplet_keras.core.distances import pairwise as distances
from .checks import check_queries
from .prototypes import class_means


class Source(NamedTuple):
    """Labelled source embeddings: rows, labels, class index into the sorted labels, class means, and
    for each target class the index of its source class (-1: new)."""
    emb: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    means: np.ndarray
    mapped: np.ndarray

    @classmethod
    def labelled(cls, emb, labels, target_classes, class_mapping=None):
        """Validated source rows and labels, their class means and the mapping of ``target_classes``
        (source_classes_of)."""
        emb, labels = check_X_y(emb, labels, dtype=np.float64)
        classes, index = np.unique(labels, return_inverse=True)
        return cls(emb, labels, index, class_means(emb, index, len(classes)),
                   source_classes_of(target_classes, classes, class_mapping))

    def mapped_through(self, transform):
        """The same source after the map ``transform`` of embeddings (the means mapped too)."""
        return self._replace(emb=transform(self.emb), means=transform(self.means))


def source_classes_of(target_classes, source_classes, class_mapping=None):
    """Index into ``source_classes`` of each target class, or -1 for a new class. Without
    ``class_mapping`` ({target label: source label}) a target label maps to the same source label."""
    position = {label: i for i, label in enumerate(source_classes.tolist())}
    if class_mapping is None:
        return np.array([position.get(label, -1) for label in target_classes.tolist()])
    targets = set(target_classes.tolist())
    for target, source in class_mapping.items():
        if target not in targets:
            raise ValueError(f"class_mapping names target class {target!r}, absent from the support")
        if source not in position:
            raise ValueError(f"class_mapping maps to source class {source!r}, absent from the source")
    return np.array([position[class_mapping[label]] if label in class_mapping else -1
                     for label in target_classes.tolist()])


class DomainCentering(TransformerMixin, BaseEstimator):
    """T(x) = (x - m) / |x - m|. fit(X): m the mean of X; fit(X, y): the mean of the class means of X,
    so every class weighs the same."""

    def fit(self, X, y=None):
        if y is None:
            X = check_array(X, dtype=np.float64)
            self.center_ = X.mean(axis=0)
        else:
            X, y = check_X_y(X, y, dtype=np.float64)
            classes, index = np.unique(y, return_inverse=True)
            self.center_ = class_means(X, index, len(classes)).mean(axis=0)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return l2_normalize(check_queries(self, X, "center_") - self.center_)


def shrink_toward(means, counts, prior, kappa):
    """(K_c means_c + kappa_c prior_c) / (K_c + kappa_c), kappa a number or one per row."""
    kappa = np.broadcast_to(kappa, counts.shape)[:, None]
    return (counts[:, None] * means + kappa * prior) / (counts[:, None] + kappa)


def centred_prototypes(support, index, counts, source, kappa, pool=None):
    """``center``: (target centring, source centring, prototypes, their weights). The target is centred
    on the pool mean, or without a pool on the mean of the support class means; the source on the mean
    of its class means. A mapped class shrinks toward its centred source class mean with weight kappa."""
    target = DomainCentering().fit(support, index) if pool is None else DomainCentering().fit(pool)
    source_side = DomainCentering().fit(source.emb, source.index)
    prototypes, has = class_means(target.transform(support), index, len(counts)), source.mapped >= 0
    if has.any():  # new classes alone take nothing from the source: skip centring every source row
        prior = class_means(source_side.transform(source.emb), source.index, len(source.means))[source.mapped[has]]
        prototypes[has] = shrink_toward(prototypes[has], counts[has], prior, kappa)
    return target, source_side, prototypes, counts + np.where(has, kappa, 0.0)


def borrow_weights(support_means, source_means, mapped, delta, n_borrow, metric, temperature):
    """(n_target, n_source) weights of each target class on source classes: one-hot when mapped,
    the borrowing softmax over the ``n_borrow`` nearest source classes when new."""
    weights = np.zeros((len(support_means), len(source_means)))
    new = mapped < 0
    weights[~new, mapped[~new]] = 1.0
    if new.any():
        scores = -distances(support_means[new] - delta, source_means, metric) / temperature
        keep = np.argsort(-scores, axis=1)[:, :n_borrow]
        masked = np.full_like(scores, -np.inf)
        np.put_along_axis(masked, keep, np.take_along_axis(scores, keep, axis=1), axis=1)
        weights[new] = softmax(masked, axis=1)
    return weights


def source_prior(support_means, source_means, mapped, n_borrow, metric, temperature):
    """prior_c = sum_j w_cj (mu_s(j) + delta): the aligned source mean of a mapped class, the
    borrowed one of a new class (``calibrate``)."""
    has = mapped >= 0
    delta = (support_means[has] - source_means[mapped[has]]).mean(axis=0) if has.any() else 0.0
    weights = borrow_weights(support_means, source_means, mapped, delta, n_borrow, metric, temperature)
    return weights @ (source_means + delta)


def translated_source_points(support, index, support_means, source, metric, temperature):
    """kNN reference points of ``translate``: the support, and each source cluster map(c) (a new class:
    its nearest source class) moved by mu_t(c) - mu_s(map(c)); returns (points, class index of each)."""
    nearest = borrow_weights(support_means, source.means, source.mapped, 0.0, 1, metric, temperature).argmax(axis=1)
    points, owners = [support], [index]
    for c, j in enumerate(nearest):
        members = source.emb[source.index == j]
        points.append(members + (support_means[c] - source.means[j]))
        owners.append(np.full(len(members), c))
    return np.concatenate(points), np.concatenate(owners)
