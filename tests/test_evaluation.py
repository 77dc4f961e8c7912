"""Few-shot episodes and their summary."""
import numpy as np
import pytest

from triplet_keras.evaluation import evaluate_few_shot, mean_ci, sample_episodes


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
    assert set(results) == {"none", "translate", "center", "calibrate", "auto", "ceiling",
                            "none+transductive", "translate+transductive", "center+transductive",
                            "calibrate+transductive", "auto+transductive"}
    assert results["none"]["delta_vs_none"] == 0.0 and results["none"]["n_episodes"] == 15
    assert results["ceiling"]["mean"] > results["none"]["mean"]
    assert results["calibrate"]["delta_vs_none"] > results["calibrate"]["delta_ci95"] > 0
    again = evaluate_few_shot(xs, ys, xt, yt, n_way=5, k_shot=1, methods={"calibrate": {"mode": "calibrate"}},
                              n_episodes=15)
    assert again["calibrate"] == results["calibrate"] and set(again) == {"none", "calibrate", "ceiling"}
