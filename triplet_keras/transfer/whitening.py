"""Within-class whitening: distances that weigh the directions separating classes.

For labelled embeddings x_i with classes y_i and class means mu(c): the center m is the mean of the
class means and S_w = mean_i (x_i - mu(y_i)) (x_i - mu(y_i))^T the pooled within-class covariance.
With a shrinkage lambda in [0, 1], S = (1 - lambda) S_w + lambda t I, t = tr(S_w) / d, and the map
is x -> (x - m) W with W = S^(-1/2): the Mahalanobis distance of a shared covariance. Eigenvalues
of S are floored at 1e-6 times the largest, so a constant direction does not blow up.

Wide features (``rank=r``): S is replaced by its r leading eigenpairs (s_k, v_k) and the mean of the
other d - r eigenvalues on their complement, sigma^2 = (tr S - sum_k s_k) / (d - r), so that
W = I / sigma + sum_k (s_k^(-1/2) - 1 / sigma) v_k v_k^T. The s_k, v_k are those of S_w (shrinkage
moves eigenvalues, not eigenvectors), found by a randomized SVD of the class residuals without
forming S_w: O(N d r) time and O(d r) stored numbers instead of O(d^3) and d^2.
"""
import numbers
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.extmath import randomized_svd
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_X_y

from .checks import check_queries

EIGEN_FLOOR = 1e-6


class Whitening(NamedTuple):
    """The map x -> (x - center) @ matrix."""
    center: np.ndarray
    matrix: np.ndarray

    def apply(self, x):
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.center):
            raise ValueError(f"the whitening was learnt on {len(self.center)}-d embeddings, got shape {x.shape}")
        return (x - self.center) @ self.matrix


class WithinClassWhitening(TransformerMixin, BaseEstimator):
    """fit(X, y) learns x -> (x - m) W (the module docstring); transform applies it (float64 out).

    Fitted: center_ (m, float64); with ``rank=None`` matrix_ (W, d x d, float32); with a rank r,
    components_ (r x d, float32, the v_k as rows), component_scales_ (s_k^(-1/2) - 1 / sigma, r) and
    isotropic_scale_ (1 / sigma). The dense path accumulates in float64 whatever the input dtype; the
    low-rank path works on the residuals in the input dtype (float32 input: a float32 SVD).
    """

    def __init__(self, shrinkage=0.3, rank=None):
        self.shrinkage = shrinkage
        self.rank = rank

    def fit(self, X, y):
        X, y = check_X_y(X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"whitening shrinkage must be in [0, 1], got {self.shrinkage!r}")
        if self.rank is not None and not (isinstance(self.rank, numbers.Integral) and 1 <= self.rank < X.shape[1]):
            raise ValueError(f"rank must be None or an integer in [1, n_features), got rank={self.rank!r} "
                             f"with n_features = {X.shape[1]}")
        classes, index = np.unique(y, return_inverse=True)
        means = np.stack([X[index == c].mean(axis=0, dtype=np.float64) for c in range(len(classes))])
        self.center_ = means.mean(axis=0)
        self.n_features_in_ = X.shape[1]
        if self.rank is None:
            self.matrix_ = self._dense_matrix(X, index, means).astype(np.float32)
        else:
            self._fit_low_rank(X, index, means)
        return self

    def _dense_matrix(self, X, index, means):
        """S^(-1/2) from the eigenpairs of the within-class scatter (within_class_eigen)."""
        return shrunk_inverse_root(*within_class_eigen(X, index, means), self.shrinkage)

    def _fit_low_rank(self, X, index, means):
        """The r leading eigenpairs of S_w from the residuals, the rest of the spectrum isotropic."""
        residuals = X - means[index].astype(X.dtype)
        _, singular, components = randomized_svd(residuals, self.rank, random_state=0)
        dim, total = X.shape[1], float(np.einsum("ij,ij->", residuals, residuals, dtype=np.float64)) / len(X)
        leading = singular.astype(np.float64) ** 2 / len(X)
        rest = max(total - leading.sum(), 0.0) / (dim - len(leading))  # fewer than rank when N < rank
        mix = self.shrinkage * total / dim
        leading, rest = (1.0 - self.shrinkage) * leading + mix, (1.0 - self.shrinkage) * rest + mix
        floor = max(leading.max(), rest, 1e-12) * EIGEN_FLOOR
        self.isotropic_scale_ = 1.0 / np.sqrt(max(rest, floor))
        self.component_scales_ = 1.0 / np.sqrt(np.maximum(leading, floor)) - self.isotropic_scale_
        self.components_ = components.astype(np.float32)

    def transform(self, X):
        X = check_queries(self, X, "center_")
        if self.rank is None:
            return Whitening(self.center_, self.matrix_).apply(X)
        X = X - self.center_
        return self.isotropic_scale_ * X + ((X @ self.components_.T) * self.component_scales_) @ self.components_

    def whitening(self):
        """The fitted map as a Whitening (center, matrix); needs ``rank=None``."""
        check_is_fitted(self, "center_")
        if self.rank is not None:
            raise ValueError("a low-rank whitening has no d x d matrix; use transform")
        return Whitening(self.center_, self.matrix_)


def within_class_eigen(X, index, means):
    """(eigenvalues, eigenvectors) of S_w, the within-class scatter of X (rows of class index[i], class
    means ``means``), accumulated one class at a time in float64 (no N x d copy)."""
    dim = X.shape[1]
    scatter = np.zeros((dim, dim))
    for c, mean in enumerate(means):
        residuals = X[index == c].astype(np.float64) - mean
        scatter += residuals.T @ residuals
    return np.linalg.eigh(scatter / len(X))


def shrunk_inverse_root(values, vectors, shrinkage):
    """S^(-1/2) for S = (1 - shrinkage) S_w + shrinkage tr(S_w) / d I, from S_w's eigenpairs (shrinkage
    moves eigenvalues, not eigenvectors), eigenvalues floored at EIGEN_FLOOR times the largest."""
    values = (1.0 - shrinkage) * values + shrinkage * values.sum() / len(values)
    floor = max(values.max(), 1e-12) * EIGEN_FLOOR
    return (vectors / np.sqrt(np.maximum(values, floor))) @ vectors.T


def source_whitenings(source_emb, source_labels, shrinkages):
    """{shrinkage: source_whitening(source_emb, source_labels, shrinkage)} from one eigendecomposition."""
    X, labels = np.asarray(source_emb), np.asarray(source_labels)
    classes, index = np.unique(labels, return_inverse=True)
    means = np.stack([X[index == c].mean(axis=0, dtype=np.float64) for c in range(len(classes))])
    eigen = within_class_eigen(X, index, means)
    for shrinkage in shrinkages:
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"whitening shrinkage must be in [0, 1], got {shrinkage!r}")
    return {shrinkage: Whitening(means.mean(axis=0), shrunk_inverse_root(*eigen, shrinkage).astype(np.float32))
            for shrinkage in shrinkages}


def source_whitening(source_emb, source_labels, shrinkage):
    """The Whitening x -> (x - center) @ matrix learnt on labelled source embeddings (center = m, the
    mean of the source class means; matrix = S^(-1/2) in float32: see the module docstring)."""
    return WithinClassWhitening(shrinkage).fit(source_emb, source_labels).whitening()
