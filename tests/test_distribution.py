"""Data-parallel training on 2 virtual CPU devices matches single-device training (batch-hard loss).

Each backend runs in its own interpreter, because the device count is fixed when JAX or TensorFlow
starts. Batches are sorted by class, so each device's half holds only half of the classes: a loss
mined per device would pick other negatives, and the test checks that this would be detected.
The multi-process test does the same with 2 JAX processes on 127.0.0.1 (one CPU device each).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The model, data and helpers both scripts share; run after the backend is set up.
MODEL = r"""
import contextlib, json, sys
import numpy as np
import keras
from triplet_keras.core.losses import OnlineTripletLoss, batch_hard_triplet_loss
from triplet_keras.models.distribution import GlobalBatchLoss, ProcessShard, data_parallel, replica_count
from triplet_keras.models.networks import L2Normalize

def per_half(y_true, y_pred):  # what a loss mined on each device alone would compute
    return sum(batch_hard_triplet_loss(y_true[h:h + 8], y_pred[h:h + 8], 0.2) for h in (0, 8)) / 2

def encoder():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, L2Normalize()(keras.layers.Dense(8)(x)))

def gap(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (64, 8, 8, 3)).astype("float32")
labels = np.tile(np.repeat(np.arange(4), 4), 4).astype("int32")  # 4 batches of 16, sorted by class
keras.utils.set_random_seed(0)
initial = encoder().get_weights()

class GlobalBatches(keras.utils.PyDataset):  # the 4 batches of 16, in order
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return images[16 * index : 16 * index + 16], labels[16 * index : 16 * index + 16]

counts = []  # replica_count() inside each training scope

def train(loss, scope=None, batches=None):
    with scope or contextlib.nullcontext():
        counts.append(replica_count())
        model = encoder()
        model.set_weights(initial)
        model.compile(keras.optimizers.SGD(0.5), loss)
    model.fit(batches or GlobalBatches(), epochs=1, shuffle=False, verbose=0)
    return model
"""

SCRIPT = r"""
import sys
backend = sys.argv[1]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + MODEL + r"""
seen = []  # batch sizes the loss saw when traced

class Recorded(OnlineTripletLoss):
    def call(self, y_true, y_pred):
        seen.append(y_pred.shape[0])
        return super().call(y_true, y_pred)

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
                            timeout=300, cwd=ROOT)
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


# Process i of n (n = 1: the one-process reference); argv: i, n, coordinator "127.0.0.1:port".
MULTI_PROCESS_SCRIPT = r"""
import sys
process_id, num_processes, coordinator = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if num_processes > 1:
    from triplet_keras.models.distribution import initialize_processes
    initialize_processes(coordinator, num_processes, process_id)
""" + MODEL + r"""
outcome = {}
if num_processes > 1:
    model = train(OnlineTripletLoss("batch_hard"), data_parallel(), ProcessShard(GlobalBatches()))
else:
    model = train(OnlineTripletLoss("batch_hard"))
    outcome["per_process_gap"] = gap(train(per_half).get_weights(), model.get_weights())
    outcome["moved"] = gap(model.get_weights(), initial)
print(json.dumps({**outcome, "devices": counts[0], "weights": [w.tolist() for w in model.get_weights()]}))
"""


def free_local_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.end_to_end(seconds=40)
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax",
                    reason="multi-process training is JAX's: it runs with the JAX test run only")
def test_multi_process_jax_training_over_two_localhost_processes_matches_one_process(tmp_path):
    """Two processes (one CPU device each, Gloo collectives over 127.0.0.1) each feed half of every
    global batch of 16; both end with the weights of one process trained on the global batches."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    coordinator = f"127.0.0.1:{free_local_port()}"
    # Output goes to files: a process blocked on a full pipe would hold the others at JAX's exit barrier.
    logs, runs = [], []
    for process_id, count in ((0, 2), (1, 2), (0, 1)):
        stdout, stderr = (open(tmp_path / f"{process_id}_of_{count}.{kind}", "w+") for kind in ("out", "err"))
        logs.append((stdout, stderr))
        runs.append(subprocess.Popen([sys.executable, "-c", MULTI_PROCESS_SCRIPT, str(process_id), str(count),
                                      coordinator], stdout=stdout, stderr=stderr, text=True, env=env, cwd=ROOT))
    try:
        for run in runs:
            run.wait(timeout=150)
    finally:
        for run in runs:
            run.kill()
    outcomes = []
    for run, (stdout, stderr) in zip(runs, logs):
        stdout.seek(0), stderr.seek(0)
        assert run.returncode == 0, stderr.read()[-3000:]
        outcomes.append(json.loads(stdout.read().strip().splitlines()[-1]))
    first, second, single = outcomes
    assert first["devices"] == second["devices"] == 2 and single["devices"] == 1
    assert single["moved"] > 1e-2 and single["per_process_gap"] > 1e-3  # a per-process loss would be caught
    for outcome in (first, second):
        for weights, reference in zip(outcome["weights"], single["weights"]):
            np.testing.assert_allclose(weights, reference, atol=1e-5, rtol=0)


def test_process_shard_hands_each_process_its_rows_of_every_batch():
    import keras

    from triplet_keras.models.distribution import ProcessShard

    class Batches(keras.utils.PyDataset):
        epochs_ended = 0

        def __len__(self):
            return 2

        def __getitem__(self, index):
            rows = np.arange(6 * index, 6 * index + 6)
            return (rows, rows * 10), rows % 2

        def on_epoch_end(self):
            self.epochs_ended += 1

    batches = Batches()
    shards = [ProcessShard(batches, process_id, 3) for process_id in range(3)]
    assert [len(shard) for shard in shards] == [2, 2, 2]
    (images, more), labels = shards[2][1]
    np.testing.assert_array_equal(images, [10, 11])
    np.testing.assert_array_equal(more, [100, 110])
    np.testing.assert_array_equal(labels, [0, 1])
    joined = np.concatenate([shard[0][0][0] for shard in shards])
    np.testing.assert_array_equal(joined, np.arange(6))  # the processes' rows make up the global batch
    shards[0].on_epoch_end()
    assert batches.epochs_ended == 1
    with pytest.raises(ValueError, match="does not divide"):
        ProcessShard(batches, 0, 4)[0]
    with pytest.raises(ValueError, match="process_id"):
        ProcessShard(batches, 2, 2)


def test_initialize_processes_rejects_another_backend_or_a_bad_process_id():
    import keras

    from triplet_keras.models.distribution import initialize_processes

    message = "process_id" if keras.backend.backend() == "jax" else "jax backend"
    with pytest.raises(ValueError, match=message):
        initialize_processes("127.0.0.1:1", 2, 2)  # checked before any connection is tried
