"""Few-shot episodes and their summary."""
import numpy as np
import pytest

from triplet_keras.evaluation import evaluate_few_shot, mean_ci, sample_episodes, support_centered_accuracy
from triplet_keras.transfer import NearestMeanClassifier, fit_transfer

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


def test_evaluate_few_shot_on_shifted_clusters():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(6, 12))
    ys, yt = np.repeat(np.arange(6), 40), np.repeat(np.arange(6), 30)
    xs = centers[ys] + 0.8 * rng.normal(size=(len(ys), 12))
    xt = centers[yt] + 1.5 * rng.normal(size=12) + 0.8 * rng.normal(size=(len(yt), 12))
    results = evaluate_few_shot(xs, ys, xt, yt, n_way=5, k_shot=1, transductive=True, n_episodes=15)
    assert set(results) == {"none", "translate", "center", "calibrate", "ceiling",
                            "none+transductive", "translate+transductive", "center+transductive",
                            "calibrate+transductive"}
    assert results["none"]["delta_vs_none"] == 0.0 and results["none"]["n_episodes"] == 15
    assert results["ceiling"]["mean"] > results["none"]["mean"]
    assert results["calibrate"]["delta_vs_none"] > results["calibrate"]["delta_ci95"] > 0
    again = evaluate_few_shot(xs, ys, xt, yt, n_way=5, k_shot=1, methods={"calibrate": {"mode": "calibrate"}},
                              n_episodes=15)
    assert again["calibrate"] == results["calibrate"] and set(again) == {"none", "calibrate", "ceiling"}


def test_evaluation_matches_fitting_each_episode_on_its_own():
    """The source whitening computed once per shrinkage gives the same accuracies as fit_transfer alone."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(6, 10))
    ys, yt = np.repeat(np.arange(6), 30), np.repeat(np.arange(6), 20)
    xs = centers[ys] + rng.normal(size=(len(ys), 10)) * np.linspace(0.2, 2.0, 10)
    xt = centers[yt] + 1.0 + rng.normal(size=(len(yt), 10)) * np.linspace(0.2, 2.0, 10)
    methods = {"none": {"mode": "none"}, "center": {"mode": "center"},
               "center 0.3": {"mode": "center", "whiten": 0.3}, "center 0.1": {"mode": "center", "whiten": 0.1},
               "raw": {"mode": "calibrate", "whiten": None}}
    results = evaluate_few_shot(xs, ys, xt, yt, 4, 2, methods, n_episodes=6, n_query=5, seed=1)
    for name, kwargs in methods.items():
        alone = [np.mean(fit_transfer(xs, ys, xt[s], yt[s], **kwargs).predict(xt[q]) == yt[q])
                 for s, q in sample_episodes(yt, 4, 2, 5, 6, seed=1)]
        assert results[name]["mean"] == pytest.approx(np.mean(alone))


def test_support_centered_accuracy_matches_a_loop():
    """The baselines' rule: centre on the support mean, L2-normalise, nearest class mean by cosine."""
    rng = np.random.default_rng(5)
    vectors = rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)  # pixels: any shape, uint8
    labels = np.repeat(np.arange(3), 10)
    support, query = np.array([0, 1, 10, 11, 20, 21]), np.setdiff1d(np.arange(30), [0, 1, 10, 11, 20, 21])
    flat = vectors.reshape(30, -1).astype(np.float64)
    center = flat[support].mean(axis=0)
    unit = lambda x: (x - center) / np.linalg.norm(x - center)  # noqa: E731
    means = [np.mean([unit(flat[i]) for i in support if labels[i] == c], axis=0) for c in range(3)]
    right = 0
    for i in query:
        cosines = [unit(flat[i]) @ m / np.linalg.norm(m) for m in means]
        right += int(np.argmax(cosines) == labels[i])
    assert support_centered_accuracy(vectors, labels, support, query) == pytest.approx(right / len(query))


def test_baselines_run_on_the_same_episodes():
    rng = np.random.default_rng(6)
    ys, yt = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 12)
    xs, xt = rng.normal(size=(80, 6)) + ys[:, None], rng.normal(size=(48, 6)) + yt[:, None]
    pixels = rng.normal(size=(48, 9)) + 3 * yt[:, None]
    results = evaluate_few_shot(xs, ys, xt, yt, 3, 2, {"none": {"mode": "none"}}, n_episodes=7, n_query=4, seed=2,
                                baselines={"pixels": pixels, "initial_encoder": xt})
    episodes = sample_episodes(yt, 3, 2, 4, 7, seed=2)
    expected = np.mean([support_centered_accuracy(pixels, yt, s, q) for s, q in episodes])
    assert results["pixels"]["mean"] == pytest.approx(expected) and results["pixels"]["n_episodes"] == 7
    assert set(results) == {"none", "pixels", "initial_encoder", "ceiling"}


def test_a_scorer_sees_the_methods_episodes():
    rng = np.random.default_rng(7)
    ys, yt = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 12)
    xs, xt = rng.normal(size=(80, 6)) + ys[:, None], rng.normal(size=(48, 6)) + yt[:, None]

    def support_means(episodes):  # mode none recomputed: the nearest support class mean (cosine)
        return [NearestMeanClassifier().fit(xt[s], yt[s]).score(xt[q], yt[q]) for s, q in episodes]

    results = evaluate_few_shot(xs, ys, xt, yt, 3, 2, {"none": {"mode": "none"}}, n_episodes=6, n_query=4, seed=3,
                                scorers={"again": support_means})
    assert list(results) == ["none", "again", "ceiling"]
    assert results["again"]["mean"] == pytest.approx(results["none"]["mean"])
    assert results["again"]["delta_vs_none"] == pytest.approx(0.0) and results["again"]["n_episodes"] == 6
    with pytest.raises(ValueError, match=r"one accuracy per episode \(6\), got \{'short': 5\}"):
        evaluate_few_shot(xs, ys, xt, yt, 3, 2, {"none": {"mode": "none"}}, n_episodes=6, n_query=4, seed=3,
                          scorers={"short": lambda episodes: support_means(episodes)[:5]})
