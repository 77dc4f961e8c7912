import tracemalloc

import numpy as np
import pytest

from triplet_keras.core.mining import mine_triplets
from triplet_keras.pipeline.params import OFFLINE_STRATEGIES

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def _data(n=300, dim=8, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings, rng.integers(0, classes, n)


def _reference_distances(embeddings, squared=True):
    difference = embeddings[:, None, :].astype(np.float64) - embeddings[None, :, :]
    distances = (difference**2).sum(-1)
    return distances if squared else np.sqrt(distances)


def _check_valid(triplets, labels, per_anchor):
    anchors, positives, negatives = triplets.T
    assert triplets.dtype == np.int64 and triplets.shape[1] == 3
    assert (labels[anchors] == labels[positives]).all() and (anchors != positives).all()
    assert (labels[anchors] != labels[negatives]).all()
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts[labels] > 1)
    np.testing.assert_array_equal(anchors, np.repeat(eligible, per_anchor))  # ordered by anchor


def _check_semi_hard(embeddings, labels, margin, squared):
    """mine_triplets' semi-hard choice against a brute-force one: the closest negative strictly
    farther than the positive and within the margin, else the closest negative. Returns
    (number of semi-hard rows, number of rows with a negative exactly as far as the positive)."""
    triplets = mine_triplets(embeddings, labels, "semi_hard", margin, triplets_per_anchor=2, block_size=37,
                             squared=squared, progress=False)
    _check_valid(triplets, labels, 2)
    distances = _reference_distances(embeddings, squared)
    semi_hard_rows = tied_rows = 0
    for anchor, positive, negative in triplets:
        d_ap, row = distances[anchor, positive], distances[anchor]
        others = labels != labels[anchor]
        semi = others & (row > d_ap) & (row < d_ap + margin)
        expected = row[semi].min() if semi.any() else row[others].min()
        semi_hard_rows += semi.any()
        tied_rows += np.any(others & (row == d_ap))
        assert row[negative] == pytest.approx(expected, abs=1e-5)
    return semi_hard_rows, tied_rows


@pytest.mark.parametrize("squared", [True, False])
def test_semi_hard_matches_a_brute_force_reference(squared):
    embeddings, labels = _data()
    semi_hard_rows, _ = _check_semi_hard(embeddings, labels, 0.2 if squared else 0.1, squared)
    assert semi_hard_rows > 2 * len(labels) // 2 * 0.5


@pytest.mark.parametrize("squared", [True, False])
def test_ties_between_negative_and_positive_distances_match_the_reference(squared):
    """Points on a coarse grid (exact float32 distances): many negatives lie exactly as far as the
    positive (d_an == d_ap), which is not farther, so not semi-hard."""
    rng = np.random.default_rng(3)
    embeddings = (rng.integers(0, 4, size=(60, 2)) * 0.25).astype(np.float32)
    labels = rng.integers(0, 4, 60)
    semi_hard_rows, tied_rows = _check_semi_hard(embeddings, labels, 0.1 if squared else 0.3, squared)
    assert tied_rows > 20 and semi_hard_rows > 10


def test_hard_gives_the_k_closest_negatives_in_order():
    embeddings, labels = _data(n=120)
    triplets = mine_triplets(embeddings, labels, "hard", triplets_per_anchor=3, block_size=50, progress=False)
    _check_valid(triplets, labels, 3)
    distances = _reference_distances(embeddings)
    for rows in triplets.reshape(-1, 3, 3):
        anchor = rows[0, 0]
        negatives = np.sort(distances[anchor][labels != labels[anchor]])[:3]
        np.testing.assert_allclose(distances[anchor, rows[:, 2]], negatives, atol=1e-5)


def test_known_semi_hard_choice_in_one_dimension():
    points = np.array([[0.0], [0.3], [0.2], [0.35], [0.4], [1.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 1, 1])
    triplets = mine_triplets(points, labels, "semi_hard", margin=0.2, progress=False)
    # anchor 0: d_ap = 0.09; 0.2 is hard (0.04), 0.35 (0.1225) and 0.4 (0.16) are semi-hard
    assert triplets[0].tolist() == [0, 1, 3]
    # anchor 1 (at 0.3): d_ap = 0.09; 0.35 and 0.4 are closer (hard), 0.2 at 0.01 too, 1.0 is 0.49:
    # nothing is semi-hard, so the closest negative (0.35) is used
    assert triplets[1].tolist() == [1, 0, 3]
    hard = mine_triplets(points, labels, "hard", progress=False)
    assert hard[0].tolist() == [0, 1, 2]


def test_semi_hard_negative_found_past_a_negative_as_far_as_the_positive():
    # anchor 0 at 0; positive at 0.3; negatives at -0.3 (exactly as far as the positive) and 0.4
    points = np.array([[0.0], [0.3], [-0.3], [0.4], [5.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    triplets = mine_triplets(points, labels, "semi_hard", margin=0.2, progress=False)
    assert triplets[0].tolist() == [0, 1, 3]


def test_positives_are_distinct_and_random_negatives_cover_other_classes():
    embeddings, labels = _data(n=200, classes=4)
    triplets = mine_triplets(embeddings, labels, "random", triplets_per_anchor=3, progress=False)
    _check_valid(triplets, labels, 3)
    for rows in triplets.reshape(-1, 3, 3):
        assert len(set(rows[:, 1])) == 3
    for label in range(4):
        assert set(labels[triplets[labels[triplets[:, 0]] == label, 2]]) == set(range(4)) - {label}


def test_deterministic_with_a_seed_and_independent_of_block_size():
    embeddings, labels = _data()
    for strategy in OFFLINE_STRATEGIES:
        first = mine_triplets(embeddings, labels, strategy, seed=5, block_size=1024, progress=False)
        np.testing.assert_array_equal(first, mine_triplets(embeddings, labels, strategy, seed=5, block_size=7,
                                                           progress=False))
        if strategy != "hard":
            assert not np.array_equal(first, mine_triplets(embeddings, labels, strategy, seed=6, progress=False))


def test_singleton_classes_are_skipped_and_small_classes_repeat_positives():
    embeddings, _ = _data(n=6)
    labels = np.array([0, 0, 1, 2, 2, 2])
    triplets = mine_triplets(embeddings, labels, "semi_hard", triplets_per_anchor=3, progress=False)
    _check_valid(triplets, labels, 3)
    assert 2 not in triplets[:, 0] and set(triplets[:2 * 3, 1]) == {0, 1}


def test_memory_stays_at_block_size_times_n():
    embeddings, labels = _data(n=4000, dim=16, classes=10)
    tracemalloc.start()
    mine_triplets(embeddings, labels, "semi_hard", block_size=64, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8e6 < 4000 * 4000 * 4  # the N x N float32 matrix alone would be 64 MB


def _clustered(n, classes, groups, seed=0, dim=16):
    """Unit vectors: classes scattered around a few group centres, points around their class centre."""
    rng = np.random.default_rng(seed)
    group = rng.normal(size=(groups, dim))
    centre = group[rng.integers(0, groups, classes)] + 0.6 * rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    embeddings = (centre[labels] + 0.25 * rng.normal(size=(n, dim))).astype(np.float32)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), labels


def _semi_hard_share(embeddings, triplets, margin=0.2):
    anchors, positives, negatives = (embeddings[triplets[:, column]].astype(np.float64) for column in range(3))
    d_ap, d_an = (np.sum((anchors - other) ** 2, axis=1) for other in (positives, negatives))
    return np.mean((d_ap < d_an) & (d_an < d_ap + margin))


@pytest.mark.parametrize("strategy", ["semi_hard", "hard"])
def test_candidate_search_covering_every_point_gives_the_exact_triplets(strategy):
    """Above max_exact, a budget that holds every class makes each block's candidates all points:
    the grouped blocks and the candidate columns must then reproduce the exact search."""
    embeddings, labels = _clustered(400, 40, 4)
    exact = mine_triplets(embeddings, labels, strategy, triplets_per_anchor=2, seed=1, progress=False)
    covering = mine_triplets(embeddings, labels, strategy, triplets_per_anchor=2, seed=1, progress=False,
                             max_exact=0, candidates=10_000, block_size=30)
    np.testing.assert_array_equal(covering, exact)


def test_candidate_search_keeps_the_semi_hard_share_with_a_tenth_of_the_points():
    embeddings, labels = _clustered(3000, 60, 6)
    exact = mine_triplets(embeddings, labels, "semi_hard", progress=False)
    first, second = (mine_triplets(embeddings, labels, "semi_hard", progress=False, max_exact=0, candidates=300,
                                   block_size=100, seed=seed) for seed in (0, 0))
    np.testing.assert_array_equal(first, second)  # deterministic with a seed
    _check_valid(first, labels, 1)
    np.testing.assert_array_equal(first[:, :2], exact[:, :2])  # the same anchors and positives
    assert not np.array_equal(first, exact)
    share, exact_share = _semi_hard_share(embeddings, first), _semi_hard_share(embeddings, exact)
    random_share = _semi_hard_share(embeddings, mine_triplets(embeddings, labels, "random", progress=False))
    assert 0.5 < exact_share < 0.9 and random_share < 0.05  # semi-hard negatives are few and need finding
    assert abs(share - exact_share) < 0.1 * exact_share


@pytest.mark.parametrize("classes", [100, 3])  # blocks of several classes of 3; blocks of one class
def test_candidate_search_with_one_candidate_still_gives_a_negative_to_every_anchor(classes):
    embeddings, labels = _clustered(300, classes, min(classes, 10))
    for strategy in ("semi_hard", "hard"):
        triplets = mine_triplets(embeddings, labels, strategy, triplets_per_anchor=2, progress=False, max_exact=0,
                                 candidates=1, block_size=64)
        _check_valid(triplets, labels, 2)


@pytest.mark.parametrize("classes", [100, 3])  # a few large classes: their members are not all candidates
def test_candidate_search_memory_stays_at_block_size_times_candidates(classes):
    embeddings, labels = _clustered(20000, classes, min(classes, 10))
    tracemalloc.start()
    triplets = mine_triplets(embeddings, labels, "semi_hard", block_size=256, progress=False, max_exact=0,
                             candidates=512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _check_valid(triplets, labels, 1)
    assert peak < 12e6 < 256 * 20000 * 4 * 2  # the two exact block buffers alone would be 41 MB


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": np.zeros(10)}, "two classes"),
    ({"labels": np.arange(10)}, "two members"),
    ({"strategy": "easy"}, "strategy"),
    ({"embeddings": np.full((10, 2), np.nan)}, "NaN"),
    ({"labels": np.zeros(3)}, "N labels"),
    ({"candidates": 0}, "candidates"),
])
def test_bad_input(kwargs, message):
    arguments = {"embeddings": np.ones((10, 2)), "labels": np.arange(10) % 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        mine_triplets(progress=False, **arguments)
