"""Triplet losses over ``keras.ops``: they run on the TensorFlow, JAX and PyTorch backends.

Notation: for embeddings e_i with labels y_i, d(i, j) is a distance between e_i and e_j, one of
:mod:`triplet_keras.core.distances`: ``"squared_l2"`` (|e_i - e_j|^2, from |e_i|^2 - 2 e_i.e_j + |e_j|^2
clamped at 0), ``"l2"`` (its square root, with a zero-safe gradient) or ``"cosine"`` (1 - cos); the
legacy ``squared`` flag picks squared_l2 or l2 when ``distance`` is None.

A triplet (a, p, n) has y_a = y_p, a != p and y_a != y_n. Its hinge loss is
max(d(a, p) - d(a, n) + margin, 0); with ``soft=True`` it is the soft margin log(1 + exp(d(a, p) - d(a, n))).
Every loss computes in float32, whatever the dtype of its inputs (bf16 and fp16 included), returns 0
with finite gradients for a batch without any valid triplet, and never uses infinities in masked
minima or maxima.
"""
import keras
from keras import ops

from triplet_keras.core import distances_ops
from triplet_keras.core.distances import distance_name
from triplet_keras.core.strategies import online_strategy


def _hinge(difference, margin, soft):
    """max(difference + margin, 0), or the soft margin log(1 + exp(difference))."""
    if soft:
        return ops.softplus(difference)
    return ops.relu(difference + margin)


def pairwise_distances(embeddings, squared=False, distance=None):
    """Matrix D with D[i, j] = d(e_i, e_j) for a batch of embeddings (B, D), in float32, with an exact
    0 on the diagonal (:func:`triplet_keras.core.distances_ops.pairwise`)."""
    return distances_ops.pairwise(embeddings, None, distance_name(distance, squared))


def triplet_distance(x, y, squared=True, distance=None):
    """Row-wise d(x_i, y_i) for two (B, D) tensors, in float32."""
    return distances_ops.paired(x, y, distance_name(distance, squared))


def triplet_margin_loss(anchor, positive, negative, margin=0.2, squared=True, distance=None, soft=False):
    """Per-triplet FaceNet loss, shape (B,): max(d(a, p) - d(a, n) + margin, 0).

    With ``squared=True`` (the FaceNet choice) d is the squared L2 distance; ``distance`` may name
    "squared_l2", "l2" or "cosine" instead; ``soft=True`` gives log(1 + exp(d(a, p) - d(a, n))).
    """
    d_ap = triplet_distance(anchor, positive, squared, distance)
    d_an = triplet_distance(anchor, negative, squared, distance)
    return _hinge(d_ap - d_an, margin, soft)


def _label_masks(labels):
    """Float masks (B, B): same label and i != j (positive pairs); different label (negative pairs)."""
    labels = ops.reshape(labels, (-1,))
    same = ops.cast(ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1)), "float32")
    not_self = 1.0 - ops.eye(ops.shape(labels)[0], dtype="float32")
    return same * not_self, 1.0 - same


def _triplet_mask(labels):
    """Float mask (B, B, B): 1 where (a, p, n) is a valid triplet (a != p, y_a = y_p != y_n)."""
    positive, negative = _label_masks(labels)
    return ops.expand_dims(positive, 2) * ops.expand_dims(negative, 1)


def _safe_mean(values, weights):
    """sum(values * weights) / max(sum(weights), 1): 0 when no weight is set."""
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def batch_all_triplet_loss(labels, embeddings, margin, squared=False, distance=None, soft=False):
    """Mean loss over the valid triplets of the batch whose loss is positive.

    loss = sum_{a,p,n valid} l(a, p, n) / #{valid triplets with l(a, p, n) > 1e-16},
    l(a, p, n) = max(d(a, p) - d(a, n) + margin, 0). Returns ``(loss, fraction_positive)`` where
    fraction_positive = #{l > 1e-16} / #{valid triplets} (0 when the batch has no valid triplet).
    """
    d = pairwise_distances(embeddings, squared, distance)
    mask = _triplet_mask(labels)
    losses = _hinge(ops.expand_dims(d, 2) - ops.expand_dims(d, 1), margin, soft) * mask
    positive = ops.cast(ops.greater(losses, 1e-16), "float32")
    num_positive = ops.sum(positive)
    fraction_positive = num_positive / ops.maximum(ops.sum(mask), 1.0)
    return ops.sum(losses) / ops.maximum(num_positive, 1.0), fraction_positive


def batch_hard_triplet_loss(labels, embeddings, margin, squared=False, distance=None, soft=False):
    """Mean over anchors of max(max_p d(a, p) - min_n d(a, n) + margin, 0).

    The hardest positive is the farthest same-label sample, the hardest negative the closest
    other-label sample. Anchors without a positive or without a negative do not count.
    """
    d = pairwise_distances(embeddings, squared, distance)
    positive, negative = _label_masks(labels)
    hardest_positive = ops.max(d * positive, axis=1)
    # Push non-negatives above every distance instead of using +inf.
    hardest_negative = ops.min(d + ops.stop_gradient(ops.max(d)) * (1.0 - negative), axis=1)
    valid = ops.cast(ops.logical_and(ops.any(positive > 0, axis=1), ops.any(negative > 0, axis=1)), "float32")
    return _safe_mean(_hinge(hardest_positive - hardest_negative, margin, soft), valid)


def semi_hard_triplet_loss(labels, embeddings, margin, squared=False, distance=None, soft=False):
    """Mean over positive pairs (a, p) of max(d(a, p) - d(a, n*) + margin, 0).

    n* is the semi-hard negative: the closest negative that is farther from the anchor than the
    positive, d(a, n*) = min {d(a, n) : y_n != y_a, d(a, n) > d(a, p)}. Where no negative is farther
    than the positive, n* is the farthest negative. Pairs whose anchor has no negative do not count.
    """
    d = pairwise_distances(embeddings, squared, distance)
    positive, negative = _label_masks(labels)
    d_ap = ops.expand_dims(d, 2)  # (a, p, 1)
    d_an = ops.expand_dims(d, 1)  # (a, 1, n)
    outside = ops.cast(ops.greater(d_an, d_ap), "float32") * ops.expand_dims(negative, 1)
    big = ops.stop_gradient(ops.max(d))
    closest_outside = ops.min(d_an + big * (1.0 - outside), axis=2)
    farthest_negative = ops.max(d * negative, axis=1, keepdims=True)
    has_outside = ops.cast(ops.any(outside > 0, axis=2), "float32")
    d_neg = has_outside * closest_outside + (1.0 - has_outside) * farthest_negative
    has_negative = ops.cast(ops.any(negative > 0, axis=1, keepdims=True), "float32")
    return _safe_mean(_hinge(d - d_neg, margin, soft), positive * has_negative)


ONLINE_LOSSES = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "batch_semi_hard": semi_hard_triplet_loss,
}


@keras.saving.register_keras_serializable(package="triplet_keras")
class TripletMarginLoss(keras.losses.Loss):
    """Keras loss for the merge model: y_pred is (B, 3, D) = stacked (anchor, positive, negative).

    The per-triplet loss is :func:`triplet_margin_loss`; ``y_true`` is ignored.
    """

    def __init__(self, margin=0.2, squared=True, distance=None, soft=False, name="triplet_margin_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.squared = bool(squared)
        self.distance = distance_name(distance, squared) if distance is not None else None
        self.soft = bool(soft)

    def call(self, y_true, y_pred):
        return triplet_margin_loss(
            y_pred[:, 0], y_pred[:, 1], y_pred[:, 2], self.margin, self.squared, self.distance, self.soft
        )

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, squared=self.squared, distance=self.distance, soft=self.soft)
        return config


@keras.saving.register_keras_serializable(package="triplet_keras")
class OnlineTripletLoss(keras.losses.Loss):
    """Keras loss over (labels, embeddings) that mines triplets inside the batch.

    ``strategy`` is one of :data:`triplet_keras.core.strategies.ONLINE_STRATEGIES`: "batch_all",
    "batch_hard" or "batch_semi_hard" ("semi_hard" too), computed by the function ONLINE_LOSSES names.
    """

    def __init__(
        self, strategy="batch_hard", margin=0.2, squared=False, distance=None, soft=False, name=None, **kwargs
    ):
        strategy = online_strategy(strategy)
        super().__init__(name=name or ONLINE_LOSSES[strategy].__name__, **kwargs)
        self.strategy = strategy
        self.margin = float(margin)
        self.squared = bool(squared)
        self.distance = distance_name(distance, squared) if distance is not None else None
        self.soft = bool(soft)

    def call(self, y_true, y_pred):
        loss = ONLINE_LOSSES[self.strategy](y_true, y_pred, self.margin, self.squared, self.distance, self.soft)
        return loss[0] if self.strategy == "batch_all" else loss

    def get_config(self):
        config = super().get_config()
        config.update(
            strategy=self.strategy, margin=self.margin, squared=self.squared, distance=self.distance, soft=self.soft
        )
        return config
