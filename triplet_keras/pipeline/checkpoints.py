"""The training state of a model folder on disk, and resuming from it.

``best.keras`` and ``last.keras`` hold the training model with its optimizer and, inside the same
zip, its training state: epoch, best validation loss, history, and the parameters it was trained with
(training_fingerprint). ``state.json`` and ``history.csv`` are readable copies of last.keras's state.
Each file is written atomically, so a kill leaves no corrupt file; a killed run may leave hidden
temporary files, which remove_temporary_files deletes.
"""
import csv
import io
import json
import os
import tempfile
import zipfile

from triplet_keras.core.export import to_jsonable, write_json, write_text
from triplet_keras.models.networks import load_model, read_model_state
from triplet_keras.pipeline.stages import PipelineError

# Parameters that may differ when a run resumes: they change neither the model, the loss, the optimiser,
# the training data nor the label space. Every other parameter is recorded in the checkpoint, and a
# resumed run whose value differs stops before loading it (--restart trains anew).
RESUMABLE_KEYS = ("epochs", "episodes", "shots", "plot_method", "loader_workers", "cache_mb", "collapse_patience",
                  "archive", "target_dataset", "target_transform", "transfer_mode", "transfer_whiten",
                  "transfer_features", "transfer_shift_average")


def training_fingerprint(config):
    """The parameters a checkpoint records: every flat key of ``config`` (config.Config) not in
    RESUMABLE_KEYS, as JSON values."""
    flat = config.to_dict()
    return json.loads(json.dumps(to_jsonable({k: v for k, v in flat.items() if k not in RESUMABLE_KEYS})))


def write_state_copies(model_dir, state):
    """history.csv and state.json: readable copies of the state inside last.keras."""
    write_text(os.path.join(model_dir, "history.csv"), history_csv(state["history"]))
    write_json(os.path.join(model_dir, "state.json"), state)


def history_csv(history):
    """Per-epoch rows of a keras-style history dict, as CSV text."""
    keys = sorted(history)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["epoch"] + keys)
    for epoch in range(max((len(v) for v in history.values()), default=0)):
        writer.writerow([epoch] + [history[k][epoch] if epoch < len(history[k]) else "" for k in keys])
    return out.getvalue()


def read_state(model_dir, config, restart):
    """The training state stored in ``last.keras`` to resume from, or None to start anew; PipelineError
    when it cannot be read or was trained with other values of a parameter of ``config`` outside
    RESUMABLE_KEYS.
    A folder written before the state moved into the zip resumes from its ``state.json``."""
    path = os.path.join(model_dir, "last.keras")
    if restart or not os.path.exists(path):
        return None
    try:
        state = read_model_state(path)
        if state is None:
            path = os.path.join(model_dir, "state.json")
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
        if not (isinstance(state.get("epoch"), int) and isinstance(state.get("history"), dict)
                and isinstance(state.get("params"), dict)):
            raise ValueError("no epoch, history or params in it")
    except (OSError, ValueError, AttributeError, zipfile.BadZipFile) as error:
        raise PipelineError(f"cannot resume from {path}: it is damaged or unreadable ({error}); "
                            f"pass --restart to train anew in {model_dir}") from error
    recorded, current = state["params"], training_fingerprint(config)
    changed = [f"{key} {json.dumps(recorded[key])} -> {json.dumps(current[key])}"
               for key in sorted(current) if key in recorded and recorded[key] != current[key]]
    if changed:
        raise PipelineError(f"{model_dir} holds a model trained with other parameters: {'; '.join(changed)}. "
                            f"Pass --restart to train a new one there (only {', '.join(RESUMABLE_KEYS)} "
                            "may change on resume)")
    return state


def load_checkpoint(path, compile=False):
    """load_model(path) in safe mode; PipelineError naming the file when it is damaged."""
    try:
        return load_model(path, compile=compile)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise PipelineError(f"cannot load {path}: it is damaged or unreadable ({error}); "
                            f"pass --restart to train anew") from error


def check_model_dir(model_dir):
    """Make ``model_dir``; PipelineError unless it is a folder this process can write in."""
    try:
        os.makedirs(model_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=model_dir):
            pass
    except OSError as error:
        raise PipelineError(f"cannot write to the model folder {model_dir!r}: {error}") from error


def remove_temporary_files(folder):
    """Delete hidden ``.*.tmp*`` files (see export.atomic_write) that a killed run left under ``folder``."""
    for directory, _, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and ".tmp" in name:
                os.remove(os.path.join(directory, name))
