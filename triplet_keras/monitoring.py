"""Training health checks: stop on a NaN loss, warn when the embedding collapses.

- :class:`NaNGuard` raises :class:`TrainingDivergedError` at the first batch or epoch whose loss
  is NaN or infinite, before any checkpoint of that epoch is written, with the likely causes.
- :class:`EpochTensorBoard` is Keras' TensorBoard callback with epoch-level summaries.

Both batch hooks are ``async_safe``: Keras runs a callback's ``on_train_batch_end`` on a worker thread
only when every callback passed to ``fit`` is async-safe or has no batch hook; otherwise it converts
each step's logs to Python floats on the training thread, a host-device sync per step that stops the
next step from being dispatched early. A batch hook off the training thread must not read
``self.model``: on JAX that property copies the training state back into the model while the next
step may already own (and have donated) those buffers. A bad batch found on the worker thread is
raised at a later batch or, at the latest, when the epoch ends, before any ``on_epoch_end`` callback
saves anything.
- :class:`CollapseMonitor` embeds a fixed probe batch after each epoch and logs
  ``embedding_mean_distance`` (mean L2 distance between probe embeddings), ``active_fraction``
  (share of triplets that violate the margin) and ``collapse`` (1.0 on a warned epoch). It prints
  a warning line when, for ``patience`` epochs in a row, the distance is near 0 (every image maps
  to the same point) or the active fraction is near 0 (nothing left to learn) or near 1 (the loss
  cannot separate any class).
"""
import math
import sys

import keras
import numpy as np

from triplet_keras.models import embed_images
from triplet_keras.distances import distance_name, pairwise


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message lists the likely causes."""


def diverged_message(where, loss, learning_rate=None, precision=None):
    """What went wrong at ``where`` and what to try, as one paragraph."""
    causes = [f"the learning rate{f' ({learning_rate:g})' if learning_rate else ''} is too high: try it 10x lower"]
    if precision == "mixed_float16":
        causes.append("float16 overflow under mixed_float16: use precision mixed_bfloat16 or float32")
    else:
        causes.append("float16 overflow (with mixed_float16): use precision mixed_bfloat16 or float32")
    causes.append("bad input images (NaN or infinite pixels, or values far outside 0..255): check the dataset")
    return (f"training stopped: the loss became {loss} at {where}. Likely causes: " + "; ".join(causes)
            + ". The checkpoints hold the last epoch with a finite loss.")


class NaNGuard(keras.callbacks.Callback):
    """Raise :class:`TrainingDivergedError` when the training or validation loss is not finite.

    Put it before any checkpointing callback, so a diverged epoch is never saved."""

    async_safe = True

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.learning_rate = None

    def on_epoch_begin(self, epoch, logs=None):
        """Note the epoch and its learning rate on the training thread (the batch hook may run on another)."""
        self.epoch = epoch
        optimizer = getattr(self.model, "optimizer", None)
        self.learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) if optimizer else None

    def on_train_batch_end(self, batch, logs=None):
        self._check((logs or {}).get("loss"), f"epoch {self.epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            self._check((logs or {}).get(key), f"the end of epoch {epoch + 1} ({key})")

    def _check(self, loss, where):
        if loss is None or math.isfinite(float(loss)):
            return
        raise TrainingDivergedError(diverged_message(where, float(loss), self.learning_rate,
                                                     keras.config.dtype_policy().name))


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard summaries once per epoch (``update_freq="epoch"``), with no batch hook. Keras' own
    batch hook would then only write the TensorFlow op graph, reaching through ``self.model``; the
    Keras model summary is still written."""

    async_safe = True

    def __init__(self, log_dir, **kwargs):
        super().__init__(log_dir, update_freq="epoch", **kwargs)

    def on_train_batch_end(self, batch, logs=None):
        """Nothing per batch (see the class docstring)."""


def active_fraction(embeddings, labels, margin, squared=True):
    """Share of all valid triplets (a, p, n) of a batch with d(a, p) + margin > d(a, n); None if there are none."""
    x = np.asarray(embeddings, np.float64)
    d = pairwise(x, None, distance_name(None, squared))
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(labels), dtype=bool)
    valid = positive[:, :, None] & ~same[:, None, :]
    if not valid.any():
        return None
    return float(np.mean((d[:, :, None] + margin > d[:, None, :])[valid]))


def mean_distance(embeddings):
    """Mean L2 distance over all pairs of distinct rows."""
    x = np.asarray(embeddings, np.float64)
    d = pairwise(x, None, "l2")
    return float(d.sum() / max(len(x) * (len(x) - 1), 1))


class CollapseMonitor(keras.callbacks.Callback):
    """Log collapse signals on a probe batch each epoch and warn after ``patience`` bad epochs in a row.

    ``split`` is a dataset split (``load(indices)`` and ``labels``); ``probe_size`` of its rows,
    drawn with ``seed``, form the probe. The active fraction is taken from ``remined_active_fraction``
    when an earlier callback logged it (offline mining), else computed over every triplet of the
    probe with ``margin`` and ``squared`` as in the loss. Warnings are kept in ``self.warnings``.
    """

    def __init__(self, encoder, split, margin=0.2, squared=True, patience=3, min_distance=0.01,
                 fraction_range=(0.01, 0.99), probe_size=128, seed=0, stream=None):
        super().__init__()
        rows = np.random.default_rng(seed).permutation(len(split))[:probe_size]
        self.images, self.labels = split.load(np.sort(rows)), split.labels[np.sort(rows)]
        self.encoder = encoder
        self.margin, self.squared = margin, squared
        self.patience, self.min_distance, self.fraction_range = patience, min_distance, fraction_range
        self.stream = stream
        self.bad_epochs = 0
        self.warnings = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        embeddings = embed_images(self.encoder, self.images, batch_size=len(self.images), progress=False)
        distance = mean_distance(embeddings)
        fraction = logs.get("remined_active_fraction")
        if fraction is None:
            fraction = active_fraction(embeddings, self.labels, self.margin, self.squared)
        logs["embedding_mean_distance"] = distance
        if fraction is not None:
            logs["active_fraction"] = float(fraction)
        low, high = self.fraction_range
        problems = []
        if distance < self.min_distance:
            problems.append(f"mean embedding distance {distance:.2g} < {self.min_distance:g}: "
                            "the embeddings are converging to one point")
        if fraction is not None and not low <= fraction <= high:
            problems.append(f"active triplet fraction {float(fraction):.3f} outside [{low:g}, {high:g}]: "
                            + ("no triplet is informative any more" if fraction < low
                               else "the loss separates no triplet"))
        self.bad_epochs = self.bad_epochs + 1 if problems else 0
        logs["collapse"] = float(self.bad_epochs >= self.patience)
        if self.bad_epochs >= self.patience:
            message = (f"warning: possible embedding collapse ({self.bad_epochs} epochs in a row, epoch "
                       f"{epoch + 1}): " + "; ".join(problems)
                       + ". Try a lower learning rate, a larger margin or another mining strategy.")
            self.warnings.append(message)
            print(message, file=self.stream or sys.stderr, flush=True)
