"""Faults: SIGKILL during training and checkpoint writes, then resume; disk full and read-only folders.

The killed runs are real ``init.py`` processes on a tiny digits configuration. A kill at the moment a
hidden temporary file appears in the folder lands inside a checkpoint write.
"""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import init
from triplet_keras.models.networks import load_model, read_model_state
from triplet_keras.pipeline import end_to_end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {
    "dataset": "digits", "backbone": "small_cnn", "weights": "none", "embedding_dim": 8, "freeze_layers": 0,
    "strategy": "batch_all", "batch_size": 32, "samples_per_class": 4, "epochs": 3, "learning_rate": 0.003,
    "validation_fraction": 0.0, "test_fraction": 0.5, "shots": [1], "episodes": 2, "plot_method": "pca",
}


def is_temporary(name):
    return name.startswith(".") and ".tmp" in name


def temporaries(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if is_temporary(n)]


# init.py, except that it stops for good just before it renames a model file of the second checkpoint
# over the first (``paused`` then exists): a kill there is inside a checkpoint write, not a race.
PAUSED_BEFORE_THE_SECOND_CHECKPOINT = """
import os, runpy, sys, time
model_dir, paused = sys.argv[1:]
rename = os.replace

def replace(source, target, *args, **kwargs):
    folder, name = os.path.split(os.path.abspath(target))
    if folder == model_dir and name.endswith(".keras") and os.path.exists(os.path.join(folder, "last.keras")):
        open(paused, "w").close()
        time.sleep(3600)
    return rename(source, target, *args, **kwargs)

os.replace = replace
sys.argv = ["init.py", "--model_dir", model_dir]
runpy.run_path("init.py", run_name="__main__")
"""


def start(model_dir, stdout=subprocess.PIPE, paused=None):
    """init.py on ``model_dir`` in a subprocess (``paused``: a path; see PAUSED_BEFORE_THE_SECOND_CHECKPOINT).
    It runs on JAX whatever the test backend (the files are written by the same Keras code), with a
    compilation cache shared by the runs of one test."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KERAS_BACKEND": "jax",
           "JAX_COMPILATION_CACHE_DIR": str(model_dir.parent / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    command = ["init.py", "--model_dir", str(model_dir)] if paused is None else \
        ["-c", PAUSED_BEFORE_THE_SECOND_CHECKPOINT, str(model_dir), str(paused)]
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, text=True,
                            env=env)


def saved_epoch(model_dir):
    """The epoch committed in last.keras (the state inside it), -1 before the first."""
    path = model_dir / "last.keras"
    return read_model_state(path)["epoch"] if path.exists() else -1


def kill_when(process, ready, timeout=240):
    """SIGKILL ``process`` as soon as ``ready()`` holds (polled every 10 ms); returns its output."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before the kill: " + process.stdout.read()[-2000:]
            assert time.monotonic() < deadline, "no kill moment within the timeout"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)  # also when the wait failed: no paused run is left behind
    return process.communicate()[0]


def check_every_file_loads(folder):
    """Each JSON parses, each .keras loads in safe mode, each .npz loads without pickle."""
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            if is_temporary(name):
                continue
            if name.endswith(".json"):
                json.loads(open(path, encoding="utf-8").read())
            elif name.endswith(".keras"):
                load_model(path)
            elif name.endswith(".npz"):
                with np.load(path, allow_pickle=False) as arrays:
                    [arrays[key] for key in arrays.files]


def epochs_started(output):
    """The 1-based numbers of the epochs a run began, from Keras' "Epoch k/N" lines."""
    return [int(line.split()[1].split("/")[0]) for line in output.splitlines() if line.startswith("Epoch ")]


@pytest.mark.end_to_end(seconds=80)
@pytest.mark.backend_free  # the runs are init.py processes on JAX, whatever the test backend
def test_sigkill_during_checkpoints_and_at_random_moments_then_resume(tmp_path):
    for name in ("killed", "uninterrupted"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.json").write_text(json.dumps(FAST))
    log = open(tmp_path / "uninterrupted.log", "w")
    paused = tmp_path / "paused"
    tmp_path = tmp_path / "killed"
    # 1. Killed with a model file of the checkpoint that ends epoch 2 written but not yet renamed over
    # the first: epoch 1 must survive, the whole temporary file is left for the next run to remove.
    output = kill_when(start(tmp_path, paused=paused), paused.exists)
    saved = saved_epoch(tmp_path)
    assert epochs_started(output)[-1] == 2 and saved == 0
    assert [path for path in temporaries(tmp_path) if path.endswith(".keras")]
    check_every_file_loads(tmp_path)
    reference = start(tmp_path.parent / "uninterrupted", stdout=log)  # runs beside the killed runs from here
    # 2. Resumed from it, then killed at a random moment 0-2 s after the next checkpoint.
    moment = []
    delay = random.Random(7).uniform(0.0, 2.0)

    def later():
        if saved_epoch(tmp_path) <= saved:
            return False
        moment[:] = moment or [time.monotonic()]
        return time.monotonic() - moment[0] > delay

    output = kill_when(start(tmp_path), later)
    assert f"resuming from {tmp_path / 'last.keras'} after epoch {saved + 1}" in output
    check_every_file_loads(tmp_path)
    saved = saved_epoch(tmp_path)
    assert epochs_started(output)[-1] - (saved + 1) <= 1  # only the epoch in progress is lost
    # 3. Resumed again, runs to the end: no temporary file left, metrics as without the kills.
    process = start(tmp_path)
    output = process.communicate(timeout=400)[0]
    assert process.returncode == 0, output[-3000:]
    assert f"after epoch {saved + 1}" in output
    check_every_file_loads(tmp_path)
    assert temporaries(tmp_path) == []
    assert saved_epoch(tmp_path) == 2
    reference.wait(timeout=400)
    log.close()
    assert reference.returncode == 0, (tmp_path.parent / "uninterrupted.log").read_text()[-3000:]
    accuracy = [json.loads((tmp_path.parent / name / "metrics.json").read_text())["scores"]["test_accuracy"]
                for name in ("killed", "uninterrupted")]
    assert abs(accuracy[0] - accuracy[1]) < 0.1, accuracy


def test_stale_temporary_files_are_removed_at_the_start_of_a_run(tmp_path):
    for name in (".last-0a1b2c3d.tmp.keras", "predictor/.tmp-123-encoder.keras"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"half a zip")
    (tmp_path / "keep.tmpl").write_text("not ours")
    end_to_end.remove_temporary_files(str(tmp_path))
    assert temporaries(tmp_path) == [] and (tmp_path / "keep.tmpl").exists()


def small_state(model_dir):
    """A TrainingState callback on a tiny compiled model, as the pipeline makes it."""
    import keras

    from triplet_keras.pipeline.config import Config

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile("adam", "mse")
    callback = end_to_end.TrainingState(str(model_dir), Config.from_dict({}), "loss")
    callback.set_model(model)
    return callback


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     PermissionError(errno.EACCES, "Permission denied"),
                                     OSError(errno.EROFS, "Read-only file system")])
@pytest.mark.parametrize("when", ["writing", "renaming"])
def test_disk_full_or_read_only_keeps_the_old_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch,
                                                                                    failure, when):
    callback = small_state(tmp_path)
    callback.on_epoch_end(0, {"loss": 1.0})
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    if when == "renaming":
        monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(failure))
    else:  # the disk fills up halfway through writing the temporary file
        def half_then_fail(path, *args, **kwargs):
            with open(path, "wb") as file:
                file.write(b"PK\x03\x04 half")
            raise failure

        monkeypatch.setattr(callback.model, "save", half_then_fail)
    with pytest.raises(OSError) as raised:
        callback.on_epoch_end(1, {"loss": 0.5})
    assert raised.value.errno == failure.errno
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    assert temporaries(tmp_path) == []
    check_every_file_loads(tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 0


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     PermissionError(errno.EACCES, "Permission denied")])
def test_init_reports_an_unwritable_folder_in_one_line(tmp_path, monkeypatch, capsys, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(end_to_end, "run", fail)
    with pytest.raises(SystemExit) as raised:
        init.main(["--model_dir", str(tmp_path)])
    message = str(raised.value.code)
    assert message.startswith("error: cannot write to the model folder") and str(tmp_path) in message
    assert failure.strerror in message and "\n" not in message


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    monkeypatch.setattr(end_to_end, "run", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        init.main(["--model_dir", str(tmp_path)])
