"""Data-parallel training on 2 virtual CPU devices matches single-device training (batch-hard loss).

Each backend runs in its own interpreter, because the device count is fixed when JAX or TensorFlow
starts. Batches are sorted by class, so each device's half holds only half of the classes: a loss
mined per device would pick other negatives, and the test checks that this would be detected.
"""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import contextlib, json, sys
import numpy as np
backend = sys.argv[1]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from triplet_keras.distribution import GlobalBatchLoss, data_parallel, replica_count
from triplet_keras.losses import OnlineTripletLoss, batch_hard_triplet_loss
from triplet_keras.models import L2Normalize

seen = []  # batch sizes the loss saw when traced

class Recorded(OnlineTripletLoss):
    def call(self, y_true, y_pred):
        seen.append(y_pred.shape[0])
        return super().call(y_true, y_pred)

def per_half(y_true, y_pred):  # what a loss mined on each device alone would compute
    return sum(batch_hard_triplet_loss(y_true[h:h + 8], y_pred[h:h + 8], 0.2) for h in (0, 8)) / 2

def encoder():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, L2Normalize()(keras.layers.Dense(8)(x)))

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (64, 8, 8, 3)).astype("float32")
labels = np.tile(np.repeat(np.arange(4), 4), 4).astype("int32")  # 4 batches of 16, sorted by class
keras.utils.set_random_seed(0)
initial = encoder().get_weights()

counts = []  # replica_count() inside each training scope

def train(loss, scope=None):
    with scope or contextlib.nullcontext():
        counts.append(replica_count())
        model = encoder()
        model.set_weights(initial)
        model.compile(keras.optimizers.SGD(0.5), loss)
    model.fit(images, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model

def gap(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))

single = train(Recorded("batch_hard")).get_weights()
halves = train(per_half).get_weights()
seen.clear()
devices = ["/cpu:0", "/cpu:1"] if backend == "tensorflow" else None
model = train(GlobalBatchLoss(Recorded("batch_hard")), data_parallel(devices))
parallel = model.get_weights()
print(json.dumps({"devices": counts, "seen": sorted({s for s in seen if s is not None}), "parallel_gap": gap(parallel, single),
                  "per_device_gap": gap(halves, single), "moved": gap(single, initial)}))
"""


def run_backend(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, backend], capture_output=True, text=True, env=env,
                            timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check(outcome):
    assert outcome["devices"] == [1, 1, 2]  # one device, one device, then data-parallel
    assert outcome["moved"] > 1e-2  # training changed the weights
    assert outcome["per_device_gap"] > 1e-3  # a per-device loss would be caught ...
    assert outcome["parallel_gap"] < 1e-5  # ... and data-parallel training matches one device


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax",
                    reason="the JAX variant runs with the JAX test run only")
def test_jax_data_parallel_matches_one_device_and_the_loss_sees_the_global_batch():
    outcome = run_backend("jax")
    check(outcome)
    assert outcome["seen"] == [16]  # traced once for the global batch of 16, not 8 per device


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") != "tensorflow",
                    reason="the tf.distribute variant runs with the TensorFlow test run only")
def test_tensorflow_mirrored_strategy_matches_one_device_with_the_all_gathered_loss():
    outcome = run_backend("tensorflow")
    check(outcome)
