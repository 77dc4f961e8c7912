"""Few-shot evaluation: N-way K-shot episodes, every method on the same episodes, mean and 95% CI.

An episode draws n_way target classes, then K support and n_query query examples of each (all the
rest of each class when n_query is None). A method predicts an episode's queries from its support:
``method(support rows, query rows) -> predicted labels``, rows indexing the target. EstimatorMethod
makes one from any scikit-learn estimator (cloned and fitted on each episode's support), which may see
the episode's queries as its unlabelled pool (transductive). Reported per method: the mean share right
over episodes with the 95% interval half-width 1.96 * std / sqrt(n_episodes), and the same for the
paired difference to the ``reference`` method. The ceiling is the nearest class mean over every target
example of the episode's classes, scored on the same queries.

The baselines (``pixels``, ``initial_encoder``: raw pixels and the network before fine-tuning) use one
rule, support_centered: centre the support and the queries on the support mean, L2-normalise, and take
the nearest class mean (cosine).
"""
import numpy as np
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from triplet_keras.core.per_class import class_counts
from .prototypes import NearestMeanClassifier

BASELINES = ("pixels", "initial_encoder")


def sample_episodes(labels, n_way, k_shot, n_query=15, n_episodes=200, seed=0):
    """List of (support indices, query indices) into labels; the same seed gives the same episodes."""
    labels = np.asarray(labels)
    classes, counts = class_counts(labels)
    if n_way > len(classes):
        raise ValueError(f"n_way={n_way} but the target has only {len(classes)} classes")
    smallest = int(counts.min())
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


class EstimatorMethod:
    """An episode method from an unfitted ``estimator``: a clone is fitted on ``vectors[support]`` with
    ``labels[support]`` and ``fit_params`` (such as the source), and with ``transductive`` on the
    queries as ``unlabeled``, then predicts ``vectors[query]``. ``vectors`` may be uint8 images: only the
    episode's rows are flattened and converted."""

    def __init__(self, estimator, vectors, labels, fit_params=None, transductive=False):
        self.estimator, self.vectors, self.labels = estimator, vectors, np.asarray(labels)
        self.fit_params, self.transductive = dict(fit_params or {}), transductive

    def _rows(self, rows):
        return np.asarray(self.vectors[rows], np.float64).reshape(len(rows), -1)

    def __call__(self, support, query):
        params = {**self.fit_params, "unlabeled": self._rows(query)} if self.transductive else self.fit_params
        model = clone(self.estimator).fit(self._rows(support), self.labels[support], **params)
        return model.predict(self._rows(query))


def support_centered():
    """The baselines' rule as an estimator: centre on the mean of the rows it is fitted on (the
    support), L2-normalise, nearest class mean by cosine."""
    return make_pipeline(StandardScaler(with_std=False), Normalizer(), NearestMeanClassifier())


def evaluate_few_shot(methods, labels, n_way, k_shot, n_episodes=200, n_query=15, seed=0, reference="none",
                      ceiling=None):
    """{name: {"mean", "ci95", "n_episodes", "delta", "delta_ci95"}} for each of ``methods`` ({name:
    method(support rows, query rows) -> predicted labels}) on the same episodes of the target
    ``labels``; "delta" (and "delta_ci95") is the paired difference to the ``reference`` method, when
    there is one.
    ``ceiling``: the target vectors, to add the "ceiling" entry."""
    labels = np.asarray(labels)
    episodes = sample_episodes(labels, n_way, k_shot, n_query, n_episodes, seed)
    accuracies = {name: [float(np.mean(np.asarray(method(support, query)) == labels[query]))
                         for support, query in episodes] for name, method in methods.items()}
    if ceiling is not None:
        accuracies["ceiling"] = []
        for _, query in episodes:
            classes = np.isin(labels, np.unique(labels[query]))
            model = NearestMeanClassifier().fit(ceiling[classes], labels[classes])
            accuracies["ceiling"].append(float(np.mean(model.predict(ceiling[query]) == labels[query])))
    results = {}
    for name, values in accuracies.items():
        mean, ci = mean_ci(values)
        results[name] = {"mean": mean, "ci95": ci, "n_episodes": len(values)}
        if reference in accuracies:
            delta, delta_ci = mean_ci(np.array(values) - np.array(accuracies[reference]))
            results[name].update(delta=delta, delta_ci95=delta_ci)
    return results
