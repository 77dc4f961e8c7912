"""Plots: valid PNG files, a faithful 2-D map, tiny and bad inputs."""
import os

import cv2
import numpy as np
import pytest

from triplet_keras import plots

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def clusters(count=4, per_class=20, dims=16, spread=8.0, seed=0):
    """Well-separated Gaussian clusters: embeddings (count * per_class, dims) and integer labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(count, dims))
    labels = np.repeat(np.arange(count), per_class)
    return centres[labels] + rng.normal(size=(len(labels), dims)), labels


def assert_png(path):
    image = cv2.imread(str(path))
    assert image is not None and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) > 200
    assert not any(name.startswith(".") for name in os.listdir(os.path.dirname(path)))


def knn_agreement(points, labels, k=5):
    """Fraction of points whose k nearest neighbours (not themselves) mostly share their label."""
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = labels[np.argsort(distances, axis=1)[:, :k]]
    return np.mean([np.bincount(row).argmax() == label for row, label in zip(neighbours, labels)])


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_embed_2d_keeps_clusters_apart(method):
    embeddings, labels = clusters()
    points = plots.embed_2d(embeddings, method, seed=0)
    assert points.shape == (len(labels), 2) and np.isfinite(points).all()
    assert knn_agreement(points, labels) > 0.9


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5])
def test_embed_2d_tiny_inputs(count):
    embeddings, _ = clusters()
    for method in ("tsne", "pca"):
        assert plots.embed_2d(embeddings[:count], method).shape == (count, 2)
    assert plots.embed_2d(embeddings[:count, :1], "pca").shape == (count, 2)


def test_embed_2d_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        plots.embed_2d(np.zeros((4, 3)), "umap")
    with pytest.raises(ValueError, match="2-D"):
        plots.embed_2d(np.zeros(4), "pca")


def test_plot_embeddings_2d_with_subsampling(tmp_path):
    embeddings, labels = clusters()
    names = np.array(["cat", "dog", "frog", "ship"])[labels]
    path = plots.plot_embeddings_2d(tmp_path / "map.png", [("source", embeddings, names, "o"),
                                                          ("target", embeddings[:6] + 1, names[:6], "x")],
                                    "source and target", method="pca", max_points=30)
    assert path == str(tmp_path / "map.png")
    assert_png(path)


def test_subsample_shares_points_evenly():
    group = ("g", np.zeros((100, 2)), np.zeros(100).astype(str), "o")
    small = ("s", np.zeros((6, 2)), np.zeros(6).astype(str), "x")
    assert [len(g[1]) for g in plots._subsample([group, small, group], 60, seed=0)] == [27, 6, 27]


def test_plot_embeddings_2d_tiny_and_mismatched(tmp_path):
    embeddings, labels = clusters()
    assert_png(plots.plot_embeddings_2d(tmp_path / "one.png", [("only", embeddings[:1], labels[:1], "o")], "one"))
    with pytest.raises(ValueError, match="'target'"):
        plots.plot_embeddings_2d(tmp_path / "bad.png", [("target", embeddings, labels[:-1], "x")], "bad")
    assert not (tmp_path / "bad.png").exists()


def test_plot_embedding_transfer(tmp_path):
    embeddings, labels = clusters(count=3, per_class=10)
    before, after = embeddings[::2] + 20, embeddings[::2] + 0.5
    path = plots.plot_embedding_transfer(tmp_path / "transfer.png", (embeddings, labels),
                                         (before, labels[::2]), (after, labels[::2]))
    assert_png(path)
    with pytest.raises(ValueError, match="'source'"):
        plots.plot_embedding_transfer(tmp_path / "bad.png", (embeddings, labels[:3]), (before, labels[::2]),
                                      (after, labels[::2]))
    whitened_source, whitened_after = embeddings[:, :2] * 3.0, after[:, :2] * 3.0  # another space, other D
    assert_png(plots.plot_embedding_transfer(tmp_path / "two_maps.png", (embeddings, labels), (before, labels[::2]),
                                             (whitened_after, labels[::2]), source_after=whitened_source))
    with pytest.raises(ValueError, match="'source'"):
        plots.plot_embedding_transfer(tmp_path / "bad.png", (embeddings, labels), (before, labels[::2]),
                                      (whitened_after, labels[::2]), source_after=whitened_source[:-1])


@pytest.mark.parametrize("history", [
    {"loss": [1.0, 0.5, float("nan"), 0.3], "val_loss": [1.2, 0.8, 0.7, 0.6],
     "fraction_positive": [0.9, 0.5, 0.3, 0.2]},
    {"loss": [0.7]},
    {"loss": [float("nan")], "accuracy": [None]},
])
def test_plot_loss_curves(tmp_path, history):
    assert_png(plots.plot_loss_curves(tmp_path / "loss.png", history))


def test_plot_loss_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_loss_curves(tmp_path / "loss.png", {})


@pytest.mark.parametrize("classes, normalize", [(3, "true"), (3, None), (25, "true")])
def test_plot_confusion_matrix(tmp_path, classes, normalize):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, classes, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, classes, 200))
    names = np.array([f"class {i}" for i in range(classes)])
    if normalize is None:  # labels given as names rather than indices
        y_true, y_pred = names[y_true], names[y_pred]
    assert_png(plots.plot_confusion_matrix(tmp_path / "cm.png", y_true, y_pred, names, normalize=normalize))


def test_plot_confusion_matrix_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="y_pred"):
        plots.plot_confusion_matrix(tmp_path / "cm.png", [0, 1, 1], [0, 1], ["a", "b"])


def test_plot_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), 300)
    labels = rng.integers(0, 4, 300)
    assert_png(plots.plot_reliability_diagram(tmp_path / "reliability.png",
                                              {"raw": (probabilities, labels), "sharp": (probabilities ** 3, labels)}))
    with pytest.raises(ValueError, match="no curves"):
        plots.plot_reliability_diagram(tmp_path / "none.png", {})
