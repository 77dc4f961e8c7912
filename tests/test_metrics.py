"""Metrics against hand-computed cases and plain numpy loops."""
import numpy as np
import pytest

from triplet_keras.transfer.metrics import (accuracy, clustering_scores, expected_calibration_error, map_at_r,
                                            precision_at_1, r_precision, recall_at_k, retrieval_scores,
                                            triplet_accuracy)

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def loop_reference(queries, query_labels, references, reference_labels, leave_one_out, ks):
    """Musgrave et al.'s definitions, one query at a time."""
    rows = []
    for q in range(len(queries)):
        d = np.sqrt(((references - queries[q]) ** 2).sum(axis=1))
        order = [i for i in np.argsort(d, kind="stable") if not (leave_one_out and i == q)]
        rel = [reference_labels[i] == query_labels[q] for i in order]
        r = sum(rel)
        if r == 0:
            continue
        hits, average = 0, 0.0
        for i in range(r):
            if rel[i]:
                hits += 1
                average += hits / (i + 1)
        rows.append([rel[0], sum(rel[:r]) / r, average / r] + [any(rel[:k]) for k in ks])
    return np.mean(rows, axis=0)


def test_hand_computed_retrieval():
    # x = 0(a) 1(b) 2(a) 4(a). Rankings: 0 -> b a a; 2 -> b, then a a (tie); 4 -> a b a; b has R = 0.
    x, y = np.array([[0.0], [1.0], [2.0], [4.0]]), np.array(["a", "b", "a", "a"])
    scores = retrieval_scores(x, y, ks=(1, 2), metric="euclidean")
    assert scores == pytest.approx({"precision_at_1": 1 / 3, "r_precision": 0.5, "map_at_r": (0.25 + 0.25 + 0.5) / 3,
                                    "recall_at_1": 1 / 3, "recall_at_2": 1.0})
    assert precision_at_1(x, y, metric="euclidean") == pytest.approx(1 / 3)
    assert r_precision(x, y, metric="euclidean") == pytest.approx(0.5)
    assert map_at_r(x, y, metric="euclidean") == pytest.approx(1 / 3)
    assert recall_at_k(x, y, 2, metric="euclidean") == 1.0


def test_retrieval_matches_loops_leave_one_out_and_separate_queries():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.integers(0, 4, 60)
    scores = retrieval_scores(x, y, ks=(1, 3, 8), metric="euclidean", batch_size=7)
    np.testing.assert_allclose(list(scores.values()), loop_reference(x, y, x, y, True, (1, 3, 8)))
    queries, query_labels = rng.normal(size=(20, 4)), rng.integers(0, 5, 20)
    scores = retrieval_scores(x, y, ks=(2,), metric="euclidean", queries=queries, query_labels=query_labels)
    np.testing.assert_allclose(list(scores.values()), loop_reference(queries, query_labels, x, y, False, (2,)))


def test_retrieval_is_perfect_on_separated_clusters_and_refuses_singletons():
    x = np.repeat(np.eye(3), 5, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(15, 3))
    y = np.repeat([0, 1, 2], 5)
    assert set(retrieval_scores(x, y).values()) == {1.0}
    with pytest.raises(ValueError, match="relevant"):
        retrieval_scores(x[:3], [0, 1, 2])


def test_clustering_scores():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    separated = np.eye(3)[y] * 10 + rng.normal(size=(90, 3))
    assert clustering_scores(separated, y) == pytest.approx({"nmi": 1.0, "ami": 1.0})
    assert abs(clustering_scores(rng.normal(size=(90, 3)), y)["ami"]) < 0.1


def test_accuracy_and_triplet_accuracy():
    assert accuracy(["a", "b", "c", "a"], ["a", "b", "a", "a"]) == 0.75
    anchor = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    positive = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    negative = np.array([[0.0, 2.0], [0.0, 1.0], [0.0, 2.0]])
    assert triplet_accuracy(anchor, positive, negative) == pytest.approx(1 / 3)  # ties do not count
    unit = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 5.0]])
    assert triplet_accuracy(unit[[0]], unit[[1]], unit[[2]], metric="cosine") == 1.0


def ece_loops(probabilities, labels, n_bins):
    """ECE with a Python loop over equal-width bins (b/M, (b+1)/M], a confidence of 0 in the first."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        inside = [i for i in range(len(labels)) if low < confidence[i] <= high or (b == 0 and confidence[i] == 0)]
        if inside:
            total += len(inside) / len(labels) * abs(np.mean(correct[inside]) - np.mean(confidence[inside]))
    return total


def test_expected_calibration_error_matches_loops_and_known_values():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5) * 0.5, 400)
    labels = rng.integers(0, 5, 400)
    for n_bins in (1, 10, 15):
        assert expected_calibration_error(probabilities, labels, n_bins) == pytest.approx(
            ece_loops(probabilities, labels, n_bins))
    # one bin: |accuracy - mean confidence|; confident and right: 0; confident and wrong: 1
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert expected_calibration_error(p, [0, 1, 1], n_bins=1) == pytest.approx(abs(2 / 3 - (0.9 + 0.6 + 0.8) / 3))
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0
    assert expected_calibration_error(np.eye(3), [1, 2, 0]) == 1.0
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(p, [0, 1])
