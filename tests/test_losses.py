"""Every loss against a numpy triple-loop reference, plus numerics: gradients, one class, mixed precision."""
import keras
import numpy as np
import pytest
from gradients import gradient
from keras import ops

from triplet_keras.core.losses import (
    OnlineTripletLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    pairwise_distances,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)
from triplet_keras.pipeline.params import ONLINE_STRATEGIES

MARGIN = 0.5
LABEL_LAYOUTS = {
    "balanced": np.repeat(np.arange(4), 4),
    "unbalanced": np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 5, 5, 5]),
    "singletons": np.array([0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12, 13, 13]),
}
DISTANCES = ["squared_l2", "l2", "cosine"]


def reference_distance(x, y, distance):
    if distance == "cosine":
        return 1.0 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
    d2 = np.sum((x - y) ** 2)
    return d2 if distance == "squared_l2" else np.sqrt(d2)


def reference_matrix(emb, distance):
    n = len(emb)
    return np.array([[0.0 if i == j else reference_distance(emb[i], emb[j], distance) for j in range(n)] for i in range(n)])


def hinge(x, soft=False):
    return np.log1p(np.exp(x)) if soft else max(x + MARGIN, 0.0)


def reference_batch_all(labels, emb, distance, soft=False):
    d = reference_matrix(emb, distance)
    total, positive, valid = 0.0, 0, 0
    for a in range(len(labels)):
        for p in range(len(labels)):
            for n in range(len(labels)):
                if a != p and labels[a] == labels[p] and labels[a] != labels[n]:
                    valid += 1
                    loss = hinge(d[a, p] - d[a, n], soft)
                    total += loss
                    positive += loss > 1e-16
    return total / max(positive, 1), positive / max(valid, 1)


def reference_batch_hard(labels, emb, distance, soft=False):
    d = reference_matrix(emb, distance)
    values = []
    for a in range(len(labels)):
        pos = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            values.append(hinge(max(pos) - min(neg), soft))
    return np.mean(values) if values else 0.0


def reference_semi_hard(labels, emb, distance, soft=False):
    d = reference_matrix(emb, distance)
    values = []
    for a in range(len(labels)):
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a] or not neg:
                continue
            farther = [v for v in neg if v > d[a, p]]
            d_an = min(farther) if farther else max(neg)
            values.append(hinge(d[a, p] - d_an, soft))
    return np.mean(values) if values else 0.0


def random_embeddings(n=16, dim=6, seed=0):
    emb = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_distances_match_numpy(distance):
    emb = random_embeddings(10, 5) * 3.0
    np.testing.assert_allclose(
        ops.convert_to_numpy(pairwise_distances(emb, distance=distance)), reference_matrix(emb, distance), atol=1e-4
    )


def test_squared_flag_selects_distance():
    emb = random_embeddings(6, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(pairwise_distances(emb, squared=True)), reference_matrix(emb, "squared_l2"), atol=1e-5
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(pairwise_distances(emb, squared=False)), reference_matrix(emb, "l2"), atol=1e-5
    )
    with pytest.raises(ValueError, match="distance must be one of"):
        pairwise_distances(emb, distance="manhattan")


@pytest.mark.parametrize("layout", sorted(LABEL_LAYOUTS))
@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_all_matches_reference(layout, distance):
    labels = LABEL_LAYOUTS[layout]
    emb = random_embeddings(len(labels), seed=len(layout))
    loss, fraction = batch_all_triplet_loss(labels, emb, MARGIN, distance=distance)
    expected_loss, expected_fraction = reference_batch_all(labels, emb, distance)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(fraction), expected_fraction, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("function, reference, seed", [
    (batch_hard_triplet_loss, reference_batch_hard, 1),
    (semi_hard_triplet_loss, reference_semi_hard, 2),
])
@pytest.mark.parametrize("layout", sorted(LABEL_LAYOUTS))
@pytest.mark.parametrize("distance", DISTANCES)
def test_hardest_and_semi_hard_match_reference(function, reference, seed, layout, distance):
    labels = LABEL_LAYOUTS[layout]
    emb = random_embeddings(len(labels), seed=seed)
    loss = function(labels, emb, MARGIN, distance=distance)
    np.testing.assert_allclose(float(loss), reference(labels, emb, distance), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "function, reference",
    [
        (lambda *a, **k: batch_all_triplet_loss(*a, **k)[0], lambda *a, **k: reference_batch_all(*a, **k)[0]),
        (batch_hard_triplet_loss, reference_batch_hard),
        (semi_hard_triplet_loss, reference_semi_hard),
    ],
)
def test_soft_margin_matches_reference(function, reference):
    labels = LABEL_LAYOUTS["balanced"]
    emb = random_embeddings(len(labels), seed=3)
    loss = function(labels, emb, MARGIN, distance="l2", soft=True)
    np.testing.assert_allclose(float(loss), reference(labels, emb, "l2", soft=True), rtol=1e-4)


@pytest.mark.parametrize("squared", [True, False])
def test_triplet_margin_loss_matches_reference(squared):
    a, p, n = (random_embeddings(8, 5, seed=s) for s in (4, 5, 6))
    distance = "squared_l2" if squared else "l2"
    expected = [max(reference_distance(a[i], p[i], distance) - reference_distance(a[i], n[i], distance) + 0.2, 0)
                for i in range(8)]
    loss = ops.convert_to_numpy(triplet_margin_loss(a, p, n, squared=squared))
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)


def test_known_values_perfect_and_bad_batches():
    labels = np.array([0, 0, 1, 1])
    perfect = np.array([[1, 0], [1, 0], [-1, 0], [-1, 0]], np.float32)
    # Same class coincides, other class at squared distance 4 > margin: nothing to learn.
    assert float(batch_hard_triplet_loss(labels, perfect, 1.0, squared=True)) == 0.0
    assert float(batch_all_triplet_loss(labels, perfect, 1.0, squared=True)[1]) == 0.0
    bad = np.array([[1, 0], [-1, 0], [1, 0], [-1, 0]], np.float32)
    # Each positive is at squared distance 4 and some negative at 0: loss 4 + margin.
    np.testing.assert_allclose(float(batch_hard_triplet_loss(labels, bad, 1.0, squared=True)), 5.0)
    np.testing.assert_allclose(float(semi_hard_triplet_loss(labels, bad, 1.0, squared=True)), 1.0)


def _gradient(function, emb, labels):
    """Gradient of function(labels, emb) w.r.t. emb on the active backend."""
    return gradient(lambda e: function(labels, e), emb)


ONLINE = {
    "batch_all": lambda labels, e: batch_all_triplet_loss(labels, e, MARGIN)[0],
    "batch_hard": lambda labels, e: batch_hard_triplet_loss(labels, e, MARGIN),
    "semi_hard": lambda labels, e: semi_hard_triplet_loss(labels, e, MARGIN),
}


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_finite_gradients_with_duplicate_embeddings(name):
    labels = np.array([0, 0, 1, 1, 2, 2])
    emb = np.repeat(random_embeddings(3, 4), 2, axis=0)  # every pair is an exact duplicate
    emb[4] = emb[0]  # a negative at distance zero too
    grad = _gradient(ONLINE[name], emb, labels)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_one_class_batch_gives_zero_loss_and_finite_gradient(name):
    labels = np.zeros(6, dtype=np.int64)
    emb = random_embeddings(6, 4)
    assert float(ONLINE[name](labels, emb)) == 0.0
    assert np.all(np.isfinite(_gradient(ONLINE[name], emb, labels)))


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_no_positive_pair_gives_zero_loss(name):
    labels = np.arange(6)
    assert float(ONLINE[name](labels, random_embeddings(6, 4))) == 0.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    labels = LABEL_LAYOUTS["balanced"]
    emb = random_embeddings(len(labels), seed=7)
    low = ops.cast(emb, dtype)
    rounded = ops.convert_to_numpy(ops.cast(low, "float32"))
    loss = batch_hard_triplet_loss(labels, low, MARGIN)
    assert ops.convert_to_numpy(loss).dtype == np.float32
    np.testing.assert_allclose(float(loss), reference_batch_hard(labels, rounded, "l2"), rtol=1e-4)
    triplet = triplet_margin_loss(low, ops.flip(low, axis=0), ops.roll(low, 1, axis=0))
    assert np.all(np.isfinite(ops.convert_to_numpy(triplet)))


def test_loss_classes_serialise_their_config():
    for loss in (TripletMarginLoss(margin=0.3, squared=False, soft=True),
                 OnlineTripletLoss("semi_hard", margin=0.1, distance="cosine")):
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(restored) is type(loss)
        assert restored.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="strategy"):
        OnlineTripletLoss("hardest")


def test_online_loss_class_equals_function():
    labels = LABEL_LAYOUTS["unbalanced"]
    emb = random_embeddings(len(labels), seed=8)
    for strategy, function in ONLINE.items():
        value = OnlineTripletLoss(strategy, margin=MARGIN)(labels, emb)
        np.testing.assert_allclose(float(value), float(function(labels, emb)), rtol=1e-5)


def test_merge_loss_class_unstacks_triplets():
    a, p, n = (random_embeddings(5, 3, seed=s) for s in (9, 10, 11))
    stacked = np.stack([a, p, n], axis=1)
    value = TripletMarginLoss(margin=0.2)(np.zeros(5), stacked)
    np.testing.assert_allclose(float(value), float(np.mean(ops.convert_to_numpy(triplet_margin_loss(a, p, n)))),
                               rtol=1e-5)


def test_online_strategies_take_the_params_names():
    labels = LABEL_LAYOUTS["balanced"]
    emb = random_embeddings(len(labels), seed=9)
    for strategy in ONLINE_STRATEGIES:
        loss = OnlineTripletLoss(strategy, margin=MARGIN)
        assert loss.get_config()["strategy"] == strategy
        assert np.isfinite(float(loss(labels, emb)))
    older = OnlineTripletLoss("semi_hard", margin=MARGIN)  # the name in Keras files written before
    assert older.strategy == "batch_semi_hard" and older.name == "semi_hard_triplet_loss"
    np.testing.assert_allclose(float(older(labels, emb)), float(semi_hard_triplet_loss(labels, emb, MARGIN)), rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(older))
    assert restored.get_config() == older.get_config()


def _online(name, distance, soft):
    functions = {"batch_all": lambda labels, e: batch_all_triplet_loss(labels, e, MARGIN, distance=distance,
                                                                       soft=soft)[0],
                 "batch_hard": lambda labels, e: batch_hard_triplet_loss(labels, e, MARGIN, distance=distance, soft=soft),
                 "semi_hard": lambda labels, e: semi_hard_triplet_loss(labels, e, MARGIN, distance=distance, soft=soft)}
    return functions[name]


@pytest.mark.parametrize("fill", ["zero", "equal"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("name", ["batch_all", "batch_hard", "semi_hard", "merge"])
def test_all_zero_or_all_equal_embeddings_give_the_margin_and_finite_gradients(name, distance, soft, fill):
    """Every distance is 0, so every triplet's loss is hinge(0 - 0): the margin (soft: log 2)."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    emb = np.zeros((6, 4), np.float32) if fill == "zero" else np.tile(random_embeddings(1, 4), (6, 1))
    if name == "merge":
        function = lambda labels, e: ops.mean(triplet_margin_loss(  # noqa: E731
            e[:3], e[3:], ops.flip(e[:3], axis=0), MARGIN, distance=distance, soft=soft))
    else:
        function = _online(name, distance, soft)
    expected = np.log(2.0) if soft else MARGIN
    np.testing.assert_allclose(float(function(labels, emb)), expected, rtol=1e-5)
    assert np.all(np.isfinite(_gradient(function, emb, labels)))


def reference_merge(labels, emb, distance, soft=False):
    """The merge model's loss on the triplets (e[i], e[3 + i], e[5 + i]) of 8 embeddings."""
    return np.mean([hinge(reference_distance(emb[i], emb[3 + i], distance)
                          - reference_distance(emb[i], emb[5 + i], distance), soft) for i in range(3)])


REFERENCES = {"batch_all": lambda *args, **kwargs: reference_batch_all(*args, **kwargs)[0],
              "batch_hard": reference_batch_hard, "semi_hard": reference_semi_hard, "merge": reference_merge}


def central_differences(function, x, step=1e-6):
    """d function(x) / dx by central differences, in float64."""
    x, grad = np.array(x, np.float64), np.zeros(np.shape(x))
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (function(up) - function(down)) / (2 * step)
    return grad


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("name", ["batch_all", "batch_hard", "semi_hard", "merge"])
def test_gradients_match_finite_differences_of_the_reference(name, distance, soft):
    """The backend's gradient of every loss equals central differences of its numpy reference, at random
    unnormalised embeddings (a generic point: no tie in the mining, no triplet on the hinge's corner)."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    emb = np.random.default_rng(11).normal(size=(8, 3)).astype(np.float32)
    if name == "merge":
        function = lambda labels, e: ops.mean(triplet_margin_loss(  # noqa: E731
            e[:3], e[3:6], e[5:], MARGIN, distance=distance, soft=soft))
    else:
        function = _online(name, distance, soft)
    expected = central_differences(lambda e: REFERENCES[name](labels, e, distance, soft=soft), emb)
    assert np.abs(expected).max() > 0.01  # some triplet is active: the check is not of zeros
    np.testing.assert_allclose(_gradient(function, emb, labels), expected, rtol=1e-3, atol=1e-4)
