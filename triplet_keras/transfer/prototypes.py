"""Nearest-prototype classification: class means, the nearest-mean estimator, kNN votes and the
transductive refinement of prototypes over an unlabelled pool."""
import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_X_y

from triplet_keras.core.distances import pairwise as distances
from .checks import check_queries
from .serialization import Serializable

METRICS = ("cosine", "euclidean")


def class_means(x, label_index, n_classes):
    """Mean of the rows of x per class index 0..n_classes-1 (every class must occur)."""
    return np.stack([x[label_index == c].mean(axis=0) for c in range(n_classes)])


class NearestMeanClassifier(Serializable, ClassifierMixin, BaseEstimator):
    """Nearest class mean. decision_function = -d(x, mean_c); predict_proba = softmax(-d / temperature).

    For two classes decision_function follows scikit-learn and returns the score of classes_[1] minus
    that of classes_[0].
    """
    _state_arrays = ("classes_", "means_")

    def __init__(self, metric="cosine", temperature=0.1):
        self.metric = metric
        self.temperature = temperature

    def fit(self, X, y):
        X, y = check_X_y(X, y, dtype=np.float64)
        check_classification_targets(y)
        self._check_params()
        self.classes_, index = np.unique(y, return_inverse=True)
        self.means_ = class_means(X, index, len(self.classes_))
        self.n_features_in_ = X.shape[1]
        return self

    def _check_params(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def _queries(self, X):
        """Validated queries in the space of the prototypes (the identity here)."""
        return check_queries(self, X, ["classes_", "means_"])

    def prototype_distances(self, X):
        """(n, n_classes) distances d(x, mean_c) in the classifier's own space (after any query transform)."""
        return distances(self._queries(X), self.means_, self.metric)

    def class_scores(self, X):
        """(n, n_classes) scores, larger is better; predict_proba = softmax(scores / temperature)."""
        return -self.prototype_distances(X)

    def decision_function(self, X):
        scores = self.class_scores(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict_proba(self, X):
        return self._proba(self.class_scores(X))

    def _proba(self, scores):
        return softmax(scores / self.temperature, axis=1)

    def predict(self, X):
        best = np.argmax(self.class_scores(X), axis=1)
        return self.classes_[best]


def knn_scores(d, owners, n_classes, k, temperature):
    """(n, n_classes) kNN votes from distances d (n, n_points) to reference points owned by classes
    ``owners``: the k nearest points vote with weights softmax(-d / temperature), summed per class."""
    k = min(k, d.shape[1])
    nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
    votes = softmax(-np.take_along_axis(d, nearest, axis=1) / temperature, axis=1)
    scores = np.zeros((len(d), n_classes))
    np.add.at(scores, (np.arange(len(d))[:, None], owners[nearest]), votes)
    return scores


def refine_prototypes(pool, means, weights, steps, confidence, metric, temperature):
    """Soft k-means over ``pool`` with the prototypes ``means`` held as fixed points of mass ``weights``:
    p_c <- (n_c p0_c + sum_i r_ic u_i) / (n_c + sum_i r_ic), r_i = softmax(-d(u_i, p) / temperature),
    pool points whose largest r_ic is below ``confidence`` left out of each step."""
    anchored = weights[:, None] * means
    for _ in range(steps):
        r = softmax(-distances(pool, means, metric) / temperature, axis=1)
        r *= r.max(axis=1, keepdims=True) >= confidence
        means = (anchored + r.T @ pool) / (weights + r.sum(axis=0))[:, None]
    return means
