"""Few-shot episodes and their summary."""
import numpy as np
import pytest

from triplet_keras.transfer import NearestMeanClassifier, TransferClassifier
from triplet_keras.transfer.evaluation import (EstimatorMethod, evaluate_few_shot, mean_ci, sample_episodes,
                                               support_centered)

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def test_episodes_are_reproducible_disjoint_and_balanced():
    labels = np.repeat(np.arange(8), 12)
    episodes = sample_episodes(labels, n_way=5, k_shot=2, n_query=3, n_episodes=10, seed=4)
    again = sample_episodes(labels, n_way=5, k_shot=2, n_query=3, n_episodes=10, seed=4)
    for (support, query), (support2, query2) in zip(episodes, again):
        np.testing.assert_array_equal(support, support2)
        np.testing.assert_array_equal(query, query2)
        assert not set(support) & set(query)
        assert sorted(np.unique(labels[support], return_counts=True)[1]) == [2] * 5
        assert set(labels[query]) == set(labels[support]) and len(query) == 15
    everything = sample_episodes(labels, n_way=3, k_shot=1, n_query=None, n_episodes=1)[0][1]
    assert len(everything) == 3 * 11
    with pytest.raises(ValueError, match="n_way"):
        sample_episodes(labels, n_way=9, k_shot=1)
    with pytest.raises(ValueError, match="fewer"):
        sample_episodes(labels, n_way=2, k_shot=10, n_query=5)


def test_mean_ci():
    mean, ci = mean_ci([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65)
    assert ci == pytest.approx(1.96 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2)
    assert mean_ci([0.3]) == (0.3, 0.0)


def shifted_clusters(seed, dim=12, shift=1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, dim))
    ys, yt = np.repeat(np.arange(6), 40), np.repeat(np.arange(6), 30)
    xs = centers[ys] + 0.8 * rng.normal(size=(len(ys), dim))
    xt = centers[yt] + shift * rng.normal(size=dim) + 0.8 * rng.normal(size=(len(yt), dim))
    return xs, ys, xt, yt


def test_evaluate_few_shot_on_shifted_clusters():
    xs, ys, xt, yt = shifted_clusters(2)
    source = {"source_emb": xs, "source_labels": ys}
    methods = {mode: EstimatorMethod(TransferClassifier(mode=mode), xt, yt, source)
               for mode in ("none", "calibrate", "center")}
    methods["center+pool"] = EstimatorMethod(TransferClassifier(mode="center", transductive=True), xt, yt, source,
                                             transductive=True)
    results = evaluate_few_shot(methods, yt, n_way=5, k_shot=1, n_episodes=15, ceiling=xt)
    assert set(results) == {"none", "calibrate", "center", "center+pool", "ceiling"}
    assert results["none"]["delta"] == 0.0 and results["none"]["n_episodes"] == 15
    assert results["ceiling"]["mean"] > results["none"]["mean"]
    assert results["calibrate"]["delta"] > results["calibrate"]["delta_ci95"] > 0
    again = evaluate_few_shot({"calibrate": methods["calibrate"]}, yt, n_way=5, k_shot=1, n_episodes=15)
    assert again["calibrate"]["mean"] == results["calibrate"]["mean"] and "delta" not in again["calibrate"]


def test_an_estimator_method_is_fitting_each_episode_on_its_own():
    """Each episode: a fresh clone fitted on the support (with the queries as the pool when transductive)."""
    xs, ys, xt, yt = shifted_clusters(3, dim=10, shift=1.0)
    source = {"source_emb": xs, "source_labels": ys}
    for transductive in (False, True):
        estimator = TransferClassifier(mode="center", whiten=0.3, transductive=transductive)
        results = evaluate_few_shot({"m": EstimatorMethod(estimator, xt, yt, source, transductive)}, yt, 4, 2,
                                    n_episodes=6, n_query=5, seed=1)
        alone = []
        for s, q in sample_episodes(yt, 4, 2, 5, 6, seed=1):
            model = TransferClassifier(mode="center", whiten=0.3, transductive=transductive).fit(
                xt[s], yt[s], unlabeled=xt[q] if transductive else None, **source)
            alone.append(np.mean(model.predict(xt[q]) == yt[q]))
        assert results["m"]["mean"] == pytest.approx(np.mean(alone))


def test_support_centered_matches_a_loop():
    """The baselines' rule: centre on the support mean, L2-normalise, nearest class mean by cosine."""
    rng = np.random.default_rng(5)
    vectors = rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)  # pixels: any shape, uint8
    labels = np.repeat(np.arange(3), 10)
    support, query = np.array([0, 1, 10, 11, 20, 21]), np.setdiff1d(np.arange(30), [0, 1, 10, 11, 20, 21])
    flat = vectors.reshape(30, -1).astype(np.float64)
    center = flat[support].mean(axis=0)
    unit = lambda x: (x - center) / np.linalg.norm(x - center)  # noqa: E731
    means = [np.mean([unit(flat[i]) for i in support if labels[i] == c], axis=0) for c in range(3)]
    expected = [int(np.argmax([unit(flat[i]) @ m / np.linalg.norm(m) for m in means])) for i in query]
    np.testing.assert_array_equal(EstimatorMethod(support_centered(), vectors, labels)(support, query), expected)


def test_a_plain_function_sees_the_same_episodes():
    rng = np.random.default_rng(7)
    yt = np.repeat(np.arange(4), 12)
    xt = rng.normal(size=(48, 6)) + yt[:, None]
    seen = []

    def support_means(support, query):  # mode none recomputed: the nearest support class mean (cosine)
        seen.append((support, query))
        return NearestMeanClassifier().fit(xt[support], yt[support]).predict(xt[query])

    methods = {"none": EstimatorMethod(TransferClassifier(mode="none"), xt, yt), "again": support_means}
    results = evaluate_few_shot(methods, yt, 3, 2, n_episodes=6, n_query=4, seed=3)
    assert results["again"]["mean"] == pytest.approx(results["none"]["mean"]) and results["again"]["delta"] == 0
    for (support, query), (s, q) in zip(seen, sample_episodes(yt, 3, 2, 4, 6, seed=3)):
        np.testing.assert_array_equal(support, s)
        np.testing.assert_array_equal(query, q)
