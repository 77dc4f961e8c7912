"""Every Keras callback of a training run, in the order pipeline's training stage passes them to ``fit``
(the one callback of ``predict``, models.PredictProgress, stays beside embed_images, a lower layer).

- :class:`RemineCallback` re-embeds the triplet generator's split with the current encoder every few
  epochs and hands it freshly mined triplets (offline strategies).
- :class:`ValidationRetrieval` logs val_precision_at_1 on the validation split.
- :class:`NaNGuard` raises :class:`~triplet_keras.pipeline.monitoring.TrainingDivergedError` at the first batch
  or epoch whose loss is NaN or infinite, before any checkpoint of that epoch is written, with the
  likely causes.
- :class:`CollapseMonitor` embeds a fixed probe batch after each epoch and logs
  ``embedding_mean_distance`` (mean L2 distance between probe embeddings), ``active_fraction``
  (share of triplets that violate the margin) and ``collapse`` (1.0 on a warned epoch). It prints
  a warning line when, for ``patience`` epochs in a row, the distance is near 0 (every image maps
  to the same point) or the active fraction is near 0 (nothing left to learn) or near 1 (the loss
  cannot separate any class).
- :class:`TrainingState` writes best.keras, last.keras and their readable copies each epoch (see
  :mod:`triplet_keras.pipeline.checkpoints`).
- :class:`EpochTensorBoard` is Keras' TensorBoard callback with epoch-level summaries.

NaNGuard's and EpochTensorBoard's batch hooks are ``async_safe``: Keras runs a callback's
``on_train_batch_end`` on a worker thread only when every callback passed to ``fit`` is async-safe or
has no batch hook; otherwise it converts each step's logs to Python floats on the training thread, a
host-device sync per step that stops the next step from being dispatched early. A batch hook off the
training thread must not read ``self.model``: on JAX that property copies the training state back
into the model while the next step may already own (and have donated) those buffers. A bad batch
found on the worker thread is raised at a later batch or, at the latest, when the epoch ends, before
any ``on_epoch_end`` callback saves anything.
"""
import copy
import math
import os
import sys

import keras
import numpy as np

from triplet_keras.core.distances import distance_name, paired
from triplet_keras.core.mining import mine_triplets
from triplet_keras.models.networks import embed_images, save_model
from triplet_keras.pipeline.checkpoints import training_fingerprint, write_state_copies
from triplet_keras.pipeline.monitoring import TrainingDivergedError, active_fraction, diverged_message, mean_distance
from triplet_keras.transfer import metrics


class RemineCallback(keras.callbacks.Callback):
    """Every ``every`` epochs: embed ``generator.split`` with ``encoder`` and give the generator
    triplets mined from those embeddings (``mine_triplets`` with ``strategy``, ``margin``, seed
    ``seed + epoch + 1`` (epochs counted from 0) and ``mining_kwargs``, e.g. triplets_per_anchor, which must match the first
    mining).

    Adds ``remined_active_fraction`` to the epoch logs: the share of new triplets that violate
    the margin, d(a, p) + margin > d(a, n) (squared distances unless ``squared=False`` is given).
    A share near zero means training has run out of informative triplets; near one with small
    distances overall, that the embedding is collapsing.
    """

    def __init__(self, generator, encoder, every=1, strategy="semi_hard", margin=0.2, seed=0, **mining_kwargs):
        super().__init__()
        if every < 1:
            raise ValueError("every must be >= 1")
        self.generator = generator
        self.encoder = encoder
        self.every = every
        self.strategy = strategy
        self.margin = margin
        self.seed = seed
        self.mining_kwargs = mining_kwargs

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        split = self.generator.split
        embeddings = embed_images(self.encoder, split, progress=self.mining_kwargs.get("progress", True))
        triplets = mine_triplets(embeddings, split.labels, self.strategy, self.margin, seed=self.seed + epoch + 1,
                                 **self.mining_kwargs)
        self.generator.set_triplets(triplets)
        if logs is not None:
            anchors, positives, negatives = (embeddings[triplets[:, column]] for column in range(3))
            metric = distance_name(None, self.mining_kwargs.get("squared", True))
            d_ap, d_an = (paired(anchors, other, metric) for other in (positives, negatives))
            logs["remined_active_fraction"] = float(np.mean(d_ap + self.margin > d_an))


class ValidationRetrieval(keras.callbacks.Callback):
    """Adds val_precision_at_1 (leave-one-out nearest neighbour on the validation split) to the logs."""

    def __init__(self, encoder, split):
        super().__init__()
        self.encoder = encoder
        self.split = split

    def on_epoch_end(self, epoch, logs=None):
        embeddings = embed_images(self.encoder, self.split, progress=False)
        logs["val_precision_at_1"] = metrics.precision_at_1(embeddings, self.split.labels)


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


class TrainingState(keras.callbacks.Callback):
    """Each epoch: best.keras (when the monitored loss improves), then last.keras, each holding the
    training state inside its own zip, so the rename of last.keras commits the epoch; then the
    readable copies state.json and history.csv. A kill at any instant resumes from a whole epoch. The
    state records the fingerprint of ``config`` (checkpoints.training_fingerprint)."""

    def __init__(self, model_dir, config, monitor, state=None):
        super().__init__()
        self.model_dir = model_dir
        self.fingerprint = training_fingerprint(config)
        self.monitor = monitor
        self.state = copy.deepcopy(state) if state else {"epoch": -1, "best": None, "history": {}}

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        state = copy.deepcopy(self.state)
        for key, value in logs.items():
            state["history"].setdefault(key, []).append(value)
        value = logs.get(self.monitor, logs.get("loss"))
        improved = state["best"] is None or (value is not None and value < state["best"])
        state.update(epoch=epoch, params=self.fingerprint, best=value if improved else state["best"])
        if improved:
            save_model(self.model, os.path.join(self.model_dir, "best.keras"), state=state)
        save_model(self.model, os.path.join(self.model_dir, "last.keras"), state=state)
        self.state = state
        write_state_copies(self.model_dir, state)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard summaries once per epoch (``update_freq="epoch"``), with no batch hook. Keras' own
    batch hook would then only write the TensorFlow op graph, reaching through ``self.model``; the
    Keras model summary is still written."""

    async_safe = True

    def __init__(self, log_dir, **kwargs):
        super().__init__(log_dir, update_freq="epoch", **kwargs)

    def on_train_batch_end(self, batch, logs=None):
        """Nothing per batch (see the class docstring)."""
