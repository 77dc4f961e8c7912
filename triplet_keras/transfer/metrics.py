"""Classification, retrieval and clustering metrics over embeddings, named the way the field names them.

Retrieval (Musgrave et al., "A Metric Learning Reality Check", 2020): each query ranks the reference
embeddings by distance (itself excluded when queries are the references). R is the number of
references sharing the query's label and rel(i) is 1 when the i-th ranked reference does.

* precision@1 = rel(1);
* R-precision = (1/R) sum_{i<=R} rel(i);
* MAP@R = (1/R) sum_{i<=R} P(i) rel(i), with P(i) = (1/i) sum_{j<=i} rel(j);
* recall@k = 1 if some rel(i) = 1 for i <= k (the "Recall@K" of metric-learning papers).

Each is averaged over the queries with R >= 1 (a query without any relevant reference is skipped).
"""
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import accuracy_score, adjusted_mutual_info_score, normalized_mutual_info_score

from triplet_keras.core.distances import paired, pairwise


def accuracy(y_true, y_pred):
    """Share of correct predictions."""
    return float(accuracy_score(y_true, y_pred))


def ranked_relevance(embeddings, labels, queries=None, query_labels=None, depth=0, metric="cosine",
                     batch_size=1024):
    """(relevance, R): relevance[q, i] is whether the i-th nearest reference has query q's label, for
    i < max(depth, max R); R[q] is the number of relevant references. Without ``queries`` every
    embedding queries the others (leave-one-out)."""
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    leave_one_out = queries is None
    if leave_one_out:
        queries, query_labels = embeddings, labels
    queries, query_labels = np.asarray(queries), np.asarray(query_labels)
    values, counts = np.unique(labels, return_counts=True)
    per_label = dict(zip(values.tolist(), counts.tolist()))
    r = np.array([per_label.get(label, 0) for label in query_labels.tolist()]) - int(leave_one_out)
    depth = min(max(depth, int(r.max())), len(embeddings) - int(leave_one_out))
    relevance = np.zeros((len(queries), depth), dtype=bool)
    for start in range(0, len(queries), batch_size):
        stop = min(start + batch_size, len(queries))
        d = pairwise(queries[start:stop], embeddings, metric)
        if leave_one_out:
            d[np.arange(stop - start), np.arange(start, stop)] = np.inf
        order = np.argsort(d, axis=1, kind="stable")[:, :depth]
        relevance[start:stop] = labels[order] == query_labels[start:stop, None]
    return relevance, r


def retrieval_scores(embeddings, labels, ks=(1, 2, 4, 8), metric="cosine", **kwargs):
    """precision_at_1, r_precision, map_at_r and recall_at_k for each k, from one ranking.

    kwargs: queries and query_labels (default: leave-one-out over the embeddings), batch_size.
    """
    relevance, r = ranked_relevance(embeddings, labels, depth=max(ks), metric=metric, **kwargs)
    keep = r > 0
    if not keep.any():
        raise ValueError("no query has a relevant reference")
    relevance, r = relevance[keep], r[keep]
    ranks = np.arange(1, relevance.shape[1] + 1)
    within = relevance & (ranks[None, :] <= r[:, None])
    precision = np.cumsum(within, axis=1) / ranks
    scores = {"precision_at_1": float(relevance[:, 0].mean()),
              "r_precision": float((within.sum(axis=1) / r).mean()),
              "map_at_r": float(((precision * within).sum(axis=1) / r).mean())}
    scores.update({f"recall_at_{k}": float(relevance[:, :k].any(axis=1).mean()) for k in ks})
    return scores


def precision_at_1(embeddings, labels, **kwargs):
    """Share of queries whose nearest reference has their label."""
    return retrieval_scores(embeddings, labels, ks=(1,), **kwargs)["precision_at_1"]


def r_precision(embeddings, labels, **kwargs):
    """Mean over queries of the share of relevant references among the R nearest."""
    return retrieval_scores(embeddings, labels, ks=(1,), **kwargs)["r_precision"]


def map_at_r(embeddings, labels, **kwargs):
    """Mean average precision at R (module docstring)."""
    return retrieval_scores(embeddings, labels, ks=(1,), **kwargs)["map_at_r"]


def recall_at_k(embeddings, labels, k, **kwargs):
    """Share of queries with at least one reference of their label among the k nearest."""
    return retrieval_scores(embeddings, labels, ks=(k,), **kwargs)[f"recall_at_{k}"]


def clustering_scores(embeddings, labels, n_clusters=None, seed=0):
    """NMI and AMI between the labels and k-means clusters (k = number of labels by default)."""
    n_clusters = len(np.unique(labels)) if n_clusters is None else n_clusters
    clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(embeddings)
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ami": float(adjusted_mutual_info_score(labels, clusters))}


def triplet_accuracy(anchor, positive, negative, metric="euclidean"):
    """Share of triplets with d(a, p) < d(a, n), ``metric`` one of :mod:`triplet_keras.core.distances`; pass
    embeddings[triplets.T] for an index array (n, 3)."""
    return float(np.mean(paired(anchor, positive, metric) < paired(anchor, negative, metric)))


def reliability_bins(probabilities, labels, n_bins=15):
    """(count, accuracy, confidence) per bin, each an array (n_bins,): the rows of ``probabilities``
    (n, n_classes) grouped by their confidence max_c p_c into equal-width bins (b/M, (b+1)/M] (a
    confidence of 0 joins the first); accuracy is the share whose argmax is ``labels`` (column
    indices), confidence the mean confidence (0 in an empty bin)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != (len(probabilities),) or not len(labels):
        raise ValueError(f"probabilities {probabilities.shape} and labels {labels.shape} must be (n, C) and (n,), "
                         "n > 0")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    seen = np.maximum(count, 1)
    return (count, np.bincount(bins, correct, minlength=n_bins) / seen,
            np.bincount(bins, confidence, minlength=n_bins) / seen)


def expected_calibration_error(probabilities, labels, n_bins=15):
    """ECE = sum_b (|B_b| / n) |accuracy(B_b) - confidence(B_b)| over the bins of reliability_bins
    (Guo et al., "On Calibration of Modern Neural Networks", 2017)."""
    count, accuracy_in_bin, confidence = reliability_bins(probabilities, labels, n_bins)
    return float(np.sum(count * np.abs(accuracy_in_bin - confidence)) / count.sum())
