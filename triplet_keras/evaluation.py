"""Few-shot evaluation: N-way K-shot episodes, every method on the same episodes, mean and 95% CI.

An episode draws n_way target classes, then K support and n_query query examples of each (all the
rest of each class when n_query is None). A method is a dict of fit_transfer keyword arguments; its
accuracy on an episode is the share of queries classified right. Reported per method: the mean over
episodes with the 95% interval half-width 1.96 * std / sqrt(n_episodes), and the same for the paired
difference to ``none``. Transductive variants ("<name>+transductive") see the episode's queries as
the unlabelled pool. The source whitening (transfer.source_whitening) is computed and applied once per
shrinkage and shared by every episode. The ceiling is the nearest class mean over every target example of the
episode's classes, scored on the same queries.

Baselines (``baselines``: {name: one vector per target example}, such as raw pixels or the encoder before
fine-tuning) run on the same episodes with one rule, ``support_centered_accuracy``: centre the support
and the queries on the support mean, L2-normalise, and take the nearest class mean (cosine).
"""
import numpy as np

from .transfer import WHITEN_DEFAULT, NearestMeanClassifier, fit_transfer, l2_normalize, source_whitening

METHODS = {
    "none": {"mode": "none"},
    "translate": {"mode": "translate"},
    "center": {"mode": "center"},
    "calibrate": {"mode": "calibrate"},
}
BASELINES = ("pixels", "initial_encoder")


def sample_episodes(labels, n_way, k_shot, n_query=15, n_episodes=200, seed=0):
    """List of (support indices, query indices) into labels; the same seed gives the same episodes."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n_way > len(classes):
        raise ValueError(f"n_way={n_way} but the target has only {len(classes)} classes")
    smallest = min(np.sum(labels == c) for c in classes)
    if k_shot + (n_query or 1) > smallest:
        raise ValueError(f"a class has only {smallest} examples, fewer than k_shot + n_query")
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        support, query = [], []
        for c in rng.choice(classes, n_way, replace=False):
            members = rng.permutation(np.flatnonzero(labels == c))
            support.append(members[:k_shot])
            query.append(members[k_shot: None if n_query is None else k_shot + n_query])
        episodes.append((np.concatenate(support), np.concatenate(query)))
    return episodes


def mean_ci(values):
    """(mean, 95% half-width 1.96 * std / sqrt(n))."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def support_centered_accuracy(vectors, labels, support, query):
    """Share of ``query`` rows whose nearest support class mean (cosine) is their label, after centring
    every vector on the mean of the support rows and L2-normalising (only the episode's rows are
    converted to float, so ``vectors`` may be uint8 pixels)."""
    flat = lambda rows: np.asarray(vectors[rows], np.float64).reshape(len(rows), -1)  # noqa: E731
    shots, queries = flat(support), flat(query)
    center = shots.mean(axis=0)
    classifier = NearestMeanClassifier().fit(l2_normalize(shots - center), labels[support])
    return float(np.mean(classifier.predict(l2_normalize(queries - center)) == labels[query]))


def resolve_auto(kwargs, source_emb, source_labels, support_emb, support_labels, class_mapping=None):
    """``kwargs`` with what TransferClassifier's "auto" takes from the source, computed once for every
    episode of an evaluation: the source-episode choice depends only on the source, the classes and the
    shot count. With one shot of a class that is the whole choice (the mode and whiten it gives); with
    more, each episode's support still decides by leave-one-out, from these scores (``source_scores``)."""
    if "auto" not in (kwargs.get("mode", "auto"), kwargs.get("whiten", WHITEN_DEFAULT)):
        return kwargs
    call = {"class_mapping": class_mapping, **kwargs, "transductive": False, "knn": None}
    chosen = fit_transfer(source_emb, source_labels, support_emb, support_labels, **call)
    if not chosen.selection_:  # the fallback rule: each fit takes it at once
        return kwargs
    if chosen.support_selection_:
        return {**kwargs, "source_scores": chosen.selection_}
    return {**kwargs, "mode": chosen.mode_, "whiten": chosen.whiten_}


def method_shrinkage(kwargs):
    """The whitening shrinkage a method's fit_transfer arguments fix (None: unwhitened, or "auto", which
    each fit chooses itself; ``none`` is never whitened)."""
    whiten = kwargs.get("whiten", WHITEN_DEFAULT)
    return None if kwargs.get("mode") == "none" or whiten == "auto" else whiten


def whitened_spaces(source_emb, source_labels, target_emb, shrinkages):
    """{shrinkage: (source, target)}: the vectors as given under None, and for every other shrinkage both
    whitened by the source's within-class covariance (transfer.source_whitening), computed once."""
    spaces = {None: (source_emb, target_emb)}
    for shrinkage in set(shrinkages) - {None}:
        whitening = source_whitening(source_emb, source_labels, shrinkage)
        spaces[shrinkage] = whitening.apply(source_emb), whitening.apply(target_emb)
    return spaces


def evaluate_few_shot(source_emb, source_labels, target_emb, target_labels, n_way, k_shot, methods=None,
                      transductive=False, n_episodes=200, n_query=15, seed=0, class_mapping=None, baselines=None,
                      scorers=None):
    """{method: {"mean", "ci95", "delta_vs_none", "delta_ci95", "n_episodes"}} plus "ceiling" and one
    entry per baseline (``baselines``: {name: vectors of the target examples}, see the module docstring)
    and per scorer (``scorers``: {name: function(episodes) -> one accuracy per episode}, for rules of
    their own such as a choice made on each episode's support; episodes as sample_episodes gives them)."""
    methods = dict(METHODS if methods is None else methods)
    methods.setdefault("none", {"mode": "none"})
    if transductive:
        methods.update({f"{name}+transductive": {**kwargs, "transductive": True, "knn": None}
                        for name, kwargs in list(methods.items())})
    target_emb, target_labels = np.asarray(target_emb), np.asarray(target_labels)
    source_emb = None if source_emb is None else np.asarray(source_emb, np.float64)  # converted once, not per fit
    shrinkages = set() if source_emb is None else {method_shrinkage(kwargs) for kwargs in methods.values()}
    spaces = whitened_spaces(source_emb, source_labels, target_emb, shrinkages)  # once, not per fit
    accuracies = {name: [] for name in list(methods) + ["ceiling"]}
    episodes = sample_episodes(target_labels, n_way, k_shot, n_query, n_episodes, seed)
    scored = {name: [support_centered_accuracy(vectors, target_labels, *episode) for episode in episodes]
              for name, vectors in (baselines or {}).items()}
    scored.update({name: list(scorer(episodes)) for name, scorer in (scorers or {}).items()})
    wrong = {name: len(values) for name, values in scored.items() if len(values) != len(episodes)}
    if wrong:
        raise ValueError(f"a scorer must give one accuracy per episode ({len(episodes)}), got {wrong}")
    if source_emb is not None:
        methods = {name: resolve_auto(kwargs, source_emb, source_labels, target_emb[episodes[0][0]],
                                      target_labels[episodes[0][0]], class_mapping)
                   for name, kwargs in methods.items()}
    for support, query in episodes:
        y = target_labels[query]
        for name, kwargs in methods.items():
            # Fitting in the whitened space is fitting with whiten (tests/test_transfer.py).
            source, target = spaces.get(method_shrinkage(kwargs), spaces[None])
            pool = target[query] if kwargs.get("transductive") else None
            whiten = "auto" if kwargs.get("whiten", WHITEN_DEFAULT) == "auto" and kwargs.get("mode") != "none" else None
            model = fit_transfer(source, source_labels, target[support], target_labels[support],
                                 class_mapping=class_mapping, unlabeled=pool, **{**kwargs, "whiten": whiten})
            accuracies[name].append(np.mean(model.predict(target[query]) == y))
        x = target_emb[query]
        episode_classes = np.isin(target_labels, np.unique(y))
        ceiling = NearestMeanClassifier().fit(target_emb[episode_classes], target_labels[episode_classes])
        accuracies["ceiling"].append(np.mean(ceiling.predict(x) == y))
    baseline, ceiling = np.array(accuracies["none"]), accuracies.pop("ceiling")
    results = {}
    for name, values in {**accuracies, **scored, "ceiling": ceiling}.items():
        mean, ci = mean_ci(values)
        delta, delta_ci = mean_ci(np.array(values) - baseline)
        results[name] = {"mean": mean, "ci95": ci, "delta_vs_none": delta, "delta_ci95": delta_ci,
                         "n_episodes": len(values)}
    return results
