"""NaN and collapse detection: forced NaN losses stop training with the causes; a constant model is reported."""
import io
import itertools
import threading

import keras
import numpy as np
import pytest

from triplet_keras.core.losses import OnlineTripletLoss
from triplet_keras.data.datasets import ArraySplit
from triplet_keras.models.networks import L2Normalize
from triplet_keras.pipeline.callbacks import CollapseMonitor, EpochTensorBoard, NaNGuard
from triplet_keras.pipeline.monitoring import TrainingDivergedError, active_fraction, mean_distance


def tiny_encoder(constant=False):
    """8x8 RGB -> 4-d unit vectors; ``constant``: the same vector for every image."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(4, kernel_initializer="zeros" if constant else "glorot_uniform",
                               bias_initializer="ones", trainable=not constant)
    return keras.Model(inputs, L2Normalize()(dense(x)))


def split(n=48, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    images[..., 0] = (labels * 60)[:, None, None].astype(np.uint8)  # a class signal
    return ArraySplit(images, labels)


class Saved(keras.callbacks.Callback):
    """Stands in for a checkpoint writer: records the epochs it was asked to save."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def fit(encoder, data, callbacks, epochs=3, learning_rate=0.01, loss=None, images=None):
    # A Python loss function (not traced once) needs eager steps to change from call to call.
    encoder.compile(keras.optimizers.Adam(learning_rate), loss or OnlineTripletLoss("batch_all", 0.2),
                    run_eagerly=loss is not None)
    images = data.load(np.arange(len(data))) if images is None else images
    return encoder.fit(images.astype("float32"), data.labels.astype("int32"), batch_size=16, epochs=epochs,
                       callbacks=callbacks, verbose=0, shuffle=False)


def test_nan_loss_stops_before_the_epoch_is_saved_and_names_the_causes():
    data = split()
    calls = itertools.count()

    def nan_in_second_epoch(y_true, y_pred):  # 3 batches per epoch: batch 5 is in epoch 2
        base = OnlineTripletLoss("batch_all", 0.2)(y_true, y_pred)
        return base * (np.nan if next(calls) >= 4 else 1.0)

    saved = Saved()
    with pytest.raises(TrainingDivergedError) as raised:
        fit(tiny_encoder(), data, [NaNGuard(), saved], loss=nan_in_second_epoch, learning_rate=0.02)
    message = str(raised.value)
    assert saved.epochs == [0]
    assert "epoch 2" in message and "nan" in message.lower()
    for cause in ("learning rate (0.02) is too high", "mixed_bfloat16 or float32", "bad input images"):
        assert cause in message


def test_nan_pixels_stop_training_at_the_first_batch():
    data = split()
    images = data.load(np.arange(len(data))).astype("float32")
    images[3, 0, 0, 0] = np.nan
    saved = Saved()
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch 1"):
        fit(tiny_encoder(), data, [NaNGuard(), saved], images=images)
    assert saved.epochs == []


def test_nan_validation_loss_is_caught_at_the_end_of_the_epoch():
    guard = NaNGuard()
    guard.set_model(tiny_encoder())
    guard.on_train_batch_end(0, {"loss": 0.5})
    with pytest.raises(TrainingDivergedError, match="val_loss"):
        guard.on_epoch_end(0, {"loss": 0.5, "val_loss": float("inf")})


def test_constant_model_is_reported_as_collapsed_after_patience_epochs():
    data, out = split(), io.StringIO()
    encoder = tiny_encoder(constant=True)
    monitor = CollapseMonitor(encoder, data, patience=2, stream=out)
    history = fit(encoder, data, [monitor], epochs=3).history
    assert history["collapse"] == [0.0, 1.0, 1.0]
    assert history["embedding_mean_distance"] == pytest.approx([0.0] * 3, abs=1e-6)
    assert history["active_fraction"] == [1.0] * 3  # every triplet violates the margin
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and len(monitor.warnings) == 2
    assert lines[0].startswith("warning: possible embedding collapse") and "converging to one point" in lines[0]


def test_healthy_training_gives_no_warning_and_uses_the_mined_fraction_when_logged():
    data, out = split(), io.StringIO()
    encoder = tiny_encoder()
    monitor = CollapseMonitor(encoder, data, patience=1, stream=out)
    history = fit(encoder, data, [monitor], epochs=2).history
    assert out.getvalue() == "" and history["collapse"] == [0.0, 0.0]
    assert all(d > 0.1 for d in history["embedding_mean_distance"])
    logs = {"remined_active_fraction": 0.0}
    monitor.on_epoch_end(2, logs)
    assert logs["active_fraction"] == 0.0 and "no triplet is informative" in out.getvalue()


def test_signals_match_brute_force():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(9, 3)), rng.integers(0, 3, 9)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    active = [d[a, p] ** 2 + 0.5 > d[a, n] ** 2 for a, p, n in itertools.permutations(range(9), 3)
              if labels[a] == labels[p] and labels[a] != labels[n]]
    assert active_fraction(x, labels, 0.5) == pytest.approx(np.mean(active))
    assert mean_distance(x) == pytest.approx(d.sum() / 72)
    assert active_fraction(x, np.zeros(9), 0.5) is None


class BatchThreads(keras.callbacks.Callback):
    """Records the thread each on_train_batch_end runs on."""

    def __init__(self, async_safe):
        super().__init__()
        self.async_safe = async_safe
        self.threads = set()

    def on_train_batch_end(self, batch, logs=None):
        self.threads.add(threading.get_ident())


def test_training_callbacks_leave_batch_logs_off_the_training_thread(tmp_path):
    """With only async-safe batch hooks (NaNGuard, EpochTensorBoard) Keras converts each step's logs on a
    worker thread, so the training loop never waits for the device at a step's end; and no hook syncs
    the JAX training state from that thread (a race with the next step's donated buffers)."""
    recorder = BatchThreads(async_safe=True)
    encoder, syncs = tiny_encoder(), set()
    if hasattr(encoder, "jax_state_sync"):
        sync = encoder.jax_state_sync
        encoder.jax_state_sync = lambda: (syncs.add(threading.get_ident()), sync())[1]
    fit(encoder, split(n=160), [NaNGuard(), EpochTensorBoard(str(tmp_path / "logs")), recorder], epochs=2)
    off_thread = keras.backend.backend() != "tensorflow"  # Keras' TensorFlow backend always dispatches in line
    assert recorder.threads and (threading.get_ident() not in recorder.threads) == off_thread
    assert syncs <= {threading.get_ident()}
    assert list((tmp_path / "logs" / "train").iterdir())  # the epoch summaries were written
    blocking = BatchThreads(async_safe=False)  # one hook that is not async-safe: every step syncs
    fit(tiny_encoder(), split(), [NaNGuard(), blocking], epochs=1)
    assert blocking.threads == {threading.get_ident()}
