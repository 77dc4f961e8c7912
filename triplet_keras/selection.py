"""Choose the transfer from the user's own data: few-shot episodes simulated on the source, then the support.

Nothing is tuned on the target. The source's labelled embeddings stand in for it:

* new classes: the source classes are cut into groups of h = min(n_way, C - 2) classes (C source
  classes, seeded, every class in one group at least). For each group, the other classes play the
  source (their ``train`` rows) and the group plays the new target classes (its ``held_out`` rows):
  h-way K-shot episodes.
* new domain (target classes are source classes): the ``train`` rows are the source, the ``held_out``
  rows the target, with every class mapped to itself: N-way K-shot episodes.

With ``transfer_selection: held_out_classes`` (init.py) the new-class episodes avoid the bias of
classes the encoder trained on: a second encoder trains without a fold of f = min(n_way, C // 2)
source classes (held_out_fold) and the candidates, on its features, are scored on f-way episodes
with the fold as the new classes and the other source classes as the source (held_out_class_tasks).

``held_out`` is the source's validation split when it has one; without it each class's rows are
halved. Every candidate (features x mode x whitening shrinkage) is scored on the same episodes; the
highest mean accuracy wins, ties going to the earlier, simpler candidate (``none`` first). When the
source cannot form such episodes (fewer than K + 1 held-out rows in a class, or fewer than 4 source
classes for new classes) the documented fallback is taken: ``none`` on the first feature kind for new
classes (the support alone: no claim the source helps) and ``center`` unwhitened for a new domain
(the original method's per-domain centring).

The support itself then has the last word when it holds K >= 2 shots of every class (support_scores,
support_choice): each candidate is fitted K times, each time without one shot of every class, and
scored on the shots left out; the highest share right wins, ties going to the higher source-episode
score. The source episodes see the source's classes, not the user's: how far apart the new classes
lie, or how the new domain moved, only the target's own labelled shots can tell.
"""
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from .evaluation import evaluate_few_shot, method_shrinkage, whitened_spaces
from .transfer import class_means, fit_transfer

# ``calibrate`` stays a mode to ask for, but it was below ``center`` in every benchmark row (digits and
# Fashion-MNIST, both regimes), so ``auto`` does not spend episodes on it.
MODES = ("none", "translate", "center")
SHRINKAGES = (None, 0.1, 0.3, 0.6)
MAX_QUERIES = 15


@dataclass
class TransferChoice:
    """The chosen ``features``, ``mode`` and ``whiten``; ``scores`` maps each candidate's name to its mean
    accuracy on the source episodes (empty for the fallback), over ``n_episodes`` episodes of
    ``episodes`` kind ("source" or "held_out_classes"); ``support_scores`` to its leave-one-out accuracy
    on the support over ``support_folds`` folds when the support decided (support_choice)."""
    features: str
    mode: str
    whiten: float | None
    scores: dict = field(default_factory=dict)
    n_episodes: int = 0
    fallback: bool = False
    episodes: str = "source"
    support_scores: dict = field(default_factory=dict)
    support_folds: int = 0

    @property
    def key(self):
        """The candidate's name across kinds of features (candidate_key)."""
        return candidate_key(self.features, candidate_name(self.mode, self.whiten))

    @property
    def kwargs(self):
        """fit_transfer keyword arguments of the choice."""
        return {"mode": self.mode, "whiten": self.whiten}

    def as_dict(self):
        return {"features": self.features, "mode": self.mode, "whiten": self.whiten, "n_episodes": self.n_episodes,
                "fallback": self.fallback, "episodes": self.episodes, "scores": self.scores,
                "support_folds": self.support_folds, "support_scores": self.support_scores}


def candidate_name(mode, whiten):
    return mode if whiten is None else f"{mode} whiten {whiten:g}"


def candidate_key(features, method):
    """The name of a candidate across kinds of transfer features: "<features>: <method>"."""
    return f"{features}: {method}"


def candidates(modes=MODES, shrinkages=SHRINKAGES):
    """{name: fit_transfer kwargs}: ``none`` unwhitened, every other mode at every shrinkage (``translate``
    unwhitened is ``none`` by nearest means, so it is left out)."""
    methods = {}
    for mode in modes:
        for whiten in ((None,) if mode == "none" else shrinkages):
            if not (mode == "translate" and whiten is None):
                methods[candidate_name(mode, whiten)] = {"mode": mode, "whiten": whiten}
    return methods


def halve_per_class(labels, seed=0):
    """Boolean mask choosing half of each class's rows (rounded down), seeded: the held-out half."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        held_out[rows[: len(rows) // 2]] = True
    return held_out


def classes_with_rows(labels, minimum):
    """The sorted labels that occur at least ``minimum`` times in ``labels`` (K + 1: a support and a query)."""
    classes, counts = np.unique(labels, return_counts=True)
    return classes[counts >= minimum]


def simulated_tasks(train_labels, held_out_labels, new_classes, n_way, k_shot, seed=0):
    """[(train rows, held-out rows, n_way)]: the source-side stand-ins for the target; [] when none can
    be formed (see the module docstring)."""
    train_labels, held_out_labels = np.asarray(train_labels), np.asarray(held_out_labels)
    usable = np.intersect1d(classes_with_rows(held_out_labels, k_shot + 1), train_labels)
    if not new_classes:
        way = min(n_way, len(usable))
        if way < 2:
            return []
        return [(np.arange(len(train_labels)), np.flatnonzero(np.isin(held_out_labels, usable)), way)]
    classes = np.unique(train_labels)
    group = min(n_way, len(classes) - 2)
    if group < 2 or len(usable) < group:
        return []
    order = np.random.default_rng(seed).permutation(usable)
    tasks = []
    for start in range(0, len(order), group):
        chosen = order[start: start + group]
        if len(chosen) < group:  # the last group is filled up from the front
            chosen = np.concatenate([chosen, order[: group - len(chosen)]])
        tasks.append((np.flatnonzero(~np.isin(train_labels, chosen)), np.flatnonzero(np.isin(held_out_labels, chosen)),
                      group))
    return tasks


def held_out_fold(source_classes, n_way, seed=0):
    """The source classes a selection encoder leaves out: min(n_way, C // 2) of the C classes, seeded;
    empty when C < 4 (the encoder needs two classes to train on, the episodes two to tell apart)."""
    source_classes = np.asarray(source_classes)
    if len(source_classes) < 4:
        return source_classes[:0]
    size = min(n_way, len(source_classes) // 2)
    return np.sort(np.random.default_rng(seed).permutation(source_classes)[:size])


def held_out_class_tasks(train_labels, held_out_labels, n_way, k_shot):
    """[(every train row, every held-out row, way)]: the held-out rows (classes the features never saw)
    against the train rows; [] when fewer than two held-out classes have K + 1 rows."""
    held_out_labels = np.asarray(held_out_labels)
    usable = classes_with_rows(held_out_labels, k_shot + 1)
    if len(usable) < 2:
        return []
    return [(np.arange(len(train_labels)), np.flatnonzero(np.isin(held_out_labels, usable)), min(n_way, len(usable)))]


def select_transfer(features, train_labels, held_out_labels, new_classes, n_way, k_shot, methods=None,
                    n_episodes=100, seed=0, tasks=None):
    """TransferChoice scored on source episodes.

    ``features``: {name: (train vectors, held-out vectors)}, the same source rows under each kind of
    transfer features; ``held_out_labels`` label the held-out rows (``halve_per_class`` makes them
    when the source has no validation split). ``methods``: the candidates (default ``candidates()``).
    ``n_episodes`` episodes in all, spread over the tasks: ``tasks`` when given (such as
    held_out_class_tasks), else simulated_tasks.
    """
    methods = candidates() if methods is None else methods
    train_labels, held_out_labels = np.asarray(train_labels), np.asarray(held_out_labels)
    if tasks is None:
        tasks = simulated_tasks(train_labels, held_out_labels, new_classes, n_way, k_shot, seed)
    first = next(iter(features))
    if not tasks:
        return TransferChoice(first, "none" if new_classes else "center", None, fallback=True)
    per_task = max(1, -(-n_episodes // len(tasks)))
    totals = {}
    for name, (train, held_out) in features.items():
        for source_rows, target_rows, way in tasks:
            labels = held_out_labels[target_rows]
            smallest = int(np.min(np.unique(labels, return_counts=True)[1]))
            results = evaluate_few_shot(train[source_rows], train_labels[source_rows], held_out[target_rows], labels,
                                        way, k_shot, methods, n_episodes=per_task,
                                        n_query=min(MAX_QUERIES, smallest - k_shot), seed=seed)
            for method in methods:
                key = candidate_key(name, method)
                totals[key] = totals.get(key, 0.0) + results[method]["mean"] / len(tasks)
    return scored_choice({key: round(value, 4) for key, value in totals.items()}, methods, per_task * len(tasks))


def scored_choice(scores, methods, n_episodes=0):
    """The TransferChoice of source-episode ``scores`` ({candidate key: mean accuracy}): the highest, the
    first of equal scores (candidates run simplest first). ValueError when a key names no candidate of
    ``methods``."""
    unknown = [key for key in scores if key.split(": ", 1)[-1] not in methods]
    if unknown:
        raise ValueError(f"source scores name candidates that mode / whiten leave closed or that do not exist: "
                         f"{unknown}; expected '<features>: <candidate>' with a candidate among {list(methods)}")
    name, method = max(scores, key=scores.get).split(": ", 1)
    return TransferChoice(name, methods[method]["mode"], methods[method]["whiten"], dict(scores), n_episodes)


def open_candidates(mode="auto", whiten="auto"):
    """candidates() over what ``mode`` and ``whiten`` leave open ("auto": every MODES or SHRINKAGES value;
    anything else: that value alone)."""
    return candidates(MODES if mode == "auto" else (mode,), SHRINKAGES if whiten == "auto" else (whiten,))


def choose_transfer(features, train_labels, held_out_labels, new_classes, n_way, k_shot, mode="auto", whiten="auto",
                    n_episodes=100, seed=0, tasks=None):
    """select_transfer (on ``tasks`` when given) over open_candidates(mode, whiten). A fixed value also
    holds in the fallback."""
    choice = select_transfer(features, train_labels, held_out_labels, new_classes, n_way, k_shot,
                             open_candidates(mode, whiten), n_episodes, seed, tasks)
    if choice.fallback:
        choice.mode = choice.mode if mode == "auto" else mode
        choice.whiten = choice.whiten if whiten == "auto" else whiten
    return choice


def leave_one_out_folds(labels):
    """[(kept rows, left-out rows)] of a support's ``labels``: fold i leaves out the i-th row of every
    class (in order of appearance), for i below the smallest class count K; [] when K < 2 (a class
    would be left without a shot)."""
    labels = np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    if min(len(rows) for rows in members) < 2:
        return []
    folds = []
    for i in range(min(len(rows) for rows in members)):
        out = np.array([rows[i] for rows in members])
        folds.append((np.setdiff1d(np.arange(len(labels)), out), out))
    return folds


def support_scores(kind, spaces, source_labels, target_labels, supports, methods, class_mapping=None, progress=False):
    """[{candidate key: share of the support's shots right when left out}] for each support (target
    rows) of ``supports``, for one ``kind`` of transfer features and every method of ``methods``: each
    fold of leave_one_out_folds fits on the shots kept and predicts the shots left out. {} for a support
    with fewer than 2 shots of a class.

    ``spaces``: {shrinkage: (source vectors, target vectors)} of that kind (evaluation.whitened_spaces,
    covering the shrinkages of ``methods``); ``progress``: a progress bar over the supports.
    """
    source_labels, target_labels = np.asarray(source_labels), np.asarray(target_labels)
    supports = [np.asarray(support) for support in supports]
    # New classes take only the source class means from the source (every candidate mode, no kNN): one
    # row per class gives the same fits as every row, at a fraction of the cost on a large source.
    if class_mapping is None and not np.isin(target_labels[np.concatenate(supports)], source_labels).any():
        classes, index = np.unique(source_labels, return_inverse=True)
        spaces = {shrinkage: (class_means(np.asarray(source, np.float64), index, len(classes)), target)
                  for shrinkage, (source, target) in spaces.items()}
        source_labels = classes
    bar = tqdm(supports, desc=f"leave-one-out on the supports, {kind} features", unit="support", disable=not progress,
               leave=False)
    return [leave_one_out_scores(kind, spaces, source_labels, target_labels[support], support, methods, class_mapping)
            for support in bar]


def leave_one_out_scores(kind, spaces, source_labels, labels, support, methods, class_mapping):
    """support_scores for one support (target rows ``support`` labelled ``labels``)."""
    folds = leave_one_out_folds(labels)
    scores = {}
    for method, kwargs in (methods.items() if folds else ()):
        source, target = spaces[method_shrinkage(kwargs)]
        shots, right = target[support], 0
        for kept, out in folds:  # fitting in the whitened space is fitting with whiten
            model = fit_transfer(source, source_labels, shots[kept], labels[kept], class_mapping=class_mapping,
                                 **{**kwargs, "whiten": None})
            right += int(np.sum(model.predict(shots[out]) == labels[out]))
        scores[candidate_key(kind, method)] = right / sum(len(out) for _, out in folds)
    return scores


def support_choice(choice, scores, methods, n_folds):
    """``choice`` re-decided by the support: the candidate of ``scores`` (support_scores of every kind,
    over ``n_folds`` folds) with the highest share right, ties going to the higher source-episode score
    in ``choice.scores``, then to the earlier candidate. ``choice`` itself when ``scores`` is empty."""
    if not scores:
        return choice
    best = max(scores, key=lambda key: (scores[key], choice.scores.get(key, -1.0)))
    kind, method = best.split(": ", 1)
    return replace(choice, features=kind, mode=methods[method]["mode"], whiten=methods[method]["whiten"],
                   support_scores={key: round(value, 4) for key, value in scores.items()}, support_folds=n_folds)


def choose_on_own_support(choice, source_emb, source_labels, support_emb, support_labels, methods, class_mapping=None,
                          whitening=None):
    """support_choice for one kind of features ("features"): ``choice`` re-decided by leave-one-out on
    the support itself, whitened per shrinkage of ``methods`` (evaluation.whitened_spaces), or by the
    given ``whitening`` (a transfer.Whitening) for the one numeric shrinkage."""
    support_labels = np.asarray(support_labels)
    folds = leave_one_out_folds(support_labels)
    if not folds:
        return choice
    shrinkages = {method_shrinkage(kwargs) for kwargs in methods.values()}
    if whitening is None:
        spaces = whitened_spaces(source_emb, source_labels, support_emb, shrinkages)
    else:
        spaces = {shrinkage: (source_emb, support_emb) if shrinkage is None else
                  (whitening.apply(source_emb), whitening.apply(support_emb)) for shrinkage in shrinkages}
    scores = support_scores("features", spaces, source_labels, support_labels, [np.arange(len(support_labels))],
                            methods, class_mapping)[0]
    return support_choice(choice, scores, methods, len(folds))
