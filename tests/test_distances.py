"""The distance vocabulary: numpy against known values and scipy, keras.ops against numpy, and finite
values and gradients for zero and equal embeddings."""
import numpy as np
import pytest
from gradients import gradient
from keras import ops
from scipy.spatial.distance import cdist

from triplet_keras.core import distances
from triplet_keras.core import distances_ops

SCIPY_NAMES = {"squared_l2": "sqeuclidean", "l2": "euclidean", "cosine": "cosine"}


def _points(n=7, dim=5, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(dtype)


def _degenerate():
    """Rows: zero, zero, a vector, the same vector, its double, another vector."""
    v, w = np.array([0.6, -0.8, 0.0], np.float32), np.array([0.0, 1.0, 2.0], np.float32)
    return np.stack([np.zeros(3, np.float32), np.zeros(3, np.float32), v, v, 2 * v, w])


def test_known_values():
    x = np.array([[0.0, 0.0], [3.0, 4.0]])
    y = np.array([[3.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(distances.pairwise(x, y, "squared_l2"), [[9, 0], [16, 25]])
    np.testing.assert_allclose(distances.pairwise(x, y, "l2"), [[3, 0], [4, 5]])
    # a zero vector is at cosine distance 1 from everything; cos([3, 4], [3, 0]) = 0.6
    np.testing.assert_allclose(distances.pairwise(x, y, "cosine"), [[1, 1], [0.4, 1]])
    np.testing.assert_allclose(distances.paired(x, y, "l2"), [3, 5])
    np.testing.assert_allclose(distances.l2_normalize(x), [[0, 0], [0.6, 0.8]])


@pytest.mark.parametrize("metric", distances.DISTANCES)
def test_numpy_matches_scipy(metric):
    x, y = _points(9, dtype=np.float64), _points(4, seed=1, dtype=np.float64)
    reference = cdist(x, y, SCIPY_NAMES[metric])
    np.testing.assert_allclose(distances.pairwise(x, y, metric), reference, atol=1e-12)
    np.testing.assert_allclose(distances.paired(x[:4], y, metric), np.diag(reference[:4]), atol=1e-12)
    itself = distances.pairwise(x, None, metric)
    np.testing.assert_allclose(itself, cdist(x, x, SCIPY_NAMES[metric]), atol=1e-12)
    assert np.all(np.diag(itself) == 0.0)


def test_names_dtypes_and_out():
    x = _points()
    np.testing.assert_array_equal(distances.pairwise(x, x, "euclidean"), distances.pairwise(x, x, "l2"))
    assert distances.distance_name(None, squared=True) == "squared_l2"
    assert distances.distance_name(None, squared=False) == "l2"
    with pytest.raises(ValueError, match="distance must be one of"):
        distances.pairwise(x, x, "manhattan")
    assert distances.pairwise(x, None, "l2").dtype == np.float32
    assert distances.pairwise(x.astype(np.float64), None, "l2").dtype == np.float64
    integers = np.array([[0, 0], [3, 4]])
    np.testing.assert_allclose(distances.pairwise(integers, None, "l2"), [[0, 5], [5, 0]])
    out = np.full((len(x), 3), np.nan, np.float32)
    assert distances.pairwise(x, x[:3], "squared_l2", out=out) is out
    np.testing.assert_allclose(out, cdist(x, x[:3], "sqeuclidean"), atol=1e-5)


@pytest.mark.parametrize("metric", distances.DISTANCES)
@pytest.mark.parametrize("data", ["random", "degenerate"])
def test_keras_ops_twins_match_numpy(metric, data):
    x = _points() if data == "random" else _degenerate()
    y = _points(4, seed=2) if data == "random" else _degenerate()[::-1]
    for name, args in [("pairwise", (x, y, metric)), ("pairwise", (x, None, metric)), ("paired", (x, y[:1].repeat(len(x), 0), metric))]:
        expected = getattr(distances, name)(*args)
        value = ops.convert_to_numpy(getattr(distances_ops, name)(*args))
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected, atol=2e-3 if metric == "l2" else 1e-5, err_msg=name)
    np.testing.assert_allclose(ops.convert_to_numpy(distances_ops.l2_normalize(x)), distances.l2_normalize(x), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_keras_ops_twins_compute_in_float32(dtype):
    x = ops.cast(_points(), dtype)
    for metric in distances.DISTANCES:
        assert ops.convert_to_numpy(distances_ops.pairwise(x, None, metric)).dtype == np.float32
        assert ops.convert_to_numpy(distances_ops.paired(x, x, metric)).dtype == np.float32


@pytest.mark.parametrize("metric", distances.DISTANCES)
def test_zero_and_equal_embeddings_give_finite_values_and_gradients(metric):
    x = _degenerate()
    weights = np.random.default_rng(3).uniform(0.5, 1.5, (len(x), len(x))).astype(np.float32)
    functions = {
        "itself": lambda e: ops.sum(ops.multiply(distances_ops.pairwise(e, None, metric), weights)),
        "pairwise": lambda e: ops.sum(ops.multiply(distances_ops.pairwise(e, ops.flip(e, axis=0), metric), weights)),
        "paired": lambda e: ops.sum(distances_ops.paired(e, ops.flip(e, axis=0), metric)),
        "paired_equal": lambda e: ops.sum(distances_ops.paired(e, e, metric)),
        "l2_normalize": lambda e: ops.sum(ops.multiply(distances_ops.l2_normalize(e), weights[:, :3])),
    }
    for name, function in functions.items():
        assert np.isfinite(float(function(x))), name
        assert np.all(np.isfinite(gradient(function, x))), name
    itself = ops.convert_to_numpy(distances_ops.pairwise(x, None, metric))
    assert np.all(np.diag(itself) == 0.0) and itself[2, 3] == pytest.approx(0.0, abs=1e-3)
