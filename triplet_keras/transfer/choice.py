"""The choice of transfer (``auto``): candidates, the evidence that scores them, and the search.

A Candidate is one way to classify the target: the network its features come from (``fine_tuned``,
``initial``: the same network before fine-tuning, or ``pixels``: the images themselves), the kind of
features, the transfer mode, the whitening shrinkage, and whether the unlabelled target pool refines
the prototypes (soft k-means with the support fixed: TransferClassifier's ``transductive``).

TransferSearch scores every candidate and refits the best, in the manner of scikit-learn's
GridSearchCV (``cv_results_``, ``best_candidate_``, ``best_estimator_``):

1. EpisodeEvidence: few-shot episodes on labelled data that stands in for the target and that the
   scored features never trained on. New classes: source classes held out of the training of the
   network that makes the features (for the fine-tuned network, a fold encoder trained without them;
   the initial network and the pixels never trained on any class). A new domain: the source
   validation split, every class mapped to itself. Candidates that use the pool see each episode's
   queries as their pool.
2. The support's own leave-one-out (leave_one_out_folds), when it holds K >= 2 shots of every class,
   on what the evidence cannot see: for a new domain (whose evidence comes from the source domain)
   the shortlist, per space and with and without the pool, the evidence's best; for new classes
   compared_for_new_classes: the evidence's best with and without the pool, and its best without the
   pool when that is another candidate (the user's pool may be unbalanced or hold other classes, the
   evidence's pools do not; otherwise, on the choice of features, mode and whitening the held-out
   classes' episodes ranked better than the support's few predictions: benchmarks/RESULTS.md,
   "Leave-one-out"). Each compared candidate is fitted K times, each time
   without one shot of every class, and scored on the shots left out. It has the last word; ties go
   to the evidence score, then to the candidate nearest the default.

Without evidence (for new classes: too few held-out source classes to stand for the target), the
``fallback`` takes the evidence's place: by default (no_evidence_form) the default candidate
(default_candidate), ``center`` with whitening on the fine-tuned network's ``grid`` features, with the
pool when there is one, the form that led the earlier benchmarks (new classes and a new domain,
benchmarks/RESULTS.md); for new classes, when the starting network is a candidate, the Mixture of
NO_EVIDENCE_WEIGHTS of the default candidate's scores and the starting network's form's
(starting_network_form): fine-tuned on a few source classes, a network can lie new classes apart
worse than it did before, and nothing the run sees says whether it does. With K >= 2 the leave-one-out
compares, for a new domain, each space's default form; for new classes, the fallback with and without
the pool. Query labels are never used.

A search fits in pre-whitened spaces (fitting on vectors whitened with the source's within-class
covariance is fitting with that ``whiten``: tests/test_transfer.py) and, for new classes, on the source
class means alone (no target class maps to a source class, so every mode needs only those): the same
fits as TransferClassifier on the raw vectors, computed once per space and shrinkage.
"""
from dataclasses import asdict, dataclass, replace

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from triplet_keras.core.distances import l2_normalize, pairwise
from triplet_keras.core.per_class import class_counts, shuffled_rows_per_class
from triplet_keras.core.vocabulary import TRANSFER_MODES
from .classifier import ScoreMixture, TransferClassifier
from .domain import shrink_toward, source_classes_of
from .evaluation import sample_episodes
from .prototypes import class_means, refine_prototypes
from .whitening import source_whitenings

NETWORKS = ("fine_tuned", "initial", "pixels")
SEARCHED_MODES = tuple(mode for mode in TRANSFER_MODES if mode != "calibrate")  # calibrate never won a benchmark row
SHRINKAGES = (None, 0.1, 0.3, 0.6)
MAX_WHITEN_WIDTH = 2048  # a d x d float64 whitening: 32 MB at this width
MAX_QUERIES = 15


@dataclass(frozen=True)
class Candidate:
    """One way to classify the target (see the module docstring)."""
    network: str = "fine_tuned"
    features: str = "backbone"
    mode: str = "none"
    whiten: float | None = None
    unlabeled: bool = False

    @property
    def space(self):
        """(network, features): the key of the vectors it works on."""
        return self.network, self.features

    @property
    def shrinkage(self):
        """The whitening its fit uses (``none`` is never whitened)."""
        return None if self.mode == "none" else self.whiten

    @property
    def name(self):
        method = self.mode if self.whiten is None else f"{self.mode} whiten {self.whiten:g}"
        return f"{self.network} {self.features}: {method}" + (" + unlabeled" if self.unlabeled else "")

    @property
    def weighted_parts(self):
        """((weight, Candidate), ...) whose scores it sums: itself alone."""
        return ((1.0, self),)

    def pool_twin(self):
        """The same candidate with the other use of the pool."""
        return replace(self, unlabeled=not self.unlabeled)

    def as_dict(self):
        return asdict(self)

    def estimator(self, whitened=False):
        """The unfitted TransferClassifier (``whitened``: for vectors already whitened)."""
        return TransferClassifier(mode=self.mode, whiten=None if whitened else self.shrinkage,
                                  transductive=self.unlabeled)


@dataclass(frozen=True)
class Mixture:
    """Candidates whose scores (-cosine distances to their prototypes) are summed with ``weights``, each
    fitted in its own space as alone; all use the pool or none does. Its estimator is a ScoreMixture."""
    members: tuple
    weights: tuple

    @property
    def unlabeled(self):
        return self.members[0].unlabeled

    @property
    def weighted_parts(self):
        return tuple(zip(self.weights, self.members))

    @property
    def name(self):
        return " + ".join(f"{weight:g} x ({member.name})" for weight, member in self.weighted_parts)

    def pool_twin(self):
        return Mixture(tuple(member.pool_twin() for member in self.members), self.weights)

    def as_dict(self):
        return {"members": [member.as_dict() for member in self.members], "weights": list(self.weights)}

    def estimator(self, widths):
        """The unfitted ScoreMixture, its members on ``widths`` columns each."""
        return ScoreMixture([member.estimator() for member in self.members], self.weights, widths)


def candidates(spaces, modes=SEARCHED_MODES, shrinkages=SHRINKAGES, unlabeled=(False, True)):
    """Every candidate over ``spaces`` ({(network, features): width}), simplest first: per space ``none``
    unwhitened, then every other mode at every shrinkage (whitening only up to MAX_WHITEN_WIDTH wide;
    ``translate`` unwhitened is ``none`` by nearest means, so it is left out); each with and without
    the pool, as ``unlabeled`` lists (but ``translate``: refined, its prototypes are ``none``'s)."""
    found = []
    for (network, features), width in spaces.items():
        for mode in modes:
            for whiten in ((None,) if mode == "none" or width > MAX_WHITEN_WIDTH else shrinkages):
                if mode == "translate" and whiten is None:
                    continue
                found += [Candidate(network, features, mode, whiten, pool) for pool in unlabeled
                          if not (pool and mode == "translate")]
    return found


class LabelledVectors:
    """One space's labelled source vectors and other vectors (the target, or stand-ins for it), whitened
    once per shrinkage. ``new_classes``: no class of the other vectors is a source class, so the source
    enters the fits through its class means alone.

    ``predict`` fits a candidate with TransferClassifier's math for the modes of SEARCHED_MODES (nearest means,
    no kNN), straight on these arrays: a search makes hundreds of thousands of fits, and the estimator's
    input checks would cost more than the math (tests/test_choice.py checks every candidate kind
    against TransferClassifier)."""

    def __init__(self, source, source_labels, other, new_classes, kappa=2.0, refine_steps=10, confidence=0.9,
                 temperature=0.1):
        self.source, self.source_labels = np.asarray(source, np.float64), np.asarray(source_labels)
        self.other, self.new_classes, self._spaces = np.asarray(other, np.float64), new_classes, {}
        self.whitenings = {}  # shrinkage: its transfer.Whitening (None unwhitened), once whitened() made it
        self.kappa, self.refine_steps, self.confidence, self.temperature = kappa, refine_steps, confidence, temperature

    def whitening(self, shrinkage):
        """The transfer.Whitening of ``shrinkage`` learnt on the source (None for None)."""
        self.whitened(shrinkage)
        return self.whitenings[shrinkage]

    def whitened(self, shrinkage):
        """(source rows or class means, their labels, other vectors, the mean of the source class means,
        the class means of the centred and L2-normalised source rows), whitened by ``shrinkage``."""
        if shrinkage not in self._spaces:
            source, other = self.source, self.other
            whitening = None
            if shrinkage is not None:
                if shrinkage not in self.whitenings:  # SHRINKAGES and this one, from one eigendecomposition
                    self.whitenings.update(source_whitenings(source, self.source_labels, set(SHRINKAGES[1:]) | {
                        shrinkage}))
                whitening = self.whitenings[shrinkage]
                source, other = whitening.apply(source), whitening.apply(other)
            classes, index = np.unique(self.source_labels, return_inverse=True)
            means = class_means(source, index, len(classes))
            center = means.mean(axis=0)
            centred = class_means(l2_normalize(source - center), index, len(classes))
            source, labels = (means, classes) if self.new_classes else (source, self.source_labels)
            self._spaces[shrinkage] = source, labels, other, center, centred
            self.whitenings[shrinkage] = whitening
        return self._spaces[shrinkage]

    def predict(self, candidate, support, labels, query, pool=None, class_mapping=None):
        """Labels of the ``query`` rows of the other vectors by ``candidate`` fitted on the ``support`` rows
        labelled ``labels`` (and the ``pool`` rows when it uses a pool), as TransferClassifier would."""
        classes, scores = self.scores(candidate, support, labels, query, pool, class_mapping)
        return classes[np.argmax(scores, axis=1)]

    def scores(self, candidate, support, labels, query, pool=None, class_mapping=None):
        """(classes, (n_query, n_classes) scores -d) of ``predict``: TransferClassifier's class_scores."""
        _, source_labels, other, _, centred_source = self.whitened(candidate.shrinkage)
        classes, index = np.unique(labels, return_inverse=True)
        counts = np.bincount(index).astype(np.float64)
        pool = other[pool] if candidate.unlabeled and pool is not None and len(pool) else None
        offset, weights = 0.0, counts
        if candidate.mode == "center":
            offset = pool.mean(axis=0) if pool is not None else class_means(other[support], index, len(classes)).mean(0)
            place = lambda rows: l2_normalize(rows - offset)  # noqa: E731
            prototypes = class_means(place(other[support]), index, len(classes))
            mapped = source_classes_of(classes, np.unique(source_labels), class_mapping)
            has = mapped >= 0
            if has.any():
                prototypes[has] = shrink_toward(prototypes[has], counts[has], centred_source[mapped[has]], self.kappa)
                weights = counts + np.where(has, self.kappa, 0.0)
        else:
            place = lambda rows: rows  # noqa: E731
            prototypes = class_means(other[support], index, len(classes))
        if pool is not None:
            prototypes = refine_prototypes(place(pool), prototypes, weights, self.refine_steps, self.confidence,
                                           "cosine", self.temperature)
        return classes, -pairwise(place(other[query]), prototypes, "cosine")


class EpisodeEvidence:
    """Candidate scores on few-shot episodes of labelled stand-ins for the target.

    ``stand_ins``: {(network, features): (source vectors, stand-in vectors)}, the same rows in every
    space, labelled ``source_labels`` and ``stand_in_labels``; ``new_classes``: the stand-in classes are
    not source classes (held out of training) rather than source classes in other images (a new
    domain). ``scores(candidates, n_way, k_shot)``: {candidate: mean accuracy} over ``n_episodes``
    episodes of min(n_way, usable classes) ways, the same episodes for every candidate, computed once
    per (n_way, k_shot); {} when fewer than two classes have K + 1 stand-ins. ``description`` names it
    in reports.
    """

    def __init__(self, stand_ins, source_labels, stand_in_labels, new_classes, n_episodes=100, seed=0,
                 description="held-out classes"):
        self.labels = np.asarray(stand_in_labels)
        self.spaces = {key: LabelledVectors(source, source_labels, stand_in, new_classes)
                       for key, (source, stand_in) in stand_ins.items()}
        self.n_episodes, self.seed, self.description, self._scores = n_episodes, seed, description, {}

    def episodes(self, n_way, k_shot):
        """The (support, query) rows of the stand-ins, [] when they cannot form episodes."""
        classes, counts = class_counts(self.labels)
        usable = classes[counts >= k_shot + 1]
        if len(usable) < 2 or n_way < 2:
            return []
        rows = np.flatnonzero(np.isin(self.labels, usable))
        n_query = min(MAX_QUERIES, int(counts[counts >= k_shot + 1].min()) - k_shot)
        return [(rows[s], rows[q]) for s, q in sample_episodes(self.labels[rows], min(n_way, len(usable)), k_shot,
                                                                 n_query, self.n_episodes, self.seed)]

    def scores(self, candidates, n_way, k_shot):
        key = (n_way, k_shot)
        known = self._scores.setdefault(key, {})
        missing = [c for c in candidates if c not in known]
        episodes = self.episodes(n_way, k_shot) if missing else []
        for candidate in (missing if episodes else ()):
            vectors, labels = self.spaces[candidate.space], self.labels
            known[candidate] = round(float(np.mean([
                np.mean(vectors.predict(candidate, support, labels[support], query, pool=query) == labels[query])
                for support, query in episodes])), 4)
        return {c: known[c] for c in candidates if c in known}


def leave_one_out_folds(labels):
    """[(kept rows, left-out rows)] of a support's ``labels``: fold i leaves out the i-th row of every
    class (in order of appearance), for i below the smallest class count K; [] when K < 2."""
    labels = np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    smallest = min(len(rows) for rows in members)
    if smallest < 2:
        return []
    folds = []
    for i in range(smallest):
        out = np.array([rows[i] for rows in members])
        folds.append((np.setdiff1d(np.arange(len(labels)), out), out))
    return folds


DEFAULT_SHRINKAGE = 0.3


NO_EVIDENCE_WEIGHTS = (0.8, 0.2)  # chosen on splits the README does not report: benchmarks/RESULTS.md


def default_order(candidate, pooled):
    """Sort key: how far ``candidate`` is from the default form (the fine-tuned network, ``grid`` then
    ``backbone`` features, ``center``, whitening DEFAULT_SHRINKAGE, the pool exactly when ``pooled``);
    a Mixture as its first member."""
    candidate = candidate.weighted_parts[0][1]
    features = {"grid": 0, "backbone": 1}.get(candidate.features, 2)
    whiten = 0 if candidate.whiten == DEFAULT_SHRINKAGE else 1 if candidate.whiten is not None else 2
    return (candidate.network != "fine_tuned", candidate.mode != "center", whiten, features,
            candidate.unlabeled != pooled)


def default_candidate(candidates, pooled):
    """The candidate of ``candidates`` nearest the default form (default_order)."""
    return min(candidates, key=lambda candidate: default_order(candidate, pooled))


def shortlist(candidates, evidence):
    """The candidates the support's leave-one-out compares: for each space, with and without the pool,
    the one ``evidence`` scores highest (the first on ties), or without evidence the one nearest the
    default form. The support's few shots can tell which network lies the new classes apart; mode and
    whitening, whose differences are a point or two, are the evidence's to settle."""
    groups = {}
    for candidate in candidates:
        groups.setdefault((candidate.space, candidate.unlabeled), []).append(candidate)
    key = (lambda c: -evidence.get(c, 0.0)) if evidence else (lambda c: default_order(c, c.unlabeled))
    return [min(members, key=key) for members in groups.values()]


def compared_for_new_classes(preferred, candidates, evidence):
    """The candidates the support's leave-one-out compares for new classes: ``preferred`` with and
    without the pool (pool_twins) and, when they differ from it, the evidence's best without the pool
    (``auto``'s pick): a candidate that leads the evidence only with the pool, in another space or form,
    must beat on the support what the evidence picks without one."""
    compared = pool_twins(preferred, candidates)
    inductive = [c for c in candidates if not c.unlabeled]
    if evidence and inductive:
        best = best_by_evidence(inductive, evidence, pooled=False)
        compared += [best] if best not in compared else []
    return compared


def no_evidence_form(candidates, pooled, new_classes):
    """What stands in for the evidence's best without evidence: default_candidate, or for new classes,
    when ``candidates`` hold the starting network's form with the same use of the pool, the Mixture of
    NO_EVIDENCE_WEIGHTS of the two (the module docstring)."""
    preferred = default_candidate(candidates, pooled)
    start = starting_network_form(candidates, preferred.unlabeled) if new_classes else None
    if start is None or start.unlabeled != preferred.unlabeled:
        return preferred
    return Mixture((preferred, start), NO_EVIDENCE_WEIGHTS)


def starting_network_form(candidates, pooled):
    """The ``initial`` network's candidate in the initial_encoder baseline's form (``center``,
    unwhitened: whitened by the source's few classes, its features lay new classes apart worse),
    nearest the default form otherwise; None when ``candidates`` hold none."""
    found = [c for c in candidates if c.network == "initial" and c.mode == "center" and c.whiten is None]
    return min(found, key=lambda c: default_order(c, pooled)) if found else None


def best_by_evidence(candidates, evidence, pooled):
    """The candidate ``evidence`` scores highest; ties to the one nearest the default form (default_order)."""
    return min(candidates, key=lambda c: (-evidence[c], default_order(c, pooled)))


def pool_twins(candidate, candidates):
    """``candidate`` and, when ``candidates`` hold it (all its members, for a Mixture), the same candidate
    with the other use of the pool."""
    twin = candidate.pool_twin()
    return [candidate] + ([twin] if all(part in candidates for _, part in twin.weighted_parts) else [])


class TransferSearch(ClassifierMixin, BaseEstimator):
    """The search over ``candidates`` (see the module docstring), on row indices into the target.

    ``spaces``: {(network, features): (source vectors, target vectors)}, the same source rows labelled
    ``source_labels`` in each; ``evidence``: an EpisodeEvidence or None; ``fallback``: the Candidate
    taken without evidence nor leave-one-out (default: no_evidence_form). ``fit(X, y, unlabeled=None)``: X the support's rows of the target, y
    their labels, ``unlabeled`` the pool's rows (candidates using a pool are left out without one).
    Fitted: ``cv_results_`` ({"candidate": names, "params": Candidate dicts, "evidence_score",
    "support_score", "rank"}, nan where not scored; the searched candidates, then any Mixture it
    considered), ``best_candidate_``, ``best_index_``, ``best_estimator_`` (with ``refit``: the
    TransferClassifier of the best candidate, fitted on the raw vectors of its space with its
    whitening; for a Mixture a ScoreMixture on its members' vectors side by side), ``decided_by``
    ("leave-one-out", "evidence" or "fallback"),
    ``n_folds_`` and ``classes_``. ``predict(X)``: labels of target rows X.
    """

    def __init__(self, spaces, source_labels, candidates, evidence=None, fallback=None, class_mapping=None, refit=True):
        self.spaces = spaces
        self.source_labels = source_labels
        self.candidates = candidates
        self.evidence = evidence
        self.fallback = fallback
        self.class_mapping = class_mapping
        self.refit = refit

    def labelled_vectors(self, space, new_classes):
        """The LabelledVectors of a space (source and target), built once and shared with the searches
        of with_candidates."""
        cache = self.__dict__.setdefault("_labelled_vectors", {})
        if space not in cache:
            source, target = self.spaces[space]
            cache[space] = LabelledVectors(source, self.source_labels, target, new_classes)
        return cache[space]

    def with_candidates(self, candidates, refit=False):
        """A search over other ``candidates`` with the same spaces, evidence and fallback, sharing this
        one's LabelledVectors (their whitenings are computed once for both)."""
        other = TransferSearch(self.spaces, self.source_labels, candidates, self.evidence, self.fallback,
                               self.class_mapping, refit)
        other.__dict__["_labelled_vectors"] = self.__dict__.setdefault("_labelled_vectors", {})
        return other

    def fit(self, X, y, unlabeled=None):
        rows, y = np.asarray(X, dtype=np.int64), np.asarray(y)
        if len(rows) != len(y) or not len(rows):
            raise ValueError(f"X and y must be non-empty and as long as each other, got {len(rows)} and {len(y)}")
        self.classes_ = np.unique(y)
        new_classes = self.class_mapping is None and not np.isin(self.classes_, self.source_labels).any()
        pool = None if unlabeled is None or not len(unlabeled) else np.asarray(unlabeled, dtype=np.int64)
        open_ = [c for c in self.candidates if pool is not None or not c.unlabeled]
        if not open_:
            raise ValueError("no candidate to search: every candidate uses an unlabelled pool and none was given")
        n_way, k_shot = len(self.classes_), int(class_counts(y)[1].min())
        evidence = {} if self.evidence is None else self.evidence.scores(open_, n_way, k_shot)
        preferred = (best_by_evidence(open_, evidence, pool is not None) if evidence
                     else self.fallback or no_evidence_form(open_, pool is not None, new_classes))
        folds = leave_one_out_folds(y)
        compared = ((compared_for_new_classes(preferred, open_, evidence) if new_classes
                     else shortlist(open_, evidence)) if folds else [])
        support = {}
        for candidate in (compared if len(compared) > 1 else ()):
            right = sum(np.sum(self._predict(candidate, rows[kept], y[kept], rows[out], pool, new_classes) == y[out])
                        for kept, out in folds)
            support[candidate] = round(right / sum(len(out) for _, out in folds), 4)
        order = lambda c: (-support.get(c, 0.0), -evidence.get(c, 0.0), default_order(c, pool is not None))  # noqa: E731
        self.best_candidate_ = min(support, key=order) if support else preferred
        listed = list(dict.fromkeys(open_ + [preferred, *compared]))  # the searched ones, then any Mixture
        ranking = sorted(range(len(listed)), key=lambda i: (listed[i] != self.best_candidate_, order(listed[i]), i))
        self.n_folds_ = len(folds) if support else 0
        self.decided_by = "leave-one-out" if support else "evidence" if evidence else "fallback"
        rank = {i: r + 1 for r, i in enumerate(ranking)}
        self.cv_results_ = {"candidate": [c.name for c in listed], "params": [c.as_dict() for c in listed],
                            "evidence_score": [evidence.get(c, float("nan")) for c in listed],
                            "support_score": [support.get(c, float("nan")) for c in listed],
                            "rank": [rank[i] for i in range(len(listed))]}
        self.best_index_ = listed.index(self.best_candidate_)
        self._fitted = (rows, y, pool, new_classes)
        if self.refit:
            self.best_estimator_ = self._refit(self.best_candidate_, rows, y, pool, new_classes)
        return self

    def _predict(self, candidate, support, y, query, pool, new_classes):
        """Labels of the target rows ``query`` by ``candidate`` fitted on the rows ``support`` labelled ``y``
        (a Mixture sums its members' scores)."""
        total = 0.0
        for weight, part in candidate.weighted_parts:
            vectors = self.labelled_vectors(part.space, new_classes)
            classes, scores = vectors.scores(part, support, y, query, pool, self.class_mapping)
            total = total + weight * scores
        return classes[np.argmax(total, axis=1)]

    def _refit(self, best, rows, y, pool, new_classes):
        """The fitted estimator of ``best`` on the raw vectors of its space (a Mixture: of its members'
        spaces side by side), with its whitening."""
        parts = [part for _, part in best.weighted_parts]
        sources, targets = zip(*(self.spaces[part.space] for part in parts))
        whitening = [self.labelled_vectors(part.space, new_classes).whitening(part.shrinkage) for part in parts]
        if isinstance(best, Mixture):
            estimator = best.estimator([target.shape[1] for target in targets])
            source, target = np.hstack(sources), np.hstack(targets)
        else:
            estimator, source, target, whitening = best.estimator(), sources[0], targets[0], whitening[0]
        return estimator.fit(target[rows], y, source_emb=source, source_labels=self.source_labels,
                             class_mapping=self.class_mapping, whitening=whitening,
                             unlabeled=target[pool] if best.unlabeled and pool is not None else None)

    def predict(self, X):
        """Labels of the target rows X by the best candidate (the same as best_estimator_'s)."""
        rows, y, pool, new_classes = self._fitted
        return self._predict(self.best_candidate_, rows, y, np.asarray(X, dtype=np.int64), pool, new_classes)

    def summary(self):
        """A JSON-able record of the search: the best candidate, how it was decided, every score."""
        return {"best_candidate": self.best_candidate_.as_dict(), "best_name": self.best_candidate_.name,
                "decided_by": self.decided_by, "n_folds": self.n_folds_,
                "evidence": None if self.evidence is None else self.evidence.description,
                "cv_results": self.cv_results_}


def held_out_fold(source_classes, n_way, seed=0):
    """The source classes held out of a network's training to score candidates on: min(n_way, C // 2) of
    the C classes, seeded; empty when C < 4 (two classes to train on, two to tell apart)."""
    source_classes = np.asarray(source_classes)
    if len(source_classes) < 4:
        return source_classes[:0]
    size = min(n_way, len(source_classes) // 2)
    return np.sort(np.random.default_rng(seed).permutation(source_classes)[:size])


def halve_per_class(labels, seed=0):
    """Boolean mask choosing half of each class's rows (rounded down), seeded: the held-out half."""
    held_out = np.zeros(len(labels), bool)
    for rows in shuffled_rows_per_class(labels, np.random.default_rng(seed)):
        held_out[rows[: len(rows) // 2]] = True
    return held_out


def source_evidence(spaces, source_labels, new_classes, n_way, n_episodes=100, seed=0):
    """EpisodeEvidence from the source vectors alone, for ``spaces`` ({key: source vectors}): for new
    classes a held_out_fold of source classes stands in for the target, the other classes being the
    source; for a new domain half of each class's rows (halve_per_class). None when the source is too
    small. Unlike held-out training, the features may have trained on these classes: evidence for
    features that did not (such as a library user's own encoder on other classes)."""
    source_labels = np.asarray(source_labels)
    if new_classes:
        held_out = np.isin(source_labels, held_out_fold(np.unique(source_labels), n_way, seed))
        description = "source classes held out of the source (not of the features' training)"
    else:
        held_out = halve_per_class(source_labels, seed)
        description = "half of each source class"
    if not held_out.any():
        return None
    stand_ins = {key: (vectors[~held_out], vectors[held_out]) for key, vectors in spaces.items()}
    return EpisodeEvidence(stand_ins, source_labels[~held_out], source_labels[held_out], new_classes, n_episodes,
                           seed, description)


def fit_transfer(source_emb, source_labels, support_emb, support_labels, mode="auto", whiten="auto", class_mapping=None,
                 unlabeled=None, transductive=None, n_episodes=100, seed=0, **params):
    """A fitted TransferClassifier for the target classes of the support (the modes: triplet_keras.transfer).

    A fixed ``mode`` (and ``whiten``: None or a shrinkage; "auto" means None there) fits that mode, with
    the ``unlabeled`` pool refining the prototypes when ``transductive`` is true (``center`` also centres
    the target on the pool mean).
    ``mode="auto"``: TransferSearch over every mode, shrinkage (``whiten="auto"``, else that one) and,
    with a pool, with and without it (``transductive``: None lets the search decide), scored on
    source_evidence (and, for a new domain, the support's leave-one-out); the returned classifier is
    its best_estimator_ (run TransferSearch itself for cv_results_). ``class_mapping`` maps target labels to source labels;
    without it support labels that are also source labels map to themselves, the rest are new classes.
    Other keyword arguments (kappa, kappa_new, n_borrow, knn, refine_steps, confidence, metric,
    temperature, whitening) go to TransferClassifier and its fit, fixed modes only.
    """
    if source_emb is None and mode == "auto":  # nothing to choose from: the support alone
        mode = "none"
    if mode != "auto":
        whitening = params.pop("whitening", None)
        model = TransferClassifier(mode=mode, whiten=None if whiten == "auto" else whiten,
                                   transductive=bool(transductive),
                                   **params)
        return model.fit(support_emb, support_labels, source_emb=source_emb, source_labels=source_labels,
                         unlabeled=unlabeled, class_mapping=class_mapping, whitening=whitening)
    if params:
        raise ValueError(f"mode='auto' searches the modes with their defaults; {sorted(params)} need a fixed mode")
    support_emb, source_emb = np.asarray(support_emb, np.float64), np.asarray(source_emb, np.float64)
    pool = np.zeros((0, support_emb.shape[1])) if unlabeled is None else np.asarray(unlabeled, np.float64)
    key = ("given", "features")
    support_labels, source_labels = np.asarray(support_labels), np.asarray(source_labels)
    new_classes = class_mapping is None and not np.isin(support_labels, source_labels).any()
    uses = (False, True) if transductive is None else (bool(transductive),)
    found = candidates({key: support_emb.shape[1]}, shrinkages=SHRINKAGES if whiten == "auto" else (whiten,),
                       unlabeled=uses if len(pool) else (False,))
    evidence = source_evidence({key: source_emb}, source_labels, new_classes, len(np.unique(support_labels)),
                               n_episodes, seed)
    search = TransferSearch({key: (source_emb, np.concatenate([support_emb, pool]))}, source_labels, found, evidence,
                            class_mapping=class_mapping)
    rows = np.arange(len(support_emb))
    search.fit(rows, support_labels, unlabeled=len(rows) + np.arange(len(pool)) if len(pool) else None)
    return search.best_estimator_
