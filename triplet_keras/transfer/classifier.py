"""TransferClassifier: nearest prototype over target classes, prototypes from the support and the
source (the modes and their math: the package docstring); ScoreMixture: the weighted sum of several
TransferClassifiers' scores, each on its own features. Choosing them is triplet_keras.transfer.choice's job."""
import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y

from triplet_keras.core.distances import l2_normalize
from triplet_keras.core.distances import pairwise as distances
from triplet_keras.core.vocabulary import TRANSFER_MODES
from .checks import check_queries
from .domain import Source, centred_prototypes, shrink_toward, source_prior, translated_source_points
from .prototypes import NearestMeanClassifier, class_means, knn_scores, refine_prototypes
from .serialization import STATE_VERSION
from .whitening import Whitening, source_whitening

MODES = TRANSFER_MODES


class TransferClassifier(TransformerMixin, NearestMeanClassifier):
    """Nearest prototype over target classes, with prototypes built from the support and the source.

    ``fit(support, labels, source_emb=..., source_labels=..., unlabeled=..., class_mapping=...)``;
    without a source every mode is ``none``. ``whiten``: None or a shrinkage in [0, 1] (not used by
    ``none``). Fitted: classes_, means_ (the prototypes), mode_ and whiten_ (what was fitted),
    source_center_ and whitening_ (the whitening; whitening_ is empty without it), offset_ and
    normalize_ (the rest of the query transform), source_offset_ (its source-side counterpart), and
    for kNN reference_points_ with reference_index_ (indices into classes_). Like scikit-learn's
    LinearDiscriminantAnalysis it is also a transformer: ``transform`` is the query map T.
    """
    _state_arrays = ("classes_", "means_", "offset_", "reference_points_", "reference_index_", "source_center_",
                     "whitening_", "source_offset_")
    _state_fields = ("mode_", "normalize_", "whiten_")

    def __init__(self, mode="center", whiten=None, kappa=2.0, kappa_new=1.0, n_borrow=3, knn=None,
                 transductive=False, refine_steps=10, confidence=0.9, metric="cosine", temperature=0.1):
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

    def _check_params(self):
        super()._check_params()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (triplet_keras.fit_transfer or TransferSearch "
                             f"choose one), got {self.mode!r}")
        if self.knn is not None and (self.mode != "translate" or self.transductive):
            raise ValueError("knn is only used by mode='translate' without transductive refinement")
        if self.knn is not None and not int(self.knn) >= 1:
            raise ValueError(f"knn must be a positive integer, got {self.knn!r}")
        if self.kappa < 0 or self.kappa_new < 0:
            raise ValueError("kappa and kappa_new must be >= 0")
        if self.whiten is not None and not (isinstance(self.whiten, (int, float)) and not isinstance(self.whiten, bool)
                                            and 0.0 <= self.whiten <= 1.0):
            raise ValueError(f"whiten must be None or a shrinkage in [0, 1], got {self.whiten!r}")

    def fit(self, X, y, source_emb=None, source_labels=None, unlabeled=None, class_mapping=None, whitening=None):
        """``whitening``: a Whitening learnt on other labelled embeddings of the source domain (such as
        its pseudo-classes, which the encoder trained on); by default source_whitening(source_emb,
        source_labels, whiten). Either way only when ``whiten`` is not None."""
        X, y = check_X_y(X, y, dtype=np.float64)
        check_classification_targets(y)
        self._check_params()
        self.classes_, index = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        counts = np.bincount(index).astype(np.float64)
        unlabeled = None if unlabeled is None else check_array(unlabeled, dtype=np.float64)
        source = None
        if source_emb is not None:
            source = Source.labelled(source_emb, source_labels, self.classes_, class_mapping)
        self._set_whitening(source, whitening)
        if self.whitening_.size:
            X, unlabeled = self._whiten(X), None if unlabeled is None else self._whiten(unlabeled)
            source = source.mapped_through(self._whiten)
        self.offset_, self.source_offset_, self.normalize_ = np.zeros(X.shape[1]), np.zeros(X.shape[1]), False
        self.reference_points_, self.reference_index_ = np.zeros((0, X.shape[1])), np.zeros(0, dtype=np.int64)
        self.means_, weights = self._prototypes(X, index, counts, source, unlabeled)
        if self.transductive and unlabeled is not None:
            self.means_ = refine_prototypes(self._place(unlabeled, self.offset_), self.means_, weights,
                                            self.refine_steps, self.confidence, self.metric, self.temperature)
        return self

    def _set_whitening(self, source, whitening):
        """Sets mode_ and whiten_ (``none`` without a source; ``none`` is never whitened), then
        source_center_ and whitening_."""
        self.mode_ = "none" if source is None else self.mode
        self.whiten_ = None if self.mode_ == "none" else self.whiten
        self.source_center_, self.whitening_ = np.zeros(self.n_features_in_), np.zeros((0, 0))
        if self.whiten_ is not None:
            if whitening is None:
                whitening = source_whitening(source.emb, source.labels, self.whiten_)
            self.source_center_, self.whitening_ = whitening.center, whitening.matrix

    def _prototypes(self, X, index, counts, source, unlabeled):
        """(prototypes, their weights in the transductive refinement) of mode_; sets the query map."""
        support_means = class_means(X, index, len(self.classes_))
        if self.mode_ == "translate" and self.knn is not None:
            self.reference_points_, self.reference_index_ = translated_source_points(
                X, index, support_means, source, self.metric, self.temperature)
        if self.mode_ == "calibrate":
            kappa = np.where(source.mapped >= 0, self.kappa, self.kappa_new)
            prior = source_prior(support_means, source.means, source.mapped, self.n_borrow, self.metric,
                                 self.temperature)
            return shrink_toward(support_means, counts, prior, kappa), counts + kappa
        if self.mode_ != "center":
            return support_means, counts
        target, source_side, prototypes, weights = centred_prototypes(X, index, counts, source, self.kappa, unlabeled)
        self.offset_, self.source_offset_, self.normalize_ = target.center_, source_side.center_, True
        return prototypes, weights

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
        return knn_scores(d, self.reference_index_, len(self.classes_), int(self.knn), self.temperature)

    def _proba(self, scores):
        return scores if len(self.reference_index_) else super()._proba(scores)


class ScoreMixture(ClassifierMixin, BaseEstimator):
    """Nearest prototype over blocks of columns: member i, a TransferClassifier, sees the ``widths[i]``
    columns after those of the members before it, and the scores are summed with ``weights``:
    class_scores(x) = sum_i w_i s_i(x_i), s_i = -d(T_i(x_i), p_i) member i's scores (scikit-learn's
    VotingClassifier with soft voting, on scores rather than probabilities and on its own columns per
    member). prototype_distances = -class_scores; predict_proba = softmax(class_scores / temperature).

    ``fit(X, y, source_emb=..., source_labels=..., unlabeled=..., class_mapping=..., whitening=...)``
    splits X, source_emb and unlabeled by columns and fits a clone of each member on its block;
    ``whitening``: None or one (Whitening or None) per member. Fitted: members_, classes_.
    """

    def __init__(self, members=(), weights=(), widths=(), temperature=0.1):
        self.members = members
        self.weights = weights
        self.widths = widths
        self.temperature = temperature

    def _check_params(self):
        if not (len(self.members) == len(self.weights) == len(self.widths) >= 1):
            raise ValueError(f"members, weights and widths must be as many (at least one), got "
                             f"{len(self.members)}, {len(self.weights)} and {len(self.widths)}")
        if any(not w >= 0 for w in self.weights) or not sum(self.weights) > 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(self.weights)}")
        if any(int(width) < 1 for width in self.widths):
            raise ValueError(f"widths must be positive, got {list(self.widths)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def _blocks(self, X):
        """X split into the members' column blocks."""
        return np.split(np.asarray(X), np.cumsum(self.widths)[:-1], axis=1)

    def fit(self, X, y, source_emb=None, source_labels=None, unlabeled=None, class_mapping=None, whitening=None):
        X, y = check_X_y(X, y, dtype=np.float64)
        self._check_params()
        if X.shape[1] != sum(self.widths):
            raise ValueError(f"X has {X.shape[1]} columns, the members' widths add up to {sum(self.widths)}")
        parts = [self._blocks(data) if data is not None else [None] * len(self.widths)
                 for data in (X, source_emb, unlabeled)]
        whitening = [None] * len(self.members) if whitening is None else whitening
        self.members_ = [clone(member).fit(x, y, source_emb=source, source_labels=source_labels, unlabeled=pool,
                                           class_mapping=class_mapping, whitening=whiten)
                         for member, x, source, pool, whiten in zip(self.members, *parts, whitening)]
        self.classes_, self.n_features_in_ = self.members_[0].classes_, X.shape[1]
        return self

    def class_scores(self, X):
        X = check_queries(self, X, ["members_"])
        return sum(w * member.class_scores(x) for w, member, x in zip(self.weights, self.members_, self._blocks(X)))

    def prototype_distances(self, X):
        return -self.class_scores(X)

    def predict_proba(self, X):
        return softmax(self.class_scores(X) / self.temperature, axis=1)

    def predict(self, X):
        best = np.argmax(self.class_scores(X), axis=1)
        return self.classes_[best]

    def _side_by_side(self, X, method):
        """The members' maps ``method`` of their blocks, side by side, each scaled by sqrt(weight / sum)."""
        X = check_queries(self, X, ["members_"])
        scale = np.sqrt(np.asarray(self.weights, np.float64) / sum(self.weights))
        parts = zip(scale, self.members_, self._blocks(X))
        return np.hstack([s * getattr(member, method)(x) for s, member, x in parts])

    def transform(self, X):
        """The members' query maps side by side (for drawing the target in the classifier's space)."""
        return self._side_by_side(X, "transform")

    def transform_source(self, X):
        """The members' source maps side by side."""
        return self._side_by_side(X, "transform_source")

    def get_state(self):
        """(config, arrays) as Serializable's, the members' arrays under "member<i>_"."""
        check_is_fitted(self, "members_")
        config = {"type": type(self).__name__, "version": STATE_VERSION,
                  "params": {"weights": [float(w) for w in self.weights], "widths": [int(w) for w in self.widths],
                             "temperature": self.temperature}, "members": []}
        arrays = {"classes_": np.asarray(self.classes_)}
        for i, member in enumerate(self.members_):
            member_config, member_arrays = member.get_state()
            config["members"].append(member_config)
            arrays.update({f"member{i}_{name}": array for name, array in member_arrays.items()})
        return config, arrays

    @classmethod
    def from_state(cls, config, arrays):
        """Inverse of get_state."""
        members = [TransferClassifier.from_state(member_config, {name[len(f"member{i}_"):]: array
                                                                  for name, array in arrays.items()
                                                                  if name.startswith(f"member{i}_")})
                   for i, member_config in enumerate(config.get("members", []))]
        model = cls(members=members, **config["params"])
        model._check_params()
        if [member.n_features_in_ for member in members] != list(model.widths):
            raise ValueError(f"the members' widths {[m.n_features_in_ for m in members]} differ from {model.widths}")
        model.members_, model.classes_, model.n_features_in_ = members, members[0].classes_, sum(model.widths)
        return model


def classifier_from_state(config, arrays):
    """Rebuild a NearestMeanClassifier, TransferClassifier or ScoreMixture from get_state() output."""
    classifiers = {cls.__name__: cls for cls in (NearestMeanClassifier, TransferClassifier, ScoreMixture)}
    kind = config.get("type")
    if kind not in classifiers:
        raise ValueError(f"unknown classifier type {kind!r}; expected one of {sorted(classifiers)}")
    return classifiers[kind].from_state(config, arrays)
