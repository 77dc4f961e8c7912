"""PNG plots of a run: 2-D embedding maps (t-SNE or PCA), the transfer before/after, loss curves, the
confusion matrix and reliability diagrams.

Figures are drawn with matplotlib's object API on the Agg canvas (never pyplot, so a user's pyplot
state and backend are left alone) and saved atomically. Every function returns the path it wrote.
"""
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from triplet_keras.core.export import atomic_write
from triplet_keras.transfer.metrics import expected_calibration_error, reliability_bins

MAX_LEGEND_LABELS = 20
MAX_CONFUSION_VALUES = 20


def _figure(width, height):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    """Save ``figure`` as a PNG at ``path`` atomically, free it, and return ``path``."""
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    finally:
        figure.clear()


def embed_2d(embeddings, method="tsne", seed=0):
    """(n, 2) coordinates of ``embeddings`` (n, D): t-SNE (init="pca", perplexity min(30, n - 1)) or PCA.

    Inputs too small to project (t-SNE with n < 5, PCA with n < 3 or D <= 2) use their first two
    dimensions, centred, with zeros where D < 2.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, D), got shape {x.shape}")
    n, dims = x.shape
    if method == "tsne" and n >= 5:
        # On small inputs OpenMP threads cost far more than they save (seconds instead of a fraction
        # of one when the cores are busy), so t-SNE then runs on one thread.
        with threadpool_limits(1 if n < 1000 else None, user_api="openmp"):
            return TSNE(2, perplexity=min(30, n - 1), init="pca", random_state=seed).fit_transform(x)
    if n >= 3 and dims > 2:
        return PCA(2, random_state=seed).fit_transform(x)
    coordinates = np.zeros((n, 2))
    if n:
        coordinates[:, :min(dims, 2)] = x[:, :2] - x[:, :2].mean(axis=0)
    return coordinates


def _check_groups(groups):
    """Groups as (name, float array (n, D), str labels (n,), marker), all with the same D."""
    checked = []
    for name, embeddings, labels, marker in groups:
        embeddings = np.asarray(embeddings, dtype=np.float64)
        labels = np.asarray(labels).astype(str)
        if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
            raise ValueError(f"group {name!r}: embeddings {embeddings.shape} and labels {labels.shape} "
                             "must be (n, D) and (n,)")
        checked.append((name, embeddings, labels, marker))
    if not checked:
        raise ValueError("no groups to plot")
    if len({group[1].shape[1] for group in checked}) > 1:
        raise ValueError("all groups need the same embedding dimension")
    return checked


def _subsample(groups, max_points, seed):
    """Keep at most ``max_points`` points in total, shared evenly: each group gets an equal share,
    and what small groups leave over goes to the larger ones. Each group draws its points with its
    own generator seeded by ``seed``, so equal-sized groups (a set before and after a move) keep the
    same points."""
    counts, budget = {}, max_points
    for left, index in enumerate(sorted(range(len(groups)), key=lambda i: len(groups[i][1]))):
        counts[index] = min(len(groups[index][1]), budget // (len(groups) - left))
        budget -= counts[index]
    thinned = []
    for index, (name, embeddings, labels, marker) in enumerate(groups):
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), counts[index], replace=False))
        thinned.append((name, embeddings[keep], labels[keep], marker))
    return thinned


def _project(groups, method, seed):
    """One shared 2-D map of all groups, split back into one (n_i, 2) array per group."""
    coordinates = embed_2d(np.concatenate([group[1] for group in groups]), method, seed)
    return np.split(coordinates, np.cumsum([len(group[1]) for group in groups])[:-1])


def _label_colours(groups):
    """Colour for each label (integers in numeric order first, then other names)."""
    names = sorted({label for group in groups for label in group[2]},
                   key=lambda label: (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label))
    if len(names) <= 20:
        palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    else:
        palette = colormaps["turbo"](np.linspace(0, 1, len(names)))
    return dict(zip(names, palette))


def _draw_map(axes, groups, coordinates, colours, title):
    for (name, _, labels, marker), points in zip(groups, coordinates):
        axes.scatter(points[:, 0], points[:, 1], color=[colours[label] for label in labels], marker=marker,
                     s=14, alpha=0.8, linewidths=0.8)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])


def _map_legend(figure, groups, colours):
    """One legend: a grey marker per group, and a colour per label when there are few labels."""
    handles = [Line2D([], [], linestyle="", marker=marker, color="0.3", label=name)
               for name, _, _, marker in groups]
    if len(colours) <= MAX_LEGEND_LABELS:
        handles += [Line2D([], [], linestyle="", marker="o", color=colour, label=label)
                    for label, colour in colours.items()]
    figure.legend(handles=handles, loc="outside right upper", fontsize="small")


def plot_embeddings_2d(path, groups, title, method="tsne", seed=0, max_points=2000):
    """One 2-D map of several groups of embeddings, projected together; colour = label, marker = group.

    ``groups``: list of (name, embeddings (n, D), labels (n,), marker), e.g.
    ``[("source", xs, ys, "o"), ("target", xt, yt, "x")]``. Groups are thinned evenly (with ``seed``)
    to at most ``max_points`` points in total.
    """
    groups = _subsample(_check_groups(groups), max_points, seed)
    coordinates = _project(groups, method, seed)
    colours = _label_colours(groups)
    figure = _figure(7.5, 6)
    _draw_map(figure.add_subplot(), groups, coordinates, colours, title)
    _map_legend(figure, groups, colours)
    return _save(figure, path)


def plot_embedding_transfer(path, source, target_before, target_after, seed=0, method="tsne",
                            max_points=2000, source_after=None):
    """Two panels, "before transfer" (source + target) and "after transfer" (source + moved target).

    Arguments are (embeddings, labels) pairs; the three sets share one 2-D map, so the panels compare.
    ``source_after``: the source embeddings mapped into the space of ``target_after`` (a transfer that
    moves both domains, such as a whitening); each panel then gets a map of its own.
    """
    before = [("source", *source, "o"), ("target", *target_before, "x")]
    after = [("source", source[0] if source_after is None else source_after, source[1], "o"),
             ("target", *target_after, "x")]
    if source_after is None:
        groups = _subsample(_check_groups(before + after[1:]), max_points, seed)
        coordinates = _project(groups, method, seed)
        panels = [(groups[:2], coordinates[:2]), (groups[::2], coordinates[::2])]
    else:
        panels = []
        for pair in (before, after):
            groups = _subsample(_check_groups(pair), max_points, seed)
            panels.append((groups, _project(groups, method, seed)))
    colours = _label_colours(panels[0][0] + panels[1][0])
    figure = _figure(13, 6)
    for column, (title, (groups, coordinates)) in enumerate(zip(("before transfer", "after transfer"), panels), 1):
        _draw_map(figure.add_subplot(1, 2, column), groups, coordinates, colours, title)
    _map_legend(figure, panels[0][0], colours)
    return _save(figure, path)


def plot_loss_curves(path, history):
    """Per-epoch curves from a Keras ``History.history``-like dict: loss and val_loss in one panel,
    any other metrics in a second. NaN (or None) values leave gaps; a single epoch shows as points."""
    if not history:
        raise ValueError("history is empty: no metrics to plot")
    losses = [key for key in ("loss", "val_loss") if key in history]
    others = sorted(key for key in history if key not in losses)
    panels = [(keys, title) for keys, title in ((losses, "loss"), (others, "metrics")) if keys]
    figure = _figure(6 * len(panels), 4.5)
    for column, (keys, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), column)
        for key in keys:
            values = np.array([np.nan if value is None else value for value in history[key]], dtype=float)
            axes.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=key)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def plot_confusion_matrix(path, y_true, y_pred, class_names, normalize="true"):
    """Confusion matrix (rows: true class) with ``class_names`` on the axes.

    ``y_true``/``y_pred`` hold class indices into ``class_names`` or the names themselves.
    ``normalize`` as in scikit-learn ("true", "pred", "all" or None for counts). Values are written
    in the cells for at most 20 classes; tick labels turn vertical when there are many or long names.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    y_true, y_pred, class_names = np.asarray(y_true), np.asarray(y_pred), [str(name) for name in class_names]
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal, non-empty 1-D")
    if not class_names:
        raise ValueError("class_names is empty")
    count = len(class_names)
    labels = np.arange(count) if np.issubdtype(y_true.dtype, np.integer) else class_names
    size = min(max(6, 0.4 * count + 3), 30)
    figure = _figure(size, size)
    axes = figure.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, display_labels=class_names, normalize=normalize, ax=axes,
        include_values=count <= MAX_CONFUSION_VALUES, values_format=".2f" if normalize else "d",
        xticks_rotation="vertical" if count > 10 or max(map(len, class_names)) > 8 else "horizontal")
    axes.set_title("confusion matrix" + (f" (normalised over {normalize})" if normalize else ""))
    return _save(figure, path)


def plot_reliability_diagram(path, curves, n_bins=15):
    """Reliability diagram: accuracy against mean confidence in each of ``n_bins`` equal-width
    confidence bins (metrics.reliability_bins; empty bins left out), one line per entry of ``curves``
    {name: (probabilities (n, C), labels (n,) column indices)}, its ECE in the legend, and the diagonal
    of perfect calibration."""
    if not curves:
        raise ValueError("no curves to plot")
    figure = _figure(5.5, 5)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, (probabilities, labels) in curves.items():
        count, accuracy, confidence = reliability_bins(probabilities, labels, n_bins)
        seen = count > 0
        ece = expected_calibration_error(probabilities, labels, n_bins)
        axes.plot(confidence[seen], accuracy[seen], marker="o", markersize=4, label=f"{name} (ECE {ece:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy",
             title=f"reliability ({n_bins} bins)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)
