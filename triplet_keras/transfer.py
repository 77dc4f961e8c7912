"""Few-shot transfer: class prototypes for target data from a few labelled examples and the source.

Notation: source embeddings x with labels y and class means mu_s(j); a labelled target support with
K_c examples of class c and class means mu_t(c); an optional unlabelled target pool u. Each target
class c is *mapped* to a source class j = map(c) (same classes in a new domain, or a given
``class_mapping``) or is *new*. Every mode ends in a nearest-prototype classifier, possibly after a
query transform T (whiten, subtract an offset, L2-normalise).

Whitening (``whiten``, a shrinkage lambda in [0, 1], "auto" to choose it with the mode on source
episodes, None to switch it off): every mode but ``none``
first maps source, support, pool and queries by x -> (x - m_s) W, W = S^(-1/2), S = (1 - lambda) S_w +
lambda tr(S_w) / d I, S_w the source's pooled within-class covariance and m_s the mean of its class
means (source_whitening; or learnt on other labelled source data such as its pseudo-classes, the
``whitening`` argument of fit). Nearest means then use the Mahalanobis distance of the source's shared
within-class scatter: directions along which the source classes vary inside a class count less.
The modes below work in that space:

* ``none``: p_c = mu_t(c), the support alone and raw features (never whitened); the baseline.
* ``translate``: the source cluster map(c) moved by mu_t(c) - mu_s(map(c)) (a new class borrows its
  nearest source class). The translated mean is mu_t(c) itself, so with nearest means this is the
  whitened ``none``; ``knn`` instead votes among the k nearest translated source points and the support.
* ``center``: each domain centred on its own mean m and L2-normalised, T(x) = (x - m) / |x - m|
  (m_s: the mean of the source class means; m_t: the pool mean, or the mean of the support class
  means). p_c = (K_c a_t(c) + kappa a_s(map(c))) / (K_c + kappa) with a_t, a_s the class means in
  the centred spaces; a new class uses a_t(c) alone.
* ``calibrate``: p_c = (K_c mu_t(c) + kappa prior_c) / (K_c + kappa) with prior_c = mu_s(map(c)) +
  delta and delta the mean of mu_t(c) - mu_s(map(c)) over the mapped classes (0 when none is mapped).
  A new class borrows prior_c = sum_j w_j (mu_s(j) + delta), w a softmax of -d(mu_t(c) - delta,
  mu_s(j)) / temperature over its ``n_borrow`` nearest source classes, weighted by ``kappa_new``.
* ``auto``: the mode (and, with ``whiten="auto"``, the shrinkage) that scores best on few-shot
  episodes simulated on the source embeddings given to fit, half of each class held out
  (triplet_keras.selection; new classes when no target class maps to a source class, else a new
  domain). The choice is kept in ``mode_``, ``whiten_`` and ``selection_`` (every candidate's score).

Transductive refinement (``transductive=True`` with a pool): soft k-means with the support fixed,
p_c <- (n_c p0_c + sum_i r_ic T(u_i)) / (n_c + sum_i r_ic), r_i = softmax(-d(T(u_i), p) / temperature),
p0 and n_c = K_c (+ kappa where a prior was used) the inductive prototypes and their weights, so the
prototypes stay anchored to the support and prior. Pool points whose largest r_ic is below
``confidence`` are left out of each step: on an unbalanced pool the plain soft k-means lets the
dominant class drag its neighbours' prototypes (tests/test_transfer.py measures both pools).
"""
from typing import NamedTuple

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y

from .distances import l2_normalize
from .distances import pairwise as distances  # the name callers import from here

METRICS = ("cosine", "euclidean")
MODES = ("none", "translate", "center", "calibrate")
STATE_VERSION = 3
WHITEN_DEFAULT = "auto"


def class_means(x, label_index, n_classes):
    """Mean of the rows of x per class index 0..n_classes-1 (every class must occur)."""
    return np.stack([x[label_index == c].mean(axis=0) for c in range(n_classes)])


class Whitening(NamedTuple):
    """The map x -> (x - center) @ matrix."""
    center: np.ndarray
    matrix: np.ndarray

    def apply(self, x):
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.center):
            raise ValueError(f"the whitening was learnt on {len(self.center)}-d embeddings, got shape {x.shape}")
        return (x - self.center) @ self.matrix


def source_whitening(source_emb, source_labels, shrinkage):
    """Whitening x -> (x - center) @ matrix learnt on labelled source embeddings.

    center = m_s, the mean of the source class means; matrix = S^(-1/2) with S = (1 - shrinkage) S_w
    + shrinkage tr(S_w) / d I and S_w the pooled within-class covariance mean_i (x_i - mu_s(y_i))
    (x_i - mu_s(y_i))^T. Directions along which source classes scatter are shrunk, so distances
    weigh the directions that separate classes (the Mahalanobis distance of a shared covariance).
    """
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"whitening shrinkage must be in [0, 1], got {shrinkage!r}")
    source_emb, source_labels = check_X_y(source_emb, source_labels, dtype=[np.float64, np.float32])
    source_classes, index = np.unique(source_labels, return_inverse=True)
    dim = source_emb.shape[1]
    means, scatter = np.zeros((len(source_classes), dim)), np.zeros((dim, dim))
    for c in range(len(source_classes)):  # one class in float64 at a time, not an N x d residual copy
        members = source_emb[index == c].astype(np.float64)
        means[c] = members.mean(axis=0)
        residuals = members - means[c]
        scatter += residuals.T @ residuals
    scatter /= len(source_emb)
    scatter = (1.0 - shrinkage) * scatter + shrinkage * np.trace(scatter) / dim * np.eye(dim)
    values, vectors = np.linalg.eigh(scatter)
    floor = max(values.max(), 1e-12) * 1e-6
    matrix = (vectors / np.sqrt(np.maximum(values, floor))) @ vectors.T
    return Whitening(means.mean(axis=0), matrix)


class NearestMeanClassifier(ClassifierMixin, BaseEstimator):
    """Nearest class mean. decision_function = -d(x, mean_c); predict_proba = softmax(-d / temperature).

    For two classes decision_function follows scikit-learn and returns the score of classes_[1] minus
    that of classes_[0].
    """

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
        check_is_fitted(self, ["classes_", "means_"])
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} "
                             f"is expecting {self.n_features_in_} features as input")
        return X

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

    def get_state(self):
        """(config, arrays): a JSON-able dict and a dict of numpy arrays that rebuild the fitted model."""
        check_is_fitted(self, ["classes_", "means_"])
        config = {"type": type(self).__name__, "version": STATE_VERSION, "params": self.get_params()}
        arrays = {name: np.asarray(getattr(self, name)) for name in self._state_arrays()}
        return config, arrays

    def _state_arrays(self):
        return ["classes_", "means_"]

    @classmethod
    def from_state(cls, config, arrays):
        """Inverse of get_state (no pickle anywhere: labels are numbers or strings)."""
        if config.get("type") != cls.__name__:
            raise ValueError(f"state is for {config.get('type')!r}, not {cls.__name__}")
        model = cls(**config["params"])
        model._check_params()
        for name in model._state_arrays():
            if name not in arrays:
                raise ValueError(f"state of {cls.__name__} lacks the array {name!r}")
            setattr(model, name, np.asarray(arrays[name]))
        if model.classes_.dtype == object:
            raise ValueError("class labels must be numbers or strings")
        model.n_features_in_ = model.means_.shape[1]
        return model


class TransferClassifier(TransformerMixin, NearestMeanClassifier):
    """Nearest prototype over target classes, with prototypes built from the support and the source.

    The modes and their math are in the module docstring. ``fit(support, labels, source_emb=...,
    source_labels=..., unlabeled=..., class_mapping=...)``; without a source every mode is ``none``.
    Fitted: classes_, means_ (the prototypes), mode_ and whiten_ (``auto`` resolved), selection_ (the
    source-episode score of each candidate when something was "auto"), source_center_ and whitening_ (the whitening;
    whitening_ is empty without it), offset_ and normalize_ (the rest of the query transform),
    source_offset_ (its source-side counterpart), and for kNN reference_points_ with reference_index_
    (indices into classes_). Like scikit-learn's LinearDiscriminantAnalysis it is also a transformer:
    ``transform`` is the query map T.
    """

    def __init__(self, mode="auto", whiten=WHITEN_DEFAULT, kappa=2.0, kappa_new=1.0, n_borrow=3, knn=None,
                 transductive=False, refine_steps=10, confidence=0.9, metric="cosine", temperature=0.1,
                 selection_episodes=100):
        self.mode = mode
        self.whiten = whiten
        self.kappa = kappa
        self.kappa_new = kappa_new
        self.n_borrow = n_borrow
        self.knn = knn
        self.transductive = transductive
        self.refine_steps = refine_steps
        self.confidence = confidence
        self.metric = metric
        self.temperature = temperature
        self.selection_episodes = selection_episodes

    def _check_params(self):
        super()._check_params()
        if self.mode not in MODES + ("auto",):
            raise ValueError(f"mode must be 'auto' or one of {MODES}, got {self.mode!r}")
        if self.knn is not None and (self.mode != "translate" or self.transductive):
            raise ValueError("knn is only used by mode='translate' without transductive refinement")
        if self.knn is not None and not int(self.knn) >= 1:
            raise ValueError(f"knn must be a positive integer, got {self.knn!r}")
        if self.kappa < 0 or self.kappa_new < 0:
            raise ValueError("kappa and kappa_new must be >= 0")
        if self.whiten not in (None, "auto") and not (isinstance(self.whiten, (int, float))
                                                      and 0.0 <= self.whiten <= 1.0):
            raise ValueError(f"whiten must be None, 'auto' or a shrinkage in [0, 1], got {self.whiten!r}")

    def fit(self, X, y, source_emb=None, source_labels=None, unlabeled=None, class_mapping=None, whitening=None):
        """``whitening``: a Whitening learnt on other labelled embeddings of the source domain (such as
        its pseudo-classes, which the encoder trained on); by default source_whitening(source_emb,
        source_labels, whiten). Either way only when the whitening shrinkage is not None; it needs a
        numeric ``whiten``, since "auto" compares shrinkages on the source itself."""
        X, y = check_X_y(X, y, dtype=np.float64)
        check_classification_targets(y)
        self._check_params()
        self.classes_, index = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        counts = np.bincount(index).astype(np.float64)
        support_means = class_means(X, index, len(self.classes_))
        if unlabeled is not None:
            unlabeled = check_array(unlabeled, dtype=np.float64)
        if source_emb is None:
            source = None
            mapped = np.full(len(self.classes_), -1)
        else:
            source_emb, source_labels = check_X_y(source_emb, source_labels, dtype=np.float64)
            source_classes, source_index = np.unique(source_labels, return_inverse=True)
            source = (source_emb, source_index, class_means(source_emb, source_index, len(source_classes)))
            mapped = self._mapped_source_classes(source_classes, class_mapping)
        self.mode_, self.whiten_, self.selection_ = self.mode, self.whiten, {}
        if source is None:
            self.mode_, self.whiten_ = "none", None
        elif "auto" in (self.mode, self.whiten):
            if whitening is not None and self.whiten == "auto":
                raise ValueError("a given whitening needs a numeric whiten; 'auto' chooses it on the source")
            self._select(source_emb, source_labels, mapped, counts)
        self.source_center_, self.whitening_ = np.zeros(X.shape[1]), np.zeros((0, 0))
        if self.mode_ != "none" and self.whiten_ is not None:
            if whitening is None:
                whitening = source_whitening(source_emb, source_labels, self.whiten_)
            self.source_center_, self.whitening_ = whitening.center, whitening.matrix
            X, unlabeled = self._whiten(X), None if unlabeled is None else self._whiten(unlabeled)
            support_means = class_means(X, index, len(self.classes_))
            source = (self._whiten(source[0]), source[1], self._whiten(source[2]))
        self.offset_, self.source_offset_ = np.zeros(X.shape[1]), np.zeros(X.shape[1])
        self.normalize_ = False
        self.reference_points_ = np.zeros((0, X.shape[1]))
        self.reference_index_ = np.zeros(0, dtype=np.int64)
        weights = counts
        if self.mode_ in ("none", "translate"):
            self.means_ = support_means
            if self.mode_ == "translate" and self.knn is not None:
                self._translate_points(X, index, support_means, source, mapped)
        elif self.mode_ == "center":
            self.means_, weights = self._center(X, index, counts, source, mapped, unlabeled)
        else:
            self.means_, weights = self._calibrate(support_means, counts, source, mapped)
        if self.transductive and unlabeled is not None:
            self._refine(unlabeled, weights)
        return self

    def _select(self, source_emb, source_labels, mapped, counts):
        """Sets mode_, whiten_ and selection_ from episodes on the source (triplet_keras.selection)."""
        from .selection import choose_transfer, halve_per_class

        held_out = halve_per_class(source_labels)
        choice = choose_transfer({"features": (source_emb[~held_out], source_emb[held_out])}, source_labels[~held_out],
                                 source_labels[held_out], not (mapped >= 0).any(), len(self.classes_),
                                 max(1, int(counts.min())), self.mode, self.whiten, self.selection_episodes)
        self.mode_, self.whiten_, self.selection_ = choice.mode, choice.whiten, choice.scores

    def _mapped_source_classes(self, source_classes, class_mapping):
        """Index of the source class each target class maps to, or -1 for a new class."""
        position = {label: i for i, label in enumerate(source_classes.tolist())}
        if class_mapping is None:
            return np.array([position.get(label, -1) for label in self.classes_.tolist()])
        targets = set(self.classes_.tolist())
        for target, source in class_mapping.items():
            if target not in targets:
                raise ValueError(f"class_mapping names target class {target!r}, absent from the support")
            if source not in position:
                raise ValueError(f"class_mapping maps to source class {source!r}, absent from the source")
        return np.array([position[class_mapping[label]] if label in class_mapping else -1
                         for label in self.classes_.tolist()])

    def _borrow_weights(self, support_means, source_means, mapped, delta, n_borrow):
        """(n_target, n_source) weights of each target class on source classes (one-hot when mapped)."""
        weights = np.zeros((len(support_means), len(source_means)))
        new = mapped < 0
        weights[~new, mapped[~new]] = 1.0
        if new.any():
            scores = -distances(support_means[new] - delta, source_means, self.metric) / self.temperature
            keep = np.argsort(-scores, axis=1)[:, :n_borrow]
            masked = np.full_like(scores, -np.inf)
            np.put_along_axis(masked, keep, np.take_along_axis(scores, keep, axis=1), axis=1)
            weights[new] = softmax(masked, axis=1)
        return weights

    def _translate_points(self, X, index, support_means, source, mapped):
        """Reference points for kNN: each source cluster moved onto its target class, plus the support."""
        source_emb, source_index, source_means = source
        nearest = self._borrow_weights(support_means, source_means, mapped, 0.0, 1).argmax(axis=1)
        points, owners = [X], [index]
        for c, j in enumerate(nearest):
            members = source_emb[source_index == j]
            points.append(members + (support_means[c] - source_means[j]))
            owners.append(np.full(len(members), c))
        self.reference_points_ = np.concatenate(points)
        self.reference_index_ = np.concatenate(owners)

    def _center(self, X, index, counts, source, mapped, unlabeled):
        """Prototypes in the per-domain centred, L2-normalised space; sets the query transform."""
        n_classes = len(self.classes_)
        target_center = unlabeled.mean(axis=0) if unlabeled is not None else class_means(X, index, n_classes).mean(axis=0)
        self.offset_, self.normalize_ = target_center, True
        prototypes = class_means(l2_normalize(X - target_center), index, n_classes)
        weights = counts.copy()
        source_emb, source_index, source_means = source
        self.source_offset_ = source_means.mean(axis=0)
        centred_source = class_means(l2_normalize(source_emb - self.source_offset_), source_index, len(source_means))
        has = mapped >= 0
        prior = centred_source[mapped[has]]
        prototypes[has] = (counts[has, None] * prototypes[has] + self.kappa * prior) / (counts[has, None] + self.kappa)
        weights[has] += self.kappa
        return prototypes, weights

    def _calibrate(self, support_means, counts, source, mapped):
        """Support means shrunk toward aligned (mapped) or borrowed (new) source means."""
        source_means = source[2]
        has = mapped >= 0
        delta = (support_means[has] - source_means[mapped[has]]).mean(axis=0) if has.any() else 0.0
        priors = self._borrow_weights(support_means, source_means, mapped, delta, self.n_borrow) @ (source_means + delta)
        kappa = np.where(has, self.kappa, self.kappa_new)[:, None]
        prototypes = (counts[:, None] * support_means + kappa * priors) / (counts[:, None] + kappa)
        return prototypes, counts + kappa[:, 0]

    def _refine(self, unlabeled, weights):
        """Soft k-means over the (whitened) pool with the support (and prior) held as weighted fixed points."""
        pool = self._place(unlabeled, self.offset_)
        anchored = weights[:, None] * self.means_
        for _ in range(self.refine_steps):
            r = softmax(-distances(pool, self.means_, self.metric) / self.temperature, axis=1)
            r *= r.max(axis=1, keepdims=True) >= self.confidence
            self.means_ = (anchored + r.T @ pool) / (weights + r.sum(axis=0))[:, None]

    def _whiten(self, X):
        """The fitted Whitening applied to X, or X when not whitened."""
        return Whitening(self.source_center_, self.whitening_).apply(X) if self.whitening_.size else X

    def _place(self, X, offset):
        """Whitened X - offset, L2-normalised when normalize_ (mode ``center``)."""
        X = X - offset
        return l2_normalize(X) if self.normalize_ else X

    def transform(self, X):
        """The query transform T into the space of the prototypes: whiten, - offset_, L2-normalise
        when normalize_."""
        return self._place(self._whiten(super()._queries(X)), self.offset_)

    def transform_source(self, X):
        """The same map for source embeddings, with source_offset_ (``center`` centres each domain on
        its own mean): source and transformed target share one space."""
        return self._place(self._whiten(super()._queries(X)), self.source_offset_)

    def _queries(self, X):
        return self.transform(X)

    def class_scores(self, X):
        """Nearest-prototype scores -d, or with knn the softmax(-d / temperature) weight of each
        class among the k nearest reference points (then predict_proba is these weights)."""
        queries = self._queries(X)
        if not len(self.reference_index_):
            return -distances(queries, self.means_, self.metric)
        d = distances(queries, self.reference_points_, self.metric)
        k = min(int(self.knn), d.shape[1])
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        votes = softmax(-np.take_along_axis(d, nearest, axis=1) / self.temperature, axis=1)
        scores = np.zeros((len(queries), len(self.classes_)))
        np.add.at(scores, (np.arange(len(queries))[:, None], self.reference_index_[nearest]), votes)
        return scores

    def _proba(self, scores):
        return scores if len(self.reference_index_) else super()._proba(scores)

    def _state_arrays(self):
        return ["classes_", "means_", "offset_", "reference_points_", "reference_index_", "source_center_",
                "whitening_", "source_offset_"]

    def get_state(self):
        config, arrays = super().get_state()
        config.update(mode_=self.mode_, normalize_=bool(self.normalize_), whiten_=self.whiten_, selection_=self.selection_)
        return config, arrays

    @classmethod
    def from_state(cls, config, arrays):
        if config.get("version") == 1:
            dim = np.shape(arrays.get("means_"))[-1]
            config = {**config, "params": {**config["params"], "whiten": None}}
            arrays = {"source_center_": np.zeros(dim), "whitening_": np.zeros((0, 0)), "source_offset_": np.zeros(dim),
                      **arrays}
        model = super().from_state(config, arrays)
        model.mode_ = str(config["mode_"])
        model.normalize_ = bool(config["normalize_"])
        model.whiten_ = config.get("whiten_", model.whiten)  # version 2 and older: the whiten param
        model.selection_ = dict(config.get("selection_", {}))
        return model


CLASSIFIERS = {cls.__name__: cls for cls in (NearestMeanClassifier, TransferClassifier)}


def classifier_from_state(config, arrays):
    """Rebuild a NearestMeanClassifier or TransferClassifier from get_state() output."""
    kind = config.get("type")
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier type {kind!r}; expected one of {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[kind].from_state(config, arrays)


def fit_transfer(source_emb, source_labels, support_emb, support_labels, mode="auto", class_mapping=None,
                 unlabeled=None, knn=None, kappa=2.0, transductive=False, whitening=None, **params):
    """Fit a TransferClassifier for the target classes of the support (see the module docstring).

    ``class_mapping`` maps target labels to source labels; without it, support labels that are also
    source labels are mapped to themselves and the rest are new classes. Other keyword arguments
    (whiten, kappa_new, n_borrow, refine_steps, confidence, metric, temperature) go to
    TransferClassifier; ``whitening`` is a Whitening learnt elsewhere (see TransferClassifier.fit).
    """
    model = TransferClassifier(mode=mode, knn=knn, kappa=kappa, transductive=transductive, **params)
    return model.fit(support_emb, support_labels, source_emb=source_emb, source_labels=source_labels,
                     unlabeled=unlabeled, class_mapping=class_mapping, whitening=whitening)
