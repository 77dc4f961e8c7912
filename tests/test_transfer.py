"""Transfer modes and the nearest-mean estimator on synthetic Gaussian clusters with known structure."""
import json
import warnings

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from triplet_keras.transfer import (NearestMeanClassifier, ScoreMixture, TransferClassifier, classifier_from_state,
                                    source_whitening)
from triplet_keras.transfer.choice import fit_transfer

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend

DIM, N_CLASSES = 16, 6


def clusters(rng, centers, n_per_class, offset=0.0, noise=0.9):
    labels = np.repeat(np.arange(len(centers)), n_per_class)
    return centers[labels] + offset + noise * rng.normal(size=(len(labels), centers.shape[1])), labels


@pytest.fixture
def domains():
    """Source clusters and the same clusters in a target domain moved by one global offset."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(N_CLASSES, DIM))
    source = clusters(rng, centers, 60)
    target = clusters(rng, centers, 40, offset=1.5 * rng.normal(size=DIM))
    return source, target


def episodes_accuracy(source, target, k_shot, draws=30, **transfer):
    """Mean accuracy of fit_transfer over ``draws`` K-shot episodes drawn with a fixed seed (``auto``
    scores its candidates on 20 source episodes each time)."""
    rng = np.random.default_rng(7)
    (xs, ys), (xt, yt) = source, target
    scores = []
    if transfer.get("mode", "auto") == "auto":
        transfer = {"n_episodes": 20, **transfer}
    for _ in range(draws):
        support = np.concatenate([rng.choice(np.flatnonzero(yt == c), k_shot, replace=False) for c in np.unique(yt)])
        query = np.setdiff1d(np.arange(len(yt)), support)
        model = fit_transfer(xs, ys, xt[support], yt[support], **transfer)
        scores.append(model.score(xt[query], yt[query]))
    return float(np.mean(scores))


def test_nearest_mean_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    queries = rng.normal(size=(8, 5))
    for metric in ("cosine", "euclidean"):
        model = NearestMeanClassifier(metric=metric, temperature=0.5).fit(x, y)
        means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
        np.testing.assert_allclose(model.means_, means)
        if metric == "cosine":
            d = 1 - (queries @ means.T) / np.outer(np.linalg.norm(queries, axis=1), np.linalg.norm(means, axis=1))
        else:
            d = np.sqrt(((queries[:, None] - means[None]) ** 2).sum(-1))
        np.testing.assert_allclose(model.decision_function(queries), -d, atol=1e-12)
        np.testing.assert_allclose(model.predict_proba(queries), softmax(-d / 0.5, axis=1), atol=1e-12)
        np.testing.assert_array_equal(model.predict(queries), d.argmin(axis=1))


def test_nearest_mean_is_a_scikit_learn_classifier():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(NearestMeanClassifier())
        check_estimator(TransferClassifier())


def test_nearest_mean_string_labels_clone_pipeline_and_unfitted():
    rng = np.random.default_rng(0)
    centers = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    x, y = clusters(rng, centers, 20, noise=0.5)
    names = np.array(["cat", "dog", "eel"])[y]
    with pytest.raises(NotFittedError):
        NearestMeanClassifier().predict(x)
    pipeline = make_pipeline(StandardScaler(), clone(NearestMeanClassifier(metric="euclidean"))).fit(x, names)
    assert pipeline.score(x, names) == 1.0
    assert list(pipeline.classes_) == ["cat", "dog", "eel"]
    assert clone(NearestMeanClassifier(temperature=0.3)).get_params()["temperature"] == 0.3
    binary = NearestMeanClassifier().fit(x[y < 2], names[y < 2])
    assert binary.decision_function(x).shape == (len(x),)
    with pytest.raises(ValueError, match="metric"):
        NearestMeanClassifier(metric="manhattan").fit(x, y)


@pytest.mark.parametrize("transfer", [dict(mode="none"), dict(mode="center"), dict(mode="calibrate"),
                                      dict(mode="translate", knn=5), dict(mode="calibrate", transductive=True)])
def test_state_round_trips_through_json_and_npz(domains, transfer, tmp_path):
    (xs, ys), (xt, yt) = domains
    names = np.array([f"class {c}" for c in range(N_CLASSES)])
    model = fit_transfer(xs, ys, xt[::10], names[yt[::10]], class_mapping={f"class {c}": c for c in range(N_CLASSES)},
                         unlabeled=xt, **transfer)
    config, arrays = model.get_state()
    np.savez(tmp_path / "state.npz", **arrays)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as stored:
        restored = classifier_from_state(json.loads(json.dumps(config)), dict(stored))
    np.testing.assert_array_equal(restored.predict(xt), model.predict(xt))
    np.testing.assert_allclose(restored.predict_proba(xt), model.predict_proba(xt))
    assert restored.mode_ == model.mode_ == transfer["mode"]
    assert set(model.predict(xt)) <= set(names)


def test_state_of_version_1_loads_unwhitened(domains):
    """Predictors saved before whitening existed (state version 1) load and predict as before."""
    (xs, ys), (xt, yt) = domains
    model = fit_transfer(xs, ys, xt[::10], yt[::10], mode="center", whiten=None)
    config, arrays = model.get_state()
    params = {key: value for key, value in config["params"].items() if key != "whiten"}
    old = {**config, "version": 1, "params": params}
    arrays = {key: value for key, value in arrays.items() if key not in ("source_center_", "whitening_")}
    restored = classifier_from_state(old, arrays)
    np.testing.assert_array_equal(restored.predict(xt), model.predict(xt))
    assert restored.whiten is None


def mixture_on(domains, unlabeled=None):
    """A ScoreMixture of a whitened ``center`` member on the raw features and a ``none`` member on a
    second view (the features squared), fitted on a support of the target; and its inputs."""
    (xs, ys), (xt, yt) = domains
    views = lambda x: np.hstack([x, x ** 2])  # noqa: E731
    members = [TransferClassifier(mode="center", whiten=0.3, transductive=unlabeled is not None),
               TransferClassifier(mode="none")]
    model = ScoreMixture(members, (0.8, 0.2), (DIM, DIM)).fit(
        views(xt[::10]), yt[::10], source_emb=views(xs), source_labels=ys,
        unlabeled=None if unlabeled is None else views(unlabeled))
    return model, views


@pytest.mark.parametrize("pooled", [False, True])
def test_score_mixture_sums_its_members_weighted_scores(domains, pooled):
    (xs, ys), (xt, yt) = domains
    model, views = mixture_on(domains, xt if pooled else None)
    first = TransferClassifier(mode="center", whiten=0.3, transductive=pooled).fit(
        xt[::10], yt[::10], source_emb=xs, source_labels=ys, unlabeled=xt if pooled else None)
    second = TransferClassifier(mode="none").fit(xt[::10] ** 2, yt[::10], source_emb=xs ** 2, source_labels=ys)
    expected = 0.8 * -first.prototype_distances(xt) + 0.2 * -second.prototype_distances(xt ** 2)
    np.testing.assert_allclose(model.class_scores(views(xt)), expected)
    np.testing.assert_array_equal(model.predict(views(xt)), first.classes_[np.argmax(expected, axis=1)])
    np.testing.assert_allclose(model.predict_proba(views(xt)), softmax(expected / 0.1, axis=1))
    np.testing.assert_allclose(model.prototype_distances(views(xt)), -expected)
    scale = np.sqrt([0.8, 0.2])
    np.testing.assert_allclose(model.transform(views(xt)), np.hstack([scale[0] * first.transform(xt),
                                                                      scale[1] * second.transform(xt ** 2)]))
    assert model.score(views(xt), yt) > 0.8


def test_score_mixture_state_round_trips_and_refuses_bad_input(domains, tmp_path):
    (xs, ys), (xt, yt) = domains
    model, views = mixture_on(domains, xt)
    config, arrays = model.get_state()
    np.savez(tmp_path / "state.npz", **arrays)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as stored:
        restored = classifier_from_state(json.loads(json.dumps(config)), dict(stored))
    assert isinstance(restored, ScoreMixture) and restored.n_features_in_ == 2 * DIM
    np.testing.assert_allclose(restored.class_scores(views(xt)), model.class_scores(views(xt)))
    with pytest.raises(ValueError, match="widths"):
        ScoreMixture.from_state({**config, "params": {**config["params"], "widths": [DIM, DIM + 1]}}, arrays)
    with pytest.raises(ValueError, match="features"):
        model.predict(xt)  # one view only
    with pytest.raises(NotFittedError):
        ScoreMixture([TransferClassifier()], (1.0,), (DIM,)).predict(xt)
    for members, weights, widths, match in (([TransferClassifier()], (0.5, 0.5), (DIM,), "as many"),
                                            ([TransferClassifier()] * 2, (1.0, -0.1), (DIM, DIM), "weights"),
                                            ([TransferClassifier()] * 2, (0.5, 0.5), (DIM, DIM + 1), "add up")):
        with pytest.raises(ValueError, match=match):
            ScoreMixture(members, weights, widths).fit(views(xt[::10]), yt[::10])


def test_state_rejects_other_types():
    config, arrays = NearestMeanClassifier().fit([[0.0], [1.0]], [0, 1]).get_state()
    with pytest.raises(ValueError, match="NearestMeanClassifier"):
        TransferClassifier.from_state(config, arrays)
    with pytest.raises(ValueError, match="unknown classifier"):
        classifier_from_state({**config, "type": "Pickle"}, arrays)
    with pytest.raises(ValueError, match="means_"):
        NearestMeanClassifier.from_state(config, {"classes_": arrays["classes_"]})


def test_domain_shift_calibrate_and_center_beat_none(domains):
    source, target = domains
    none = episodes_accuracy(source, target, 1, mode="none")
    assert episodes_accuracy(source, target, 1, mode="calibrate") > none + 0.05
    assert episodes_accuracy(source, target, 1, mode="center") > none + 0.05
    assert episodes_accuracy(source, target, 1, mode="auto") > none + 0.05
    assert episodes_accuracy(source, target, 1, mode="translate", knn=5) > 0.5


def test_transform_is_the_query_map(domains):
    (xs, ys), (xt, yt) = domains
    center = fit_transfer(xs, ys, xt[::10], yt[::10], mode="center", unlabeled=xt, whiten=None)
    moved = (xt - xt.mean(axis=0)) / np.linalg.norm(xt - xt.mean(axis=0), axis=1, keepdims=True)
    np.testing.assert_allclose(center.transform(xt), moved)
    np.testing.assert_allclose(fit_transfer(xs, ys, xt[::10], yt[::10], mode="calibrate", whiten=None).transform(xt), xt)
    m_s, w = source_whitening(xs, ys, 0.3)
    whitened = fit_transfer(xs, ys, xt[::10], yt[::10], mode="center", unlabeled=xt, whiten=0.3)
    white = (xt - m_s) @ w
    moved = (white - white.mean(axis=0)) / np.linalg.norm(white - white.mean(axis=0), axis=1, keepdims=True)
    np.testing.assert_allclose(whitened.transform(xt), moved)
    # The source side: whitened, centred on the mean of its (whitened) class means, which is 0 here.
    white_source = (xs - m_s) @ w
    np.testing.assert_allclose(whitened.transform_source(xs),
                               white_source / np.linalg.norm(white_source, axis=1, keepdims=True), atol=1e-12)
    translate = fit_transfer(xs, ys, xt[::10], yt[::10], mode="translate", whiten=0.3)
    np.testing.assert_allclose(translate.transform_source(xs), white_source)
    np.testing.assert_allclose(translate.transform(xt), white)


def test_source_whitening_matches_numpy_reference(domains):
    """W = S^(-1/2) for S the shrunk pooled within-class covariance: W S W = I, W symmetric."""
    (xs, ys), _ = domains
    means = np.stack([xs[ys == c].mean(axis=0) for c in range(N_CLASSES)])
    residuals = xs - means[ys]
    pooled = residuals.T @ residuals / len(xs)
    for shrinkage in (0.0, 0.3, 1.0):
        center, w = whitening = source_whitening(xs, ys, shrinkage)
        np.testing.assert_allclose(whitening.apply(xs), (xs - center) @ w)
        shrunk = (1 - shrinkage) * pooled + shrinkage * np.trace(pooled) / DIM * np.eye(DIM)
        np.testing.assert_allclose(center, means.mean(axis=0))
        np.testing.assert_allclose(w, w.T, atol=1e-12)
        assert w.dtype == np.float32  # the d x d matrix is stored in float32, computed in float64
        np.testing.assert_allclose(w @ shrunk @ w, np.eye(DIM), atol=1e-6)
    np.testing.assert_allclose(source_whitening(xs, ys, 1.0)[1], np.eye(DIM) / np.sqrt(np.trace(pooled) / DIM),
                               atol=1e-12)
    single = source_whitening(xs.astype(np.float32), ys, 0.3)  # float32 input is accumulated in float64
    np.testing.assert_allclose(single.matrix, source_whitening(xs, ys, 0.3).matrix, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shrinkage"):
        source_whitening(xs, ys, 1.5)
    constant = np.ones((6, 3))
    assert np.isfinite(source_whitening(constant, [0, 0, 1, 1, 2, 2], 0.0)[1]).all()


def test_modes_run_in_the_whitened_space(domains):
    """Whitening is the affine map (x - m_s) W applied to source, support and queries first."""
    (xs, ys), (xt, yt) = domains
    m_s, w = source_whitening(xs, ys, 0.3)
    support = np.arange(0, len(yt), 15)
    for mode in ("calibrate", "center", "translate"):
        for pool in (None, xt):  # inductive, then transductive refinement over the whole target
            whitened = fit_transfer(xs, ys, xt[support], yt[support], mode=mode, whiten=0.3, unlabeled=pool,
                                    transductive=pool is not None)
            plain = fit_transfer((xs - m_s) @ w, ys, (xt[support] - m_s) @ w, yt[support], mode=mode, whiten=None,
                                 unlabeled=None if pool is None else (pool - m_s) @ w, transductive=pool is not None)
            np.testing.assert_allclose(whitened.means_, plain.means_, atol=1e-9)
            np.testing.assert_array_equal(whitened.predict(xt), plain.predict((xt - m_s) @ w))
    reused = fit_transfer(xs, ys, xt[support], yt[support], mode="center", whiten=0.3,
                          whitening=source_whitening(xs, ys, 0.3))
    np.testing.assert_allclose(reused.means_, fit_transfer(xs, ys, xt[support], yt[support], mode="center",
                                                           whiten=0.3).means_)
    other = source_whitening(xs[::2] * 2.0, ys[::2], 0.5)  # learnt on other source data: used as given
    elsewhere = fit_transfer(xs, ys, xt[support], yt[support], mode="center", whiten=0.5, whitening=other)
    np.testing.assert_allclose(elsewhere.transform(xt), fit_transfer(
        other.apply(xs), ys, other.apply(xt[support]), yt[support], mode="center", whiten=None).transform(other.apply(xt)))
    assert fit_transfer(xs, ys, xt[support], yt[support], mode="center", whitening=other,
                        whiten=None).whitening_.size == 0
    with pytest.raises(ValueError, match="learnt on 16-d embeddings"):  # a whitening from other features
        fit_transfer(xs[:, :8], ys, xt[support, :8], yt[support], mode="center", whiten=0.5, whitening=other)
    none = fit_transfer(xs, ys, xt[support], yt[support], mode="none", whiten=0.3)
    assert none.whitening_.size == 0  # the baseline never sees the source


def test_whitening_helps_new_classes_under_shared_anisotropic_noise():
    """Every class scatters strongly along the same few directions; the source teaches which."""
    rng = np.random.default_rng(11)
    scales = np.where(np.arange(DIM) < 4, 4.0, 0.4)
    def draw(n_classes, n_per_class):
        centers = 1.5 * rng.normal(size=(n_classes, DIM)) * np.where(np.arange(DIM) < 4, 0.0, 1.0)
        labels = np.repeat(np.arange(n_classes), n_per_class)
        return centers[labels] + scales * rng.normal(size=(len(labels), DIM)), labels
    source, (xt, yt) = draw(8, 50), draw(5, 40)
    target = xt, yt + 100  # labels the source does not have: new classes
    none = episodes_accuracy(source, target, 1, mode="none")
    auto = episodes_accuracy(source, target, 1, mode="auto")
    assert auto > none + 0.15
    chosen = fit_transfer(*source, xt[::40], target[1][::40], mode="auto")
    assert chosen.whiten_ is not None and chosen.mode_ != "none"  # the source episodes show whitening helps


def test_translate_nearest_mean_equals_none_and_knn_uses_translated_points(domains):
    (xs, ys), (xt, yt) = domains
    support = np.arange(0, len(yt), 20)
    none = fit_transfer(xs, ys, xt[support], yt[support], mode="none")
    translate = fit_transfer(xs, ys, xt[support], yt[support], mode="translate", whiten=None)
    np.testing.assert_allclose(translate.means_, none.means_)
    knn = fit_transfer(xs, ys, xt[support], yt[support], mode="translate", knn=3, whiten=None)
    assert len(knn.reference_points_) == len(xs) + len(support)
    for c in range(N_CLASSES):
        moved = knn.reference_points_[len(support):][knn.reference_index_[len(support):] == c]
        np.testing.assert_allclose(moved.mean(axis=0), none.means_[c])
    np.testing.assert_allclose(knn.predict_proba(xt).sum(axis=1), 1.0)


def test_calibrate_is_the_shrinkage_formula(domains):
    (xs, ys), (xt, yt) = domains
    support = np.concatenate([np.flatnonzero(yt == c)[:2] for c in range(N_CLASSES)])
    model = fit_transfer(xs, ys, xt[support], yt[support], mode="calibrate", kappa=3.0, whiten=None)
    mu_s = np.stack([xs[ys == c].mean(axis=0) for c in range(N_CLASSES)])
    mu_t = np.stack([xt[support][yt[support] == c].mean(axis=0) for c in range(N_CLASSES)])
    delta = (mu_t - mu_s).mean(axis=0)
    np.testing.assert_allclose(model.means_, (2 * mu_t + 3.0 * (mu_s + delta)) / 5.0)
    plain = fit_transfer(xs, ys, xt[support], yt[support], mode="calibrate", kappa=0.0, whiten=None)
    np.testing.assert_allclose(plain.means_, mu_t)


def test_new_classes_borrow_from_nearest_source_class():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, DIM)) * 3
    xs, ys = clusters(rng, centers, 30, noise=0.3)
    support = centers[[2]] + 0.5
    model = fit_transfer(xs, ys, support, ["new"], mode="calibrate", kappa_new=1.0, n_borrow=1, whiten=None)
    np.testing.assert_allclose(model.means_[0], (support[0] + xs[ys == 2].mean(axis=0)) / 2)
    alone = fit_transfer(xs, ys, support, ["new"], mode="auto")  # one class: no episode, the default form
    assert (alone.mode_, alone.whiten_) == ("center", 0.3)


def test_new_classes_with_a_class_mapping(domains):
    (xs, ys), (xt, yt) = domains
    letters = np.array(list("abcdef"))
    mapping = {letters[c]: c for c in range(N_CLASSES)}
    mapped = episodes_accuracy((xs, ys), (xt, letters[yt]), 1, mode="calibrate", class_mapping=mapping)
    unmapped = episodes_accuracy((xs, ys), (xt, letters[yt]), 1, mode="calibrate")
    none = episodes_accuracy((xs, ys), (xt, letters[yt]), 1, mode="none")
    assert mapped > none + 0.05
    assert unmapped >= none - 0.05
    assert episodes_accuracy((xs, ys), (xt, letters[yt]), 1, mode="center") > none + 0.05
    assert episodes_accuracy((xs, ys), (xt, letters[yt]), 1, mode="auto") >= none - 0.02
    with pytest.raises(ValueError, match="absent from the support"):
        fit_transfer(xs, ys, xt[:6], letters[yt[:6]], class_mapping={"z": 0})
    with pytest.raises(ValueError, match="absent from the source"):
        fit_transfer(xs, ys, xt[:6], letters[yt[:6]], class_mapping={"a": 99})


@pytest.mark.parametrize("balanced", [True, False])
def test_transductive_refinement_helps_on_balanced_and_unbalanced_pools(balanced):
    """Without a source: a 1-shot support and a pool that is balanced or 80% one class."""
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(N_CLASSES, DIM)) * 0.8
    x, y = clusters(rng, centers, 100, noise=0.8)
    gains = []
    for _ in range(20):
        support = np.array([rng.choice(np.flatnonzero(y == c)) for c in range(N_CLASSES)])
        pool = np.setdiff1d(np.arange(len(y)), support)
        if not balanced:
            few = [rng.choice(pool[y[pool] == c], 5, replace=False) for c in range(1, N_CLASSES)]
            pool = np.concatenate([pool[y[pool] == 0][:100]] + few)
        inductive = fit_transfer(None, None, x[support], y[support], mode="none", unlabeled=x[pool])
        refined = fit_transfer(None, None, x[support], y[support], mode="none", unlabeled=x[pool], transductive=True)
        gains.append(refined.score(x[pool], y[pool]) - inductive.score(x[pool], y[pool]))
    assert np.mean(gains) > 0.05


def test_bad_parameters_are_refused(domains):
    (xs, ys), (xt, yt) = domains
    for params in (dict(mode="shift"), dict(mode="center", knn=3), dict(mode="translate", knn=0),
                   dict(mode="calibrate", kappa=-1.0), dict(temperature=0.0), dict(whiten=1.5),
                   dict(whiten=-0.1)):
        with pytest.raises(ValueError):
            fit_transfer(xs, ys, xt[:6], yt[:6], **{"mode": "center", **params})
