"""Calibration of a classifier's answers: a softmax temperature and "unknown" thresholds on acceptance
scores, fitted on held-out labelled embeddings of the classifier's classes (used by the Predictor).

With s(x) the classifier's class scores (-distance to each prototype):

* temperature T = argmin_T -mean_i log softmax(s(x_i) / T)[y_i] (the NLL; scipy's bounded search on
  log T); calibrated probabilities are softmax(s(x) / T);
* acceptance scores, each larger for embeddings less like the calibration ones: ``distance``, the
  distance to the nearest prototype in the classifier's own space; ``probability``, 1 - max_c
  softmax(s(x) / T)_c; ``neighbours``, the cosine distance to the k-th nearest gallery embedding
  (k = ``neighbours``, at most the gallery size). A score option joins one or more names with "+";
  the default is "neighbours+probability" with a gallery, else "distance+probability";
* thresholds t_j: for each score j the m-th smallest of its calibration values, one m for all
  scores: the smallest m that accepts (every score <= its threshold) at least ``accept_rate`` of the
  calibration embeddings; or, with ``target_precision``, the largest m whose accepted calibration
  embeddings are right at least that often. An embedding with any score above its threshold is unknown.

A saved calibration (predictor.json, format version 3) is a Calibration's fields; version 2 held one
distance ``threshold`` and loads as the "distance" score.
"""
from typing import NamedTuple, Optional

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

TEMPERATURE_BOUNDS = (1e-4, 1e4)
SCORES = ("distance", "probability", "neighbours")
NEIGHBOURS = 2


class Calibration(NamedTuple):
    """Fitted by fit_calibration: softmax ``temperature``; ``thresholds`` {score name: threshold}
    (module docstring); ``accept_rate``, the share of calibration embeddings asked for, or with
    ``target_precision`` the share accepted there; ``neighbours``, the k of the neighbours score."""
    temperature: float
    thresholds: dict
    accept_rate: float
    target_precision: Optional[float] = None
    neighbours: int = NEIGHBOURS


def score_names(score, accept_rate, target_precision, neighbours, has_gallery):
    """The score names of the ``score`` option (None: the default for ``has_gallery``), after checking
    every calibration option; ValueError names the bad one."""
    if not 0.0 < accept_rate <= 1.0:
        raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate!r}")
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be None or in (0, 1], got {target_precision!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 1:
        raise ValueError(f"neighbours must be an int >= 1, got {neighbours!r}")
    if score is None:
        score = "neighbours+probability" if has_gallery else "distance+probability"
    names = str(score).split("+")
    if not names or set(names) - set(SCORES) or len(set(names)) != len(names):
        raise ValueError(f"score must be one or more of {', '.join(SCORES)} joined by '+', got {score!r}")
    if "neighbours" in names and not has_gallery:
        raise ValueError("the neighbours score needs a gallery: call add_gallery(images, labels) first")
    return names


def calibrated_proba(classifier, embeddings, temperature):
    """(N, n_classes) softmax(classifier.class_scores(embeddings) / temperature)."""
    return softmax(classifier.class_scores(embeddings) / temperature, axis=1)


def acceptance_scores(classifier, embeddings, names, temperature, index=None, neighbours=NEIGHBOURS):
    """(N, len(names)) acceptance scores (module docstring), one column per score name, larger = less
    like the calibration embeddings. ``index``: the gallery's GalleryIndex (triplet_keras.serving.gallery),
    needed by the neighbours score."""
    measures = {
        "distance": lambda: classifier.prototype_distances(embeddings).min(axis=1),
        "probability": lambda: 1 - calibrated_proba(classifier, embeddings, temperature).max(axis=1),
        "neighbours": lambda: index.search(embeddings, min(neighbours, index.size))[0][:, -1]}
    return np.stack([measures[name]() for name in names], axis=1)


def fit_temperature(class_scores, labels):
    """argmin_T of the NLL of softmax(class_scores / T) at ``labels`` (indices), T in TEMPERATURE_BOUNDS."""
    rows = np.arange(len(labels))

    def nll(log_temperature):
        return -np.mean(log_softmax(class_scores / np.exp(log_temperature), axis=1)[rows, labels])

    return float(np.exp(minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded").x))


def fit_calibration(class_scores, labels, acceptance, names, accept_rate=0.95, target_precision=None,
                    neighbours=NEIGHBOURS):
    """The Calibration of ``class_scores`` (n, n_classes) with true class indices ``labels`` (n,);
    ``acceptance(temperature)`` gives the (n, len(names)) acceptance scores of the same embeddings."""
    temperature = fit_temperature(class_scores, labels)
    correct = None if target_precision is None else np.argmax(class_scores, axis=1) == labels
    thresholds, share = acceptance_thresholds(acceptance(temperature), accept_rate, correct, target_precision)
    return Calibration(temperature, dict(zip(names, map(float, thresholds))),
                       float(accept_rate if target_precision is None else share),
                       None if target_precision is None else float(target_precision), int(neighbours))


def acceptance_thresholds(scores, accept_rate=0.95, correct=None, target_precision=None):
    """Thresholds (j,) on calibration acceptance scores (n, j), larger = stranger, and the share of rows
    they accept (every score <= its threshold): each column's m-th smallest value, one m for all; the
    smallest m accepting at least ``accept_rate`` of the rows, or with ``target_precision`` the largest m
    whose accepted rows have a mean of ``correct`` (n,) bools at least that."""
    ordered = np.sort(scores, axis=0)
    # row i is accepted at m exactly when each of its scores has fewer than m values below it
    first = 1 + np.max([np.searchsorted(column, values) for column, values in zip(ordered.T, scores.T)], axis=0)
    if target_precision is None:
        m = np.sort(first)[int(np.ceil(accept_rate * len(first) - 1e-9)) - 1]
    else:
        order = np.argsort(first, kind="stable")
        ranks = first[order]
        precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
        ends = np.r_[ranks[1:] != ranks[:-1], True]  # where a group of equal ranks ends: a threshold's accepted set
        reached = np.flatnonzero(ends & (precision >= target_precision))
        if not len(reached):
            raise ValueError(f"no threshold reaches precision {target_precision} on the calibration images "
                             f"(their accuracy is {np.mean(correct):.3f}): lower target_precision")
        m = ranks[reached[-1]]
    return ordered[m - 1], float(np.mean(first <= m))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def saved_calibration_problems(calibration, version):
    """What is wrong with a predictor.json 'calibration' entry: null, or a Calibration's fields (version 3)
    or temperature, threshold and accept_rate (version 2)."""
    if calibration is None:
        return []
    fields = ("temperature", "threshold", "accept_rate") if version == 2 else Calibration._fields
    if not isinstance(calibration, dict) or set(calibration) != set(fields):
        return [f"'calibration' must be null or an object with {', '.join(fields)}"]
    if version == 2:
        thresholds, target_precision, neighbours = {"distance": calibration["threshold"]}, None, NEIGHBOURS
    else:
        thresholds, target_precision, neighbours = (calibration[key] for key in ("thresholds", "target_precision",
                                                                               "neighbours"))
    if not isinstance(thresholds, dict) or not thresholds or set(thresholds) - set(SCORES):
        return [f"'calibration' thresholds must name one or more of {', '.join(SCORES)}"]
    values = [calibration["temperature"], calibration["accept_rate"], *thresholds.values()]
    if not all(map(_is_number, values)) or not (target_precision is None or _is_number(target_precision)):
        return ["'calibration' values must be finite numbers"]
    if calibration["temperature"] <= 0 or min(thresholds.values()) < 0 or not 0 < calibration["accept_rate"] <= 1 \
            or not (target_precision is None or 0 < target_precision <= 1):
        return ["'calibration' needs temperature > 0, thresholds >= 0, accept_rate and target_precision in (0, 1]"]
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        return ["'calibration' neighbours must be an int >= 1"]
    return []


def saved_calibration(calibration, version):
    """The Calibration of a predictor.json 'calibration' entry that saved_calibration_problems accepts
    (None for null)."""
    if calibration is None:
        return None
    if version == 2:
        calibration = {"temperature": calibration["temperature"], "accept_rate": calibration["accept_rate"],
                       "thresholds": {"distance": calibration["threshold"]}}
    return Calibration(**calibration)
