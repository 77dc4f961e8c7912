"""Plots: valid PNG files, a faithful 2-D map, tiny and bad inputs."""
import os

import cv2
import numpy as np
import pytest

from triplet_keras.pipeline import plots

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def clusters(count=4, per_class=20, dims=16, spread=8.0, seed=0):
    """Well-separated Gaussian clusters: embeddings (count * per_class, dims) and integer labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(count, dims))
    labels = np.repeat(np.arange(count), per_class)
    return centres[labels] + rng.normal(size=(len(labels), dims)), labels


def assert_png(path):
    """A colour PNG of a figure with something drawn on it, and no temporary file beside it."""
    image = cv2.imread(str(path))
    assert image is not None and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) > 200
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # not a blank canvas
    assert not any(name.startswith(".") for name in os.listdir(os.path.dirname(path)))


@pytest.fixture
def drawn(monkeypatch):
    """What each saved figure shows, read off its artists before plots._save frees it: per figure, its
    panels {title, lines: {label: (x, y)}, points: [(xy (n, 2), rgb (n, 3)) per scatter], image, texts}
    and the legend labels."""
    figures = []
    save = plots._save

    def recording_save(figure, path):
        panels = [{"title": axes.get_title(), "texts": [text.get_text() for text in axes.texts],
                   "lines": {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in axes.lines},
                   "points": [(np.asarray(points.get_offsets()), points.get_facecolors()[:, :3].copy())
                              for points in axes.collections],
                   "image": axes.images[0].get_array().data.copy() if axes.images else None}
                  for axes in figure.axes if axes.get_label() != "<colorbar>"]
        legends = list(figure.legends) + [axes.get_legend() for axes in figure.axes if axes.get_legend()]
        labels = [text.get_text() for legend in legends for text in legend.get_texts()]
        figures.append({"panels": panels, "legend": labels})
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    return figures


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


def test_plot_embeddings_2d_with_subsampling(tmp_path, drawn):
    embeddings, labels = clusters()
    names = np.array(["cat", "dog", "frog", "ship"])[labels]
    path = plots.plot_embeddings_2d(tmp_path / "map.png", [("source", embeddings, names, "o"),
                                                          ("target", embeddings[:6] + 1, names[:6], "x")],
                                    "source and target", method="pca", max_points=30)
    assert path == str(tmp_path / "map.png")
    assert_png(path)
    (panel,) = drawn[0]["panels"]
    assert panel["title"] == "source and target"
    assert [len(xy) for xy, _ in panel["points"]] == [24, 6]  # thinned to 30 (_subsample's shares)
    assert drawn[0]["legend"] == ["source", "target", "cat", "dog", "frog", "ship"]
    colours = plots._label_colours([("source", None, names, "o")])
    label_of = {tuple(np.round(colour, 3)): name for name, colour in colours.items()}
    (source, source_rgb), (target, target_rgb) = panel["points"]
    source_labels = np.array([label_of[tuple(np.round(rgb, 3))] for rgb in source_rgb])
    assert [label_of[tuple(np.round(rgb, 3))] for rgb in target_rgb] == ["cat"] * 6
    assert knn_agreement(source, np.unique(source_labels, return_inverse=True)[1], k=3) > 0.9  # clusters kept
    # the target is 6 cat images moved by 1: drawn among the cats
    nearest = np.linalg.norm(target[:, None] - source[None], axis=-1).argmin(axis=1)
    assert np.all(source_labels[nearest] == "cat")


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


def test_plot_embedding_transfer(tmp_path, drawn):
    embeddings, labels = clusters(count=3, per_class=10)
    before, after = embeddings[::2] + 20, embeddings[::2] + 0.5
    path = plots.plot_embedding_transfer(tmp_path / "transfer.png", (embeddings, labels),
                                         (before, labels[::2]), (after, labels[::2]), method="pca")
    assert_png(path)
    before_panel, after_panel = drawn[0]["panels"]
    assert (before_panel["title"], after_panel["title"]) == ("before transfer", "after transfer")
    assert [len(xy) for xy, _ in before_panel["points"] + after_panel["points"]] == [30, 15, 30, 15]
    np.testing.assert_array_equal(before_panel["points"][0][0], after_panel["points"][0][0])  # one shared map
    # moved by +20 the target lies apart from the source; moved back to +0.5 it lies on its own points
    source = before_panel["points"][0][0]
    gap = [np.linalg.norm(panel["points"][1][0] - source[::2], axis=1).mean() for panel in (before_panel, after_panel)]
    assert gap[1] < gap[0] / 5, gap
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
def test_plot_loss_curves(tmp_path, history, drawn):
    assert_png(plots.plot_loss_curves(tmp_path / "loss.png", history))
    panels = drawn[0]["panels"]
    others = sorted(set(history) - {"loss", "val_loss"})
    assert [panel["title"] for panel in panels] == ["loss"] + (["metrics"] if others else [])
    assert [list(panel["lines"]) for panel in panels] == [[k for k in ("loss", "val_loss") if k in history]] + \
        ([others] if others else [])
    for panel in panels:
        for key, (x, y) in panel["lines"].items():
            expected = [np.nan if value is None else value for value in history[key]]
            np.testing.assert_array_equal(x, np.arange(1, len(expected) + 1))
            np.testing.assert_array_equal(y, expected)  # NaN where the value is missing: a gap


def test_plot_loss_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_loss_curves(tmp_path / "loss.png", {})


@pytest.mark.parametrize("classes, normalize", [(3, "true"), (3, None), (25, "true")])
def test_plot_confusion_matrix(tmp_path, classes, normalize, drawn):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, classes, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, classes, 200))
    names = np.array([f"class {i}" for i in range(classes)])
    if normalize is None:  # labels given as names rather than indices
        y_true, y_pred = names[y_true], names[y_pred]
    assert_png(plots.plot_confusion_matrix(tmp_path / "cm.png", y_true, y_pred, names, normalize=normalize))
    (panel,) = drawn[0]["panels"]
    counts = np.zeros((classes, classes))
    np.add.at(counts, (np.searchsorted(names, y_true), np.searchsorted(names, y_pred)), 1) if normalize is None \
        else np.add.at(counts, (y_true, y_pred), 1)
    expected = counts / counts.sum(axis=1, keepdims=True) if normalize == "true" else counts
    np.testing.assert_allclose(panel["image"], expected)  # rows: true class
    assert panel["title"] == "confusion matrix" + (" (normalised over true)" if normalize else "")
    if classes <= plots.MAX_CONFUSION_VALUES:  # the values are written in the cells
        assert panel["texts"] == [f"{value:.2f}" if normalize else f"{value:.0f}" for value in expected.ravel()]
    else:
        assert panel["texts"] == []


def test_plot_confusion_matrix_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="y_pred"):
        plots.plot_confusion_matrix(tmp_path / "cm.png", [0, 1, 1], [0, 1], ["a", "b"])


def test_plot_reliability_diagram(tmp_path, drawn):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), 300)
    labels = rng.integers(0, 4, 300)
    sharp = probabilities ** 3
    assert_png(plots.plot_reliability_diagram(tmp_path / "reliability.png",
                                              {"raw": (probabilities, labels), "sharp": (sharp, labels)}))
    (panel,) = drawn[0]["panels"]
    lines = list(panel["lines"].values())
    np.testing.assert_array_equal(lines[0], ([0, 1], [0, 1]))  # the diagonal
    for (confidence, accuracy), scores in zip(lines[1:], (probabilities, sharp)):
        # by hand: the right share and the mean top probability of each occupied 1/15-wide bin
        top = scores.max(axis=1)
        bins = np.maximum(np.ceil(top * 15).astype(int) - 1, 0)  # bins (b/15, (b+1)/15]
        occupied = np.unique(bins)
        np.testing.assert_allclose(confidence, [top[bins == b].mean() for b in occupied])
        np.testing.assert_allclose(accuracy, [np.mean(scores.argmax(axis=1)[bins == b] == labels[bins == b])
                                              for b in occupied])
    assert [label.split(" (ECE")[0] for label in drawn[0]["legend"]] == ["perfectly calibrated", "raw", "sharp"]
    with pytest.raises(ValueError, match="no curves"):
        plots.plot_reliability_diagram(tmp_path / "none.png", {})
