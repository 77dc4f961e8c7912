"""The pieces of triplet_keras.transfer against small numpy references: whitening (dense and low-rank),
domain centring, the source prior, kNN votes, the transductive refinement and old saved states."""
import warnings

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.utils.estimator_checks import check_estimator

from triplet_keras.transfer import (DomainCentering, NearestMeanClassifier, WithinClassWhitening, classifier_from_state,
                                    source_prior, source_whitening)
from triplet_keras.transfer.choice import fit_transfer
from triplet_keras.transfer.prototypes import knn_scores, refine_prototypes
from triplet_keras.transfer.whitening import source_whitenings

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn only: run once, not per backend

DIM = 12


def anisotropic(rng, n_classes, n_per_class, loud=3):
    """Classes apart in the quiet directions; every class scatters strongly along the ``loud`` first
    axes and weakly along the rest (a clear gap in the within-class spectrum)."""
    loud_axes = np.arange(DIM) < loud
    centers = 1.5 * rng.normal(size=(n_classes, DIM)) * ~loud_axes
    labels = np.repeat(np.arange(n_classes), n_per_class)
    scales = np.where(loud_axes, np.linspace(5.0, 3.0, DIM), 0.4)
    return centers[labels] + scales * rng.normal(size=(len(labels), DIM)), labels


def within_class_spectrum(x, y):
    """Center (mean of class means), pooled within-class covariance S_w, its eigenvalues (descending)
    and eigenvectors, the textbook way."""
    means = np.stack([x[y == c].mean(axis=0) for c in np.unique(y)])
    residuals = x - means[np.searchsorted(np.unique(y), y)]
    pooled = residuals.T @ residuals / len(x)
    values, vectors = np.linalg.eigh(pooled)
    return means.mean(axis=0), pooled, values[::-1], vectors[:, ::-1]


def test_dense_whitening_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x, y = anisotropic(rng, 5, 40)
    center, pooled, _, _ = within_class_spectrum(x, y)
    for shrinkage in (0.0, 0.3, 1.0):
        shrunk = (1 - shrinkage) * pooled + shrinkage * np.trace(pooled) / DIM * np.eye(DIM)
        values, vectors = np.linalg.eigh(shrunk)
        reference = (x - center) @ vectors @ np.diag(values ** -0.5) @ vectors.T
        model = WithinClassWhitening(shrinkage).fit(x, y)
        assert model.matrix_.dtype == np.float32 and model.matrix_.shape == (DIM, DIM)
        np.testing.assert_allclose(model.center_, center)
        np.testing.assert_allclose(model.transform(x), reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(source_whitening(x, y, shrinkage).matrix, model.matrix_)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_low_rank_whitening_matches_numpy_reference(shrinkage):
    """W = I / sigma + sum_k (s_k^(-1/2) - 1 / sigma) v_k v_k^T, from the full eigendecomposition."""
    rng = np.random.default_rng(1)
    x, y = anisotropic(rng, 5, 40)
    center, pooled, values, vectors = within_class_spectrum(x, y)
    rank, t = 3, np.trace(pooled) / DIM
    leading = (1 - shrinkage) * values[:rank] + shrinkage * t
    rest = (1 - shrinkage) * values[rank:].mean() + shrinkage * t
    v = vectors[:, :rank]
    w = v @ np.diag(leading ** -0.5) @ v.T + (np.eye(DIM) - v @ v.T) / np.sqrt(rest)
    model = WithinClassWhitening(shrinkage, rank=rank).fit(x, y)
    assert model.components_.shape == (rank, DIM) and model.components_.dtype == np.float32
    np.testing.assert_allclose(model.transform(x), (x - center) @ w, rtol=1e-4, atol=1e-4)
    single = WithinClassWhitening(shrinkage, rank=rank).fit(x.astype(np.float32), y)
    np.testing.assert_allclose(single.transform(x), model.transform(x), rtol=1e-4, atol=1e-4)


def test_low_rank_whitening_is_the_dense_one_when_the_rest_is_isotropic():
    rng = np.random.default_rng(2)
    x, y = anisotropic(rng, 4, 30)
    for rank in (1, 5):  # shrinkage 1: S = t I, nothing left to approximate
        np.testing.assert_allclose(WithinClassWhitening(1.0, rank=rank).fit(x, y).transform(x),
                                   WithinClassWhitening(1.0).fit(x, y).transform(x), rtol=1e-5, atol=1e-6)


def test_low_rank_whitening_helps_nearest_means_like_the_dense_one():
    """New classes under noise shared with the source: whitening learnt on the source with rank 3
    recovers the gain of the dense whitening."""
    rng = np.random.default_rng(3)
    source, (target, labels) = anisotropic(rng, 8, 50), anisotropic(rng, 5, 40)
    support = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(5)])
    query = np.setdiff1d(np.arange(len(labels)), support)
    def accuracy(transform):
        model = NearestMeanClassifier(metric="euclidean").fit(transform(target[support]), labels[support])
        return model.score(transform(target[query]), labels[query])
    plain = accuracy(lambda x: x)
    dense = accuracy(WithinClassWhitening(0.1).fit(*source).transform)
    low_rank = accuracy(WithinClassWhitening(0.1, rank=3).fit(*source).transform)
    assert dense > plain + 0.15 and low_rank > dense - 0.03


def test_whitening_refuses_bad_input():
    x, y = anisotropic(np.random.default_rng(4), 3, 10)
    for params in (dict(shrinkage=1.5), dict(shrinkage=-0.1), dict(rank=0), dict(rank=DIM)):
        with pytest.raises(ValueError, match="shrinkage|rank"):
            WithinClassWhitening(**params).fit(x, y)
    with pytest.raises(ValueError, match="has no d x d matrix"):
        WithinClassWhitening(rank=2).fit(x, y).whitening()
    with pytest.raises(ValueError, match="expecting 12 features"):
        WithinClassWhitening().fit(x, y).transform(x[:, :5])


def test_domain_centering_matches_numpy_reference():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(50, 4)) + 3.0, np.repeat([0, 1], [40, 10])  # unbalanced: the two centers differ
    pooled = DomainCentering().fit(x)
    np.testing.assert_allclose(pooled.center_, x.mean(axis=0))
    moved = x - x.mean(axis=0)
    np.testing.assert_allclose(pooled.transform(x), moved / np.linalg.norm(moved, axis=1, keepdims=True))
    per_class = DomainCentering().fit(x, y)
    np.testing.assert_allclose(per_class.center_, (x[y == 0].mean(axis=0) + x[y == 1].mean(axis=0)) / 2)


def test_source_prior_matches_numpy_reference():
    """Mapped classes: mu_s(map(c)) + delta; a new class: the softmax-weighted n_borrow nearest."""
    rng = np.random.default_rng(6)
    source_means, support_means = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    mapped = np.array([0, 2, -1])
    delta = ((support_means[0] - source_means[0]) + (support_means[1] - source_means[2])) / 2
    query = support_means[2] - delta
    cosine = 1 - source_means @ query / (np.linalg.norm(source_means, axis=1) * np.linalg.norm(query))
    nearest = np.argsort(cosine)[:2]
    weights = softmax(-cosine[nearest] / 0.5)
    expected = np.stack([source_means[0] + delta, source_means[2] + delta,
                         weights @ (source_means[nearest] + delta)])
    prior = source_prior(support_means, source_means, mapped, n_borrow=2, metric="cosine", temperature=0.5)
    np.testing.assert_allclose(prior, expected, atol=1e-12)


def test_knn_votes_and_refinement_match_loops():
    rng = np.random.default_rng(7)
    d, owners = rng.random(size=(6, 9)), rng.integers(0, 3, 9)
    expected = np.zeros((6, 3))
    for i, row in enumerate(d):
        nearest = np.argsort(row)[:4]
        for j, weight in zip(nearest, softmax(-row[nearest] / 0.2)):
            expected[i, owners[j]] += weight
    np.testing.assert_allclose(knn_scores(d, owners, 3, 4, 0.2), expected, atol=1e-12)
    pool, means, weights = rng.normal(size=(20, 3)), rng.normal(size=(2, 3)), np.array([1.0, 3.0])
    expected = means.copy()
    for _ in range(3):  # soft k-means with the first prototypes as fixed points of mass ``weights``
        d = np.linalg.norm(pool[:, None] - expected[None], axis=2)
        r = softmax(-d / 0.5, axis=1)
        expected = np.stack([(weights[c] * means[c] + r[:, c] @ pool) / (weights[c] + r[:, c].sum())
                             for c in range(2)])
    np.testing.assert_allclose(refine_prototypes(pool, means, weights, 3, 0.0, "euclidean", 0.5), expected)


def test_estimators_pass_scikit_learn_checks():
    """Every check_estimator check passes; scikit-learn itself skips only the array-API check
    (SCIPY_ARRAY_API unset) and, for classifiers, the pandas one (pandas not installed)."""
    for estimator in (WithinClassWhitening(), WithinClassWhitening(rank=1), DomainCentering()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_estimator(estimator)


def test_states_of_versions_2_and_3_load_with_the_mode_and_whitening_they_fitted():
    """Version 2 states had no whiten_: it is the whiten param; a float64 whitening_ from before the
    float32 storage predicts as saved. Version 3 classifiers could choose their own mode ("auto"): they
    load with the mode and whitening they fitted as fixed parameters, the record of that choice dropped."""
    rng = np.random.default_rng(8)
    xs, ys = anisotropic(rng, 4, 20)
    model = fit_transfer(xs, ys, xs[::10], ys[::10], mode="center", whiten=0.3)
    config, arrays = model.get_state()
    old = {key: value for key, value in config.items() if key != "whiten_"}
    arrays = {**arrays, "whitening_": arrays["whitening_"].astype(np.float64)}
    restored = classifier_from_state({**old, "version": 2}, arrays)
    assert (restored.whiten_, restored.mode_, restored.mode, restored.whiten) == (0.3, "center", "center", 0.3)
    np.testing.assert_allclose(restored.predict_proba(xs), model.predict_proba(xs), atol=1e-6)
    chosen = {**config, "version": 3, "selection_": {"features: center whiten 0.3": 0.9}, "support_selection_": {},
              "params": {**config["params"], "mode": "auto", "whiten": "auto", "selection_episodes": 100,
                         "source_scores": None}}
    restored = classifier_from_state(chosen, arrays)
    assert (restored.mode, restored.whiten, restored.mode_, restored.whiten_) == ("center", 0.3, "center", 0.3)
    assert not hasattr(restored, "selection_") and "source_scores" not in restored.get_params()
    np.testing.assert_allclose(restored.predict_proba(xs), model.predict_proba(xs), atol=1e-6)


def test_whitenings_of_several_shrinkages_from_one_eigendecomposition_match_each_alone():
    rng = np.random.default_rng(9)
    xs, ys = anisotropic(rng, 4, 20)
    together = source_whitenings(xs, ys, [0.0, 0.1, 0.6, 1.0])
    for shrinkage, whitening in together.items():
        alone = source_whitening(xs, ys, shrinkage)
        np.testing.assert_allclose(whitening.center, alone.center)
        np.testing.assert_allclose(whitening.matrix, alone.matrix, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="shrinkage"):
        source_whitenings(xs, ys, [0.3, 1.2])
